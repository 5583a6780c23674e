# The setting of configs/fmnist-cascade-ssl-aug-fp32.py (chosen on fmnist-tune) applied unchanged to MNIST, in fp32 for
# a CPU without native bf16. Reproduces results/mnist/cascade/ssl-transforms-flips-aug-e20-fp32
# (python main.py configs/mnist-cascade-ssl-aug-fp32.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'mnist'
EPOCHS = 20
SSL = 'transforms-flips'
SSL_AUGMENT = True
