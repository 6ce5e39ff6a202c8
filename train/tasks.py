"""Training tasks: what one iteration computes, separate from how the loop runs it.

The loop (`train/loop.py`) knows nothing about models. It asks a task for its `phases()` (the
modules each optimizer trains), wraps them with accelerate, and per micro-batch calls
`forward` once and then `loss(phase, ...)` for every phase active at that step, back-propagating
each returned loss. Losses come back with a dict of detached scalars to log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from audio_codec.losses import feature_matching_loss
from eval.precision import first_nonfinite_module
from tokenizers_ae.losses.adversarial import adaptive_weight, d_loss, g_loss
from tokenizers_ae.losses.reconstruction import ReconstructionLoss
from tokenizers_ae.models.output import AEOutput


@dataclass
class Phase:
    """One optimizer: its name, the module it trains, and its settings."""

    name: str
    module: nn.Module
    lr: float
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0


@dataclass
class StepContext:
    """What a task may use from the loop, without importing accelerate."""

    step: int
    """Optimizer step being computed (0-based)."""
    noise: Callable[[torch.Size], torch.Tensor]
    """Noise for this process's slice of the global batch, independent of the process count."""
    uniform: Callable[[torch.Size], torch.Tensor] = lambda shape: torch.rand(shape)
    """U[0, 1) draws positioned like `noise` (e.g. diffusion timesteps)."""
    reduce_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    """Mean over processes (identity on one process)."""
    unwrap: Callable[[nn.Module], nn.Module] = lambda m: m
    """The bare module behind a distributed wrapper."""


