# The 5-nearest-neighbour distance on pixels.
# Reproduces results/fmnist/knn/clean (python main.py configs/fmnist-knn.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'fmnist'
MODEL = 'knn'
MIN_STEPS = 0  # as the run recorded it (made before this setting; a classical detector trains nothing)
