# The same model on scikit-learn's digits (fmnist-tune's setting applied unchanged; every other setting main.py's).
# Reproduces results/digits/cascade/ssl (python main.py configs/digits-cascade-ssl.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
SSL = 'transforms'
