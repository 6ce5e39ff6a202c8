"""Image tokenizers (KL-VAE, VQ-GAN), quantizers, losses and discriminators: maths only."""
