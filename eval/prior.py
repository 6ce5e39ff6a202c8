"""Sample metrics for priors when no offline Inception/classifier weights exist: are samples new
images (nearest-neighbour distance to the training set, against a held-out image's), and how well
the prior denoises held-out data (its training loss on validation items)."""

from __future__ import annotations

import torch

from latent_diffusion.diffusion_prior import DiffusionPrior


@torch.no_grad()
def nn_rms(samples: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(n,) root-mean-square pixel distance from each sample (n, C, H, W) to its nearest image in
    `reference` (m, C, H, W), both in [-1, 1]. Copies of training images score ~0; a held-out real
    image's score is the scale of "new but plausible"."""
    a, b = samples.flatten(1).double(), reference.flatten(1).double()
    return (torch.cdist(a, b).min(dim=1).values / a.shape[1] ** 0.5).float()


@torch.no_grad()
def denoising_loss(prior: DiffusionPrior, x0: torch.Tensor, labels: torch.Tensor | None = None, *,
                   n_timesteps: int = 10, seed: int = 0) -> float:
    """The prior's loss on (B, c, h, w) items, averaged over `n_timesteps` evenly spaced timesteps
    with seeded noise: the same number every eval for the same weights."""
    n_t = prior.scheduler.config.num_train_timesteps
    g = torch.Generator().manual_seed(seed)
    losses = []
    for t in torch.linspace(0, n_t - 1, n_timesteps).round().long():
        noise = torch.randn(x0.shape, generator=g).to(x0)
        losses.append(prior(x0, noise, t.expand(len(x0)).to(x0.device), labels).mean())
    return float(torch.stack(losses).mean())
