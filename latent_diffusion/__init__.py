"""Priors in latent space (diffusion over KL latents, autoregressive over tokens). Planned: issue 6."""
