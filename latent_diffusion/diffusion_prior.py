"""A diffusion prior over first-stage latents: diffusers' UNet2DModel + DDPM noise schedule.

Maths only: the training objective for given noise and timesteps, and seeded sampling with any
diffusers scheduler. Latents are in the scaled space (z * scaling_factor, unit variance).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from torch import nn

SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}


def build_unet(*, latent_channels: int, sample_size: int, block_out_channels: Sequence[int] = (64, 128),
               layers_per_block: int = 1, norm_num_groups: int = 32, attention: bool = True,
               num_classes: int | None = None) -> UNet2DModel:
    """A UNet2DModel with attention at the lowest resolution (when `attention`); with `num_classes`,
    a class embedding where the last index is the null class for classifier-free guidance."""
    n = len(block_out_channels)
    down = ("DownBlock2D",) * (n - 1) + (("AttnDownBlock2D",) if attention else ("DownBlock2D",))
    up = (("AttnUpBlock2D",) if attention else ("UpBlock2D",)) + ("UpBlock2D",) * (n - 1)
    return UNet2DModel(sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
                       down_block_types=down, up_block_types=up, block_out_channels=tuple(block_out_channels),
                       layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
                       num_class_embeds=(num_classes + 1) if num_classes else None)


class DiffusionPrior(nn.Module):
    """epsilon- or v-prediction denoising objective on (B, c, h, w) scaled latents."""

    def __init__(self, unet: UNet2DModel, *, prediction_type: str = "epsilon", num_train_timesteps: int = 1000,
                 beta_schedule: str = "scaled_linear") -> None:
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")
        self.unet = unet
        # Stable Diffusion's schedule (scaled_linear 0.00085..0.012) suits unit-variance latents.
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                       beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type)

    def forward(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample loss (B,): mse between the UNet's prediction and its target."""
        xt = self.scheduler.add_noise(x0, noise, timesteps)
        pred = self.unet(xt, timesteps, class_labels=labels).sample
        target = noise if self.scheduler.config.prediction_type == "epsilon" else \
            self.scheduler.get_velocity(x0, noise, timesteps)
        err = F.mse_loss(pred.float(), target.float(), reduction="none")
        return err.mean(dim=tuple(range(1, err.ndim)))


@torch.no_grad()
def sample(prior: DiffusionPrior, *, n: int, shape: Sequence[int], seed: int = 0, steps: int = 50,
           sampler: str = "ddim", labels: torch.Tensor | None = None, guidance: float = 1.0) -> torch.Tensor:
    """n latents (n, *shape) in the scaled space, deterministic for a seed. With labels and
    guidance > 1, classifier-free guidance against the null class (the last class index)."""
    unet = prior.unet
    sched = SAMPLERS[sampler].from_config(prior.scheduler.config)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g).to(unet.device, unet.dtype) * sched.init_noise_sigma
    null = None
    if labels is not None and guidance != 1.0:
        null = torch.full_like(labels, unet.config.num_class_embeds - 1)
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        out = unet(inp, t, class_labels=labels).sample
        if null is not None:
            out_null = unet(inp, t, class_labels=null).sample
            out = out_null + guidance * (out - out_null)
        x = sched.step(out, t, x, generator=g).prev_sample
    return x
