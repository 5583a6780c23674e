"""Training, data and evaluation tools for cascade-memory (everything that is not an nn.Module)."""
