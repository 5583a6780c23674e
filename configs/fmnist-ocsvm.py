# One-Class SVM on a 50-component PCA.
# Reproduces results/fmnist/ocsvm/20261128-194328 (python main.py configs/fmnist-ocsvm.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'fmnist'
MODEL = 'ocsvm'
MIN_STEPS = 0  # as the run recorded them (made before these settings; a classical detector trains nothing)
PATIENCE_STEPS = 0
