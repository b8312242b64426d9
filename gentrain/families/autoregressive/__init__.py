"""Autoregressive models: PixelCNN, MADE."""
