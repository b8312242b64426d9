"""Adversarial networks: GAN, DCGAN, conditional GAN, AC-GAN; minimax, non-saturating, hinge, WGAN, WGAN-GP."""
