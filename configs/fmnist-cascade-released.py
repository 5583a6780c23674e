# The authors' MLP and memory quirks, scored by the paper's reconstruction error.
# Reproduces results/fmnist/cascade-released/e20 (python main.py configs/fmnist-cascade-released.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'fmnist'
MODEL = 'cascade-released'
EPOCHS = 20
SCORE = 'recon'
