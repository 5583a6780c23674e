# One-Class SVM on a 50-component PCA.
# Reproduces results/mnist/ocsvm/default (python main.py configs/mnist-ocsvm.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'mnist'
MODEL = 'ocsvm'
