# Our model: the paper's two-stage cascade with rotation prediction on its code (SSL), scored by fused-ssl.
# Reproduces results/fmnist/cascade/ssl-e20-bf16 (python main.py configs/fmnist-cascade-ssl.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'fmnist'
EPOCHS = 20
PRECISION = 'bf16'
SSL = 'transforms'
