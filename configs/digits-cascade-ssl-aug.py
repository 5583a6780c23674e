# The same model on scikit-learn's digits (fmnist-tune's last setting applied unchanged: the mirror-image task on
# random views, SSL_AUGMENT; every other setting main.py's). Reproduces results/digits/cascade/ssl-transforms-flips-aug
# (python main.py configs/digits-cascade-ssl-aug.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
SSL = 'transforms-flips'
SSL_AUGMENT = True
