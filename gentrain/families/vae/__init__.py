"""Variational autoencoders on the ELBO (IWAE likelihoods)."""