class Task(Protocol):
    def phases(self) -> list[Phase]: ...
    def active(self, phase: str, step: int) -> bool: ...
    def forward(self, models: dict[str, nn.Module], batch: dict, ctx: StepContext) -> Any: ...
    def loss(self, phase: str, models: dict[str, nn.Module], out: Any, batch: dict,
             ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...
    def model_to_average(self) -> nn.Module: ...
    def to(self, device: torch.device) -> Task: ...
    def state(self) -> dict: ...
    def load_state(self, state: dict) -> None: ...
    def diagnose_nonfinite(self, batch: dict, autocast_dtype: torch.dtype | None) -> str: ...


def _logits(out) -> list[torch.Tensor]:
    """A discriminator's logits maps: one tensor (PatchGAN) or several (`DiscriminatorOutput`)."""
    return list(out.logits) if hasattr(out, "logits") else [out]


def _mean(losses: list[torch.Tensor]) -> torch.Tensor:
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


class Generator(nn.Module):
    """The generator phase's trainable state: the autoencoder plus the loss's own parameter
    (latent-diffusion's learned log-variance), so one optimizer and one wrapper hold both."""

    def __init__(self, autoencoder: nn.Module, *, learn_logvar: bool = False) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.logvar = nn.Parameter(torch.zeros(())) if learn_logvar else None

    def forward(self, x: torch.Tensor, noise=None) -> AEOutput:
        return self.autoencoder(x, noise=noise)


class AutoencoderGANTask:
    """Reconstruction + regularisers + (after `disc_start`) a PatchGAN, for any first-stage model
    returning `AEOutput` and exposing `last_layer`. Images and audio differ only in the injected
    reconstruction loss and discriminator.

    Generator phase, once the GAN is on: the adversarial weight is taming-transformers' adaptive
    weight, ||grad nll|| / ||grad g|| at the decoder's last layer. taming gets it with two
    `autograd.grad` calls from the losses plus a full backward, so the perceptual network and the
    discriminator are each back-propagated twice. Here both losses are differentiated once, to the
    reconstruction, the last-layer gradients follow from those through one conv, and the generator
    is back-propagated once with the combined gradient: the same gradient for about half the work.
    """

    def __init__(self, *, autoencoder: nn.Module, rec_loss: ReconstructionLoss,
                 discriminator: nn.Module | None, reg_weights: dict[str, float], lr: float,
                 disc_lr: float | None = None, betas=(0.5, 0.9), weight_decay: float = 0.0,
                 disc_start: int = 0, disc_warmup: int = 0, disc_weight: float = 0.5, adaptive: bool = True,
                 disc_loss: str = "hinge", learn_logvar: bool = False, ramp_steps: int = 0,
                 max_d_weight: float = 1e4, r1_weight: float = 0.0, feature_weight: float = 0.0) -> None:
        self.generator = Generator(autoencoder, learn_logvar=learn_logvar)
        self.rec_loss = rec_loss  # frozen networks only: not trained, not checkpointed
        self.discriminator = discriminator
        self.reg_weights = reg_weights
        self.lr, self.disc_lr, self.betas, self.weight_decay = lr, disc_lr or lr, tuple(betas), weight_decay
        self.disc_start, self.disc_weight, self.adaptive, self.disc_loss = disc_start, disc_weight, adaptive, disc_loss
        self.ramp_steps, self.max_d_weight, self.r1_weight = ramp_steps, max_d_weight, r1_weight
        self.onset = disc_start + disc_warmup
        """First step whose generator update has an adversarial term (the discriminator trains alone before)."""
        self.feature_weight = feature_weight
        """Feature matching (MelGAN/EnCodec), for discriminators that return hidden features."""
        self.adv_scale = 1.0
        """Multiplier on the adversarial weight; the trainer's GAN guard may lower it."""
        # Batch norm sees real and fake separately (taming); other norms let us batch them.
        self._separate_d_calls = discriminator is not None and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in discriminator.modules())

    def phases(self) -> list[Phase]:
        out = [Phase("generator", self.generator, self.lr, self.betas, self.weight_decay)]
        if self.discriminator is not None:
            out.append(Phase("discriminator", self.discriminator, self.disc_lr, self.betas, self.weight_decay))
        return out

    def disc_on(self, step: int) -> bool:
        """Whether the discriminator trains at `step` (from disc_start, its warm-up included)."""
        return self.discriminator is not None and step >= self.disc_start

    def gan_on(self, step: int) -> bool:
        """Whether the generator gets an adversarial gradient at `step` (from the onset, after the warm-up)."""
        return self.discriminator is not None and step >= self.onset

    def ramp(self, step: int) -> float:
        """Adversarial weight factor: 0 before onset, then linear to 1 over `ramp_steps`."""
        if not self.gan_on(step):
            return 0.0
        return min(1.0, (step - self.onset + 1) / self.ramp_steps) if self.ramp_steps else 1.0

    def active(self, phase: str, step: int) -> bool:
        return phase == "generator" or self.disc_on(step)

    def model_to_average(self) -> nn.Module:
        return self.generator.autoencoder

    def to(self, device: torch.device) -> AutoencoderGANTask:
        """Move the frozen loss networks (the loop places the trained modules)."""
        self.rec_loss.to(device)
        return self

    def forward(self, models: dict[str, nn.Module], batch: dict, ctx: StepContext) -> AEOutput:
        return models["generator"](batch["x"], noise=ctx.noise)

    def loss(self, phase, models, out: AEOutput, batch, ctx):
        if phase == "generator":
            return self._generator_loss(models, out, batch["x"], ctx)
        return self._discriminator_loss(models["discriminator"], out.recon.detach(), batch["x"])

    def diagnose_nonfinite(self, batch: dict, autocast_dtype: torch.dtype | None) -> str:
        """Where a non-finite loss came from: the input, or the first module with a non-finite output."""
        x = batch["x"]
        if not torch.isfinite(x).all():
            return "the input batch (check the data)"
        ae = self.generator.autoencoder
        name = first_nonfinite_module(ae, lambda m, t: m(t).recon, x, autocast_dtype)
        return f"module autoencoder.{name}" if name else "the loss (the model's outputs were finite)"

    def state(self) -> dict:
        """What a checkpoint must keep beyond weights (restored by `load_state`)."""
        return {"adv_scale": self.adv_scale}

    def load_state(self, state: dict) -> None:
        self.adv_scale = float(state.get("adv_scale", 1.0))

    # --- phases ---------------------------------------------------------------------------------

    def _regularisers(self, out: AEOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = torch.zeros((), device=out.recon.device)
        logs = {}
        for name, value in out.reg.items():
            if name not in self.reg_weights:  # never weigh a loss by accident
                raise KeyError(f"the model reports a regulariser {name!r} with no configured weight "
                               f"(known: {sorted(self.reg_weights)})")
            total = total + self.reg_weights[name] * value
            logs[f"reg/{name}"] = value.detach()
        logs.update({k: v.detach() for k, v in out.stats.items()})
        return total, logs

    def _generator_loss(self, models, out: AEOutput, x: torch.Tensor, ctx: StepContext):
        gen = ctx.unwrap(models["generator"])
        reg, logs = self._regularisers(out)
        if not self.gan_on(ctx.step):
            nll, rec_logs = self.rec_loss(out.recon, x, gen.logvar)
            loss = nll + reg
            return loss, {"loss": loss.detach(), "rec/nll": nll.detach(), **rec_logs, **logs}

        recon = out.recon
        leaf = recon.detach().requires_grad_(True)
        loss_params = [gen.logvar] if gen.logvar is not None else []
        nll, rec_logs = self.rec_loss(leaf, x, gen.logvar)
        nll_grads = torch.autograd.grad(nll, [leaf, *loss_params])
        grad_nll = nll_grads[0]
        # The discriminator is frozen in this phase: call the bare module, take no parameter grads.
        disc = ctx.unwrap(models["discriminator"])
        fake_out = disc(leaf)
        g = _mean([g_loss(self.disc_loss, lg) for lg in _logits(fake_out)])
        fm = None
        if self.feature_weight > 0 and hasattr(fake_out, "features"):
            with torch.no_grad():
                real_features = disc(x).features
            fm = feature_matching_loss(real_features, fake_out.features)
        (grad_g,) = torch.autograd.grad(g, leaf, retain_graph=fm is not None)
        grad_fm = torch.autograd.grad(fm, leaf)[0] if fm is not None else None
        if self.adaptive:
            last = gen.autoencoder.last_layer
            (w_nll,) = torch.autograd.grad(recon, last, grad_nll, retain_graph=True)
            (w_g,) = torch.autograd.grad(recon, last, grad_g, retain_graph=True)
            # The global batch's gradients, so N processes weigh exactly as one process would.
            w_nll, w_g = ctx.reduce_mean(torch.stack([w_nll.float(), w_g.float()])).unbind(0)
            d_weight = adaptive_weight(w_nll, w_g, scale=self.disc_weight, max_weight=self.max_d_weight)
        else:
            d_weight = torch.tensor(self.disc_weight, device=x.device)
        onset = self.ramp(ctx.step) * self.adv_scale
        d_weight = d_weight * onset
        grad_out = grad_nll.float() + d_weight * grad_g.float()
        loss = nll.detach() + d_weight * g.detach() + reg.detach()
        if fm is not None:
            grad_out = grad_out + (self.feature_weight * onset) * grad_fm.float()
            loss = loss + self.feature_weight * onset * fm.detach()
            logs["gan/feature_matching"] = fm.detach()
        # A surrogate whose gradient is the true one: d/d(recon) = grad_nll + w * grad_g (+ w_fm * grad_fm).
        surrogate = (recon * grad_out.to(recon.dtype)).sum() + reg
        for p, gp in zip(loss_params, nll_grads[1:]):
            surrogate = surrogate + (p * gp.detach()).sum()
        logs.update({"loss": loss, "rec/nll": nll.detach(), "gan/g_loss": g.detach(),
                     "gan/d_weight": d_weight.detach(), "gan/ramp": torch.tensor(self.ramp(ctx.step)),
                     "gan/adv_scale": torch.tensor(self.adv_scale), **rec_logs})
        return surrogate, logs

    def _discriminator_loss(self, disc: nn.Module, fake: torch.Tensor, real: torch.Tensor):
        if self.r1_weight > 0:
            real = real.detach().requires_grad_(True)
        if self._separate_d_calls:
            out_real, out_fake = disc(real), disc(fake)
        else:
            out_real, out_fake = disc(torch.cat([real, fake])).chunk(2)
        # Several sub-discriminators (audio): the mean of their losses, as EnCodec/DAC.
        pairs = list(zip(_logits(out_real), _logits(out_fake)))
        loss = _mean([d_loss(self.disc_loss, r.float(), f.float()) for r, f in pairs])
        logits_real = torch.cat([r.detach().float().flatten() for r, _ in pairs])
        logits_fake = torch.cat([f.detach().float().flatten() for _, f in pairs])
        logs = {"disc/logits_real": logits_real.detach().float().mean(),
                "disc/logits_fake": logits_fake.detach().float().mean(),
                # How often it is right: the guard watches these for saturation.
                "disc/acc_real": (logits_real.detach() > 0).float().mean(),
                "disc/acc_fake": (logits_fake.detach() < 0).float().mean()}
        if self.r1_weight > 0:
            (grad,) = torch.autograd.grad(sum(r.float().sum() for r, _ in pairs), real, create_graph=True)
            r1 = grad.pow(2).sum(dim=tuple(range(1, grad.ndim))).mean()
            loss = loss + 0.5 * self.r1_weight * r1
            logs["disc/r1"] = r1.detach()
        logs["disc/loss"] = loss.detach()
        return loss, logs
