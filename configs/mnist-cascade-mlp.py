# The released MLP with the paper's memory, on MNIST.
# Reproduces results/mnist/cascade-mlp/e20-bf16 (python main.py configs/mnist-cascade-mlp.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'mnist'
MODEL = 'cascade-mlp'
EPOCHS = 20
PRECISION = 'bf16'
