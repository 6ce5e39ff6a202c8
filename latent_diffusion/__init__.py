"""Priors in latent space: diffusion over KL latents (diffusion_prior), autoregressive over tokens (ar_prior)."""
