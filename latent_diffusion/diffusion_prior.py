"""A diffusion prior over first-stage latents (or pixels): a diffusers UNet2DModel or DiT + DDPM.

Maths only: the training objective for given noise and timesteps, and seeded sampling with any
diffusers scheduler, with classifier-free guidance when class-conditioned. Latents are in the
scaled space (z * scaling_factor, unit variance). Class labels 0..K-1 index `num_classes` classes;
index K is the null class that label dropout trains and guidance contrasts against (DiT's
convention, so the same weights run in diffusers' DiTPipeline).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import (DDIMScheduler, DDPMScheduler, DiTTransformer2DModel, DPMSolverMultistepScheduler,
                       UNet2DModel)
from torch import nn

SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}
BETAS = {"scaled_linear": (0.00085, 0.012), "linear": (0.0001, 0.02)}
"""Stable Diffusion's betas suit unit-variance latents; DDPM's linear ones suit pixels in [-1, 1]."""


def build_unet(*, latent_channels: int, sample_size: int, block_out_channels: Sequence[int] = (64, 128),
               layers_per_block: int = 1, norm_num_groups: int = 32, attention: bool = True,
               num_classes: int = 0) -> UNet2DModel:
    """A UNet2DModel with attention at the lowest resolution (when `attention`); with `num_classes`,
    a class embedding of num_classes + 1 rows (the last is the null class)."""
    n = len(block_out_channels)
    down = ("DownBlock2D",) * (n - 1) + (("AttnDownBlock2D",) if attention else ("DownBlock2D",))
    up = (("AttnUpBlock2D",) if attention else ("UpBlock2D",)) + ("UpBlock2D",) * (n - 1)
    return UNet2DModel(sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
                       down_block_types=down, up_block_types=up, block_out_channels=tuple(block_out_channels),
                       layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
                       num_class_embeds=(num_classes + 1) if num_classes else None)


def build_dit(*, latent_channels: int, sample_size: int, num_layers: int = 6, num_heads: int = 4,
              head_dim: int = 32, patch_size: int = 2, num_classes: int = 0) -> DiTTransformer2DModel:
    """diffusers' DiT (adaLN-zero). DiT always embeds a class: an unconditional one has a single
    class, 0. Its table has num_classes + 1 rows, the last the null class."""
    dit = DiTTransformer2DModel(num_attention_heads=num_heads, attention_head_dim=head_dim,
                                in_channels=latent_channels, out_channels=latent_channels, num_layers=num_layers,
                                sample_size=sample_size, patch_size=patch_size,
                                num_embeds_ada_norm=max(num_classes, 1))
    _no_internal_label_dropout(dit)
    return dit


def _no_internal_label_dropout(net: nn.Module) -> None:
    # diffusers' LabelEmbedding drops labels in training mode with the global RNG; the task drops
    # them instead, seeded by position, so resume and multi-process runs stay exact.
    from diffusers.models.embeddings import LabelEmbedding

    for m in net.modules():
        if isinstance(m, LabelEmbedding):
            m.dropout_prob = 0.0


def denoiser_classes(net: nn.Module) -> int:
    """Classes a denoiser was built for (0: unconditional UNet)."""
    if isinstance(net, DiTTransformer2DModel):
        return int(net.config.num_embeds_ada_norm)
    return int(net.config.num_class_embeds or 1) - 1


class DiffusionPrior(nn.Module):
    """epsilon- or v-prediction denoising objective on (B, c, h, w) scaled latents or pixels.

    `net` is a UNet2DModel or DiTTransformer2DModel called as net(x_t, t (B,), class_labels).
    `num_classes` > 0 makes it class-conditional (labels (B,) in 0..K-1, K = null).
    `clip_sample` clamps predicted x0 to [-1, 1] while sampling: for pixels only.
    """

    def __init__(self, net: nn.Module, *, prediction_type: str = "epsilon", num_train_timesteps: int = 1000,
                 beta_schedule: str = "scaled_linear", num_classes: int = 0, clip_sample: bool = False) -> None:
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")
        if beta_schedule not in BETAS:
            raise ValueError(f"beta_schedule must be one of {sorted(BETAS)}, got {beta_schedule!r}")
        self.net = net
        self.num_classes = num_classes
        self.null_label = num_classes
        """Class index guidance contrasts against (1000 in a DiTPipeline export's padded table)."""
        lo, hi = BETAS[beta_schedule]
        # clip_sample clamps each predicted x0 to [-1, 1]: right for pixels, wrong for unit-variance
        # latents (diffusers' default is True; it shrank latent samples to half their spread).
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                       beta_start=lo, beta_end=hi, prediction_type=prediction_type,
                                       clip_sample=clip_sample)

    def class_input(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        """What the denoiser's class input is: labels, or DiT's one class for unconditional priors."""
        if labels is not None:
            return labels.to(device)
        if isinstance(self.net, DiTTransformer2DModel):
            return torch.zeros(batch, dtype=torch.long, device=device)
        return None

    def forward(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample loss (B,): mse between the denoiser's prediction and its target."""
        xt = self.scheduler.add_noise(x0, noise, timesteps)
        pred = self.net(xt, timesteps, class_labels=self.class_input(labels, len(x0), x0.device)).sample
        target = noise if self.scheduler.config.prediction_type == "epsilon" else \
            self.scheduler.get_velocity(x0, noise, timesteps)
        err = F.mse_loss(pred.float(), target.float(), reduction="none")
        return err.mean(dim=tuple(range(1, err.ndim)))


@torch.no_grad()
def sample(prior: DiffusionPrior, *, n: int, shape: Sequence[int], seed: int = 0, steps: int = 50,
           sampler: str = "ddim", labels: torch.Tensor | None = None, guidance: float = 1.0,
           progress: bool = False) -> torch.Tensor:
    """n latents (n, *shape) in the scaled space, deterministic for a seed.

    With labels (n,) and guidance != 1, classifier-free guidance: one batched forward of the
    conditional and null-class halves, out = uncond + guidance * (cond - uncond), as diffusers'
    DiTPipeline computes it (so an exported pipeline gives the same sample).
    """
    from tqdm.auto import tqdm

    net = prior.net
    device, dtype = next(net.parameters()).device, next(net.parameters()).dtype
    if labels is not None and not prior.num_classes:
        raise ValueError("labels given, but this prior is unconditional")
    if labels is not None and not (0 <= int(labels.min()) and int(labels.max()) < prior.num_classes):
        raise ValueError(f"labels must lie in 0..{prior.num_classes - 1}, got {labels.tolist()}")
    sched = SAMPLERS[sampler].from_config(prior.scheduler.config)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g).to(device, dtype) * sched.init_noise_sigma
    guided = labels is not None and guidance != 1.0
    cls = prior.class_input(labels, n, device)
    if guided:
        cls = torch.cat([cls, torch.full_like(cls, prior.null_label)])
    for t in tqdm(sched.timesteps, desc="sample", disable=not progress, leave=False):
        inp = sched.scale_model_input(torch.cat([x, x]) if guided else x, t)
        out = net(inp, t.to(device).expand(len(inp)), class_labels=cls).sample
        if guided:
            cond, uncond = out.chunk(2)
            out = uncond + guidance * (cond - uncond)
        x = sched.step(out, t, x, generator=g).prev_sample
    return x
