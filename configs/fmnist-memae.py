# MemAE's memory on the conv backbone (one seed so far: SEEDS = [0] made it).
# Reproduces results/fmnist/memae/e20-bf16 (python main.py configs/fmnist-memae.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'fmnist'
MODEL = 'memae'
EPOCHS = 20
PRECISION = 'bf16'
