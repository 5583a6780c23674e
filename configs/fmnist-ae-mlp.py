# The same MLP, no memory.
# Reproduces results/fmnist/ae-mlp/e20 (python main.py configs/fmnist-ae-mlp.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'fmnist'
MODEL = 'ae-mlp'
EPOCHS = 20
