# The conv autoencoder without memory.
# Reproduces results/fmnist/ae/e20-bf16 (python main.py configs/fmnist-ae.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'fmnist'
MODEL = 'ae'
EPOCHS = 20
PRECISION = 'bf16'
