# The authors' MLP and memory quirks on MNIST, the paper's score.
# Reproduces results/mnist/cascade-released/e20-bf16 (python main.py configs/mnist-cascade-released.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'mnist'
MODEL = 'cascade-released'
EPOCHS = 20
PRECISION = 'bf16'
SCORE = 'recon'
