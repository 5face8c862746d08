"""Fast paths of the model, each beside its plain reference in layers.py and parity-tested against it."""
