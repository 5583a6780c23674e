# MemAE on the conv backbone (one seed so far).
# Reproduces results/mnist/memae/e20-bf16 (python main.py configs/mnist-memae.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'mnist'
MODEL = 'memae'
EPOCHS = 20
PRECISION = 'bf16'
