"""gentrain: config-driven training and evaluation of deep generative models."""

__version__ = "0.1.0"
