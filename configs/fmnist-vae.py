# The conv variational autoencoder.
# Reproduces results/fmnist/vae/e20-bf16 (python main.py configs/fmnist-vae.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'fmnist'
MODEL = 'vae'
EPOCHS = 20
PRECISION = 'bf16'
