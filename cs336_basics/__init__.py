"""cs336_basics: a from-scratch Transformer language-model stack (Stanford CS336 Assignment 1)."""

__version__ = "0.1.0"
