"""The prior tasks: one phase each. Diffusion: the denoising loss on scaled latents (or pixels);
AR: next-token cross-entropy over token shards."""

from __future__ import annotations

import torch
from diffusers.training_utils import compute_snr
from torch import nn

from latent_diffusion.ar_prior import ARPrior
from latent_diffusion.diffusion_prior import DiffusionPrior
from train.tasks import Phase, StepContext


class PriorTask:
    """What every prior task shares: one phase ("prior") over one module, averaged for EMA, no state
    of its own. Subclasses implement `forward` (returning the mean loss) and `diagnose_nonfinite`."""

    def __init__(self, *, prior: nn.Module, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0) -> None:
        self.prior = prior
        self.lr, self.betas, self.weight_decay = lr, tuple(betas), weight_decay

    def phases(self) -> list[Phase]:
        return [Phase("prior", self.prior, self.lr, self.betas, self.weight_decay)]

    def active(self, phase: str, step: int) -> bool:
        return True

    def model_to_average(self) -> nn.Module:
        return self.prior

    def to(self, device: torch.device) -> PriorTask:
        return self

    def loss(self, phase, models, out: torch.Tensor, batch, ctx):
        return out, {"loss": out.detach()}

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


class DiffusionPriorTask(PriorTask):
    """Timesteps, noise and label dropout come from the loop's positional draws, so resume and
    multi-process runs are exact like the autoencoder's."""

    def __init__(self, *, prior: DiffusionPrior, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0,
                 cond_dropout: float = 0.1, snr_gamma: float | None = None) -> None:
        super().__init__(prior=prior, lr=lr, betas=betas, weight_decay=weight_decay)
        self.cond_dropout, self.snr_gamma = cond_dropout, snr_gamma

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor | None:
        """(B,) Min-SNR-gamma weights for timesteps t (B,), as diffusers' training scripts compute them;
        None without snr_gamma."""
        if self.snr_gamma is None:
            return None
        snr = compute_snr(self.prior.scheduler, t)
        weight = snr.clamp(max=self.snr_gamma)
        return weight / snr if self.prior.scheduler.config.prediction_type == "epsilon" else weight / (snr + 1)

    def forward(self, models, batch: dict, ctx: StepContext) -> torch.Tensor:
        x0 = batch["x"]  # (B, c, h, w), scaled
        u = ctx.uniform(torch.Size([x0.shape[0], 2])).to(x0.device)  # (timestep, label dropout) per item
        n_t = self.prior.scheduler.config.num_train_timesteps
        t = (u[:, 0] * n_t).long().clamp_max(n_t - 1)
        labels = None
        if self.prior.num_classes:
            if "y" not in batch:
                raise ValueError("a class-conditional prior needs labelled items (the batch has no \"y\")")
            # Classifier-free guidance: a fraction of items learn the null class's (unconditional) score.
            labels = torch.where(u[:, 1] < self.cond_dropout, self.prior.null_label, batch["y"].to(x0.device))
        loss = models["prior"](x0, ctx.noise(x0.shape).to(x0), t, labels)  # (B,)
        weights = self.loss_weights(t)
        return loss.mean() if weights is None else (loss * weights.to(loss)).mean()

    def diagnose_nonfinite(self, batch: dict, autocast_dtype) -> str:
        return "the input batch (check the latents)" if not torch.isfinite(batch["x"]).all() else "the denoiser"


class ARPriorTask(PriorTask):
    """Deterministic given the batch (dropout aside), so resume and multi-process runs are exact
    like the other tasks'."""

    def __init__(self, *, prior: ARPrior, lr: float, betas=(0.9, 0.95), weight_decay: float = 0.0) -> None:
        super().__init__(prior=prior, lr=lr, betas=betas, weight_decay=weight_decay)

    def forward(self, models, batch: dict, ctx: StepContext) -> torch.Tensor:
        return models["prior"](batch["x"], batch.get("y")).mean()  # x: (B, *token_shape) long

    def diagnose_nonfinite(self, batch: dict, autocast_dtype) -> str:
        return "the transformer (tokens are integers; try train.mixed_precision=no or a lower train.lr)"
