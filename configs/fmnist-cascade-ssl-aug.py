# Our model with the task fmnist-tune chose last: the paper's two-stage cascade, trained to name which of 8
# transformations it sees (4 rotations of the image, 4 of its mirror image), made from random views of the training
# images (SSL_AUGMENT), scored by fused-ssl. Reproduces results/fmnist/cascade/ssl-transforms-flips-aug-e20-bf16
# (python main.py configs/fmnist-cascade-ssl-aug.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'fmnist'
EPOCHS = 20
PRECISION = 'bf16'
SSL = 'transforms-flips'
SSL_AUGMENT = True
