"""The classic-autoencoder task: one phase (the model's reconstruction loss plus its weighted
regularisers), and for the adversarial autoencoder a second phase training the latent
discriminator. Stacked autoencoders get their greedy stage from the step."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from tokenizers_ae.classic.aae import discriminator_loss, generator_loss
from tokenizers_ae.classic.base import ClassicOutput
from train.tasks import Phase, StepContext


class Trained(nn.Module):
    """The trained module as the loop sees it; `autoencoder.` prefixes its weights in checkpoints,
    as for the other first-stage tasks, so `train/export.py` reads both the same way."""

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor, **kw) -> ClassicOutput:
        return self.autoencoder(x, **kw)


class ClassicTask:
    """loss = out.rec_loss + sum_name reg_weights[name] * out.reg[name]
             (+ adv_weight * non-saturating GAN loss of the latent discriminator, for the AAE).

    `stage_steps` (stacked autoencoders): steps [i * stage_steps, (i + 1) * stage_steps) train layer
    i alone; after the last layer the whole stack is fine-tuned.
    """

    def __init__(self, *, model: nn.Module, reg_weights: dict[str, float], lr: float, betas=(0.9, 0.999),
                 weight_decay: float = 0.0, latent_discriminator: nn.Module | None = None, disc_lr: float | None = None,
                 adv_weight: float = 1.0, stage_steps: int | None = None) -> None:
        self.trained = Trained(model)
        self.discriminator = latent_discriminator
        self.reg_weights = reg_weights
        self.lr, self.disc_lr, self.betas, self.weight_decay = lr, disc_lr or lr, tuple(betas), weight_decay
        self.adv_weight, self.stage_steps = adv_weight, stage_steps

    def phases(self) -> list[Phase]:
        out = [Phase("autoencoder", self.trained, self.lr, self.betas, self.weight_decay)]
        if self.discriminator is not None:
            # Not named "discriminator": the pixel-GAN guard of train/guard.py does not apply here.
            out.append(Phase("latent_discriminator", self.discriminator, self.disc_lr, self.betas, self.weight_decay))
        return out

    def active(self, phase: str, step: int) -> bool:
        return True

    def stage(self, step: int) -> int | None:
        """The stacked autoencoder's greedy stage at `step` (None: not stacked)."""
        return None if self.stage_steps is None else step // self.stage_steps

    def model_to_average(self) -> nn.Module:
        return self.trained.autoencoder

    def to(self, device: torch.device) -> ClassicTask:
        return self

    def forward(self, models: dict[str, nn.Module], batch: dict, ctx: StepContext) -> ClassicOutput:
        kw = {"stage": self.stage(ctx.step)} if self.stage_steps is not None else {}
        return models["autoencoder"](batch["x"], y=batch.get("y"), noise=ctx.noise, **kw)

    def loss(self, phase: str, models: dict[str, nn.Module], out: ClassicOutput, batch: dict, ctx: StepContext):
        if phase == "latent_discriminator":
            return self._discriminator_loss(models[phase], out.latent.detach(), ctx)
        loss = out.rec_loss
        logs = {"rec/loss": out.rec_loss.detach()}
        for name, value in out.reg.items():
            if name not in self.reg_weights:  # never weigh a loss by accident
                raise KeyError(f"the model reports a regulariser {name!r} with no configured weight "
                               f"(known: {sorted(self.reg_weights)})")
            loss = loss + self.reg_weights[name] * value
            logs[f"reg/{name}"] = value.detach()
        if self.discriminator is not None:
            # The discriminator is frozen in this phase: call it with detached weights, so only the
            # encoder receives the gradient of "make codes look like prior samples".
            disc = ctx.unwrap(models["latent_discriminator"])
            frozen = {k: v.detach() for k, v in disc.named_parameters()}
            g = generator_loss(functional_call(disc, frozen, (out.latent,)))
            loss = loss + self.adv_weight * g
            logs["aae/g_loss"] = g.detach()
        logs.update({k: v.detach().float() for k, v in out.stats.items()})
        logs["loss"] = loss.detach()
        return loss, logs

    def _discriminator_loss(self, disc: nn.Module, codes: torch.Tensor, ctx: StepContext):
        prior = ctx.noise(codes.shape).to(codes)  # (B, code) draws from N(0, I): the "real" samples
        logits_prior, logits_code = disc(torch.cat([prior, codes])).chunk(2)
        loss = discriminator_loss(logits_prior, logits_code)
        return loss, {"loss": loss.detach(), "aae/acc_prior": (logits_prior.detach() > 0).float().mean(),
                      "aae/acc_code": (logits_code.detach() < 0).float().mean()}

    def diagnose_nonfinite(self, batch: dict, autocast_dtype: torch.dtype | None) -> str:
        return "the input batch (check the data)" if not torch.isfinite(batch["x"]).all() else "the model"

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass
