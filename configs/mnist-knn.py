# The 5-nearest-neighbour distance on pixels.
# Reproduces results/mnist/knn/default (python main.py configs/mnist-knn.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'mnist'
MODEL = 'knn'
