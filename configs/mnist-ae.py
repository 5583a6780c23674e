# The conv autoencoder without memory (one seed so far).
# Reproduces results/mnist/ae/e20-bf16 (python main.py configs/mnist-ae.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'mnist'
MODEL = 'ae'
EPOCHS = 20
PRECISION = 'bf16'
