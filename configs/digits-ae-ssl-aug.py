# The ablation of digits-cascade-ssl-aug.py: the same task, settings and score on the memory-free autoencoder.
# Reproduces results/digits/ae/ssl-transforms-flips-aug
# (python main.py configs/digits-ae-ssl-aug.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
MODEL = 'ae'
SSL = 'transforms-flips'
SSL_AUGMENT = True
