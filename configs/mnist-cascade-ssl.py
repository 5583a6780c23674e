# Our model on MNIST: the paper's two-stage cascade with rotation prediction on its code (SSL), scored by fused-ssl.
# Reproduces results/mnist/cascade/ssl-e20-bf16 (python main.py configs/mnist-cascade-ssl.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'mnist'
EPOCHS = 20
PRECISION = 'bf16'
SSL = 'transforms'
