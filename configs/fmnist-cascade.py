# The paper's two-stage cascade on Fashion-MNIST, scored by its best score (fused-lof), 40 epochs, bf16.
# Reproduces results/fmnist/cascade/e40-bf16-cf39d33 (python main.py configs/fmnist-cascade.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'fmnist'
EPOCHS = 40
PRECISION = 'bf16'
