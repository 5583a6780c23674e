# Isolation Forest on a 50-component PCA.
# Reproduces results/mnist/iforest/default (python main.py configs/mnist-iforest.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'mnist'
MODEL = 'iforest'
