# The setting of configs/fmnist-cascade-ssl-aug.py in fp32, for a CPU without native bf16 (AVX2 only), where bf16 is
# emulated several times slower. A run of its own, not more seeds of the bf16 row: precision changes what a trial
# computes. Reproduces results/fmnist/cascade/ssl-transforms-flips-aug-e20-fp32
# (python main.py configs/fmnist-cascade-ssl-aug-fp32.py); main.py's constants for the rest.
DRAW_FIGURES = False  # the committed runs drew none
DATASET = 'fmnist'
EPOCHS = 20
SSL = 'transforms-flips'
SSL_AUGMENT = True
