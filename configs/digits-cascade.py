# The quick start: python main.py with main.py's constants as they are (the paper's cascade on digits, seeds 0 1 2).
# Reproduces results/digits/cascade/20261206-092248 (python main.py configs/digits-cascade.py); main.py's constants for the rest.
