# Isolation Forest on a 50-component PCA.
# Reproduces results/fmnist/iforest/20261128-194139 (python main.py configs/fmnist-iforest.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'fmnist'
MODEL = 'iforest'
MIN_STEPS = 0  # as the run recorded them (made before these settings; a classical detector trains nothing)
PATIENCE_STEPS = 0
