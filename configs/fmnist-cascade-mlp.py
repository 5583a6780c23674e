# The released MLP with the paper's memory.
# Reproduces results/fmnist/cascade-mlp/e20 (python main.py configs/fmnist-cascade-mlp.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'fmnist'
MODEL = 'cascade-mlp'
EPOCHS = 20
