# The paper's two-stage cascade on MNIST, scored by its best score (fused: the run predates fused-lof).
# Reproduces results/mnist/cascade/e20-bf16 (python main.py configs/mnist-cascade.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'mnist'
EPOCHS = 20
PRECISION = 'bf16'
