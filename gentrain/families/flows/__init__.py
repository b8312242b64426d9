"""Normalizing flows: RealNVP, Glow (dequantisation, bits/dim)."""
