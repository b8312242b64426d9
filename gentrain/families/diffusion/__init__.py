"""Diffusion: DDPM with ancestral and DDIM samplers."""
