# The conv variational autoencoder, 3 seeds (main.py's SEEDS).
# Reproduces results/mnist/vae/e20-bf16 (python main.py configs/mnist-vae.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'mnist'
MODEL = 'vae'
EPOCHS = 20
PRECISION = 'bf16'
