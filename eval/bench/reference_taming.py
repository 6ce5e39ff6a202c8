"""Reference "common practice" KL-VAE training loop, for speed comparisons.

This is the taming-transformers / latent-diffusion recipe (``LPIPSWithDiscriminator``
with a PatchGAN ``NLayerDiscriminator`` and the adaptive GAN weight), applied to a
diffusers ``AutoencoderKL`` and driven by a plain two-optimizer loop that reproduces
what the PyTorch-Lightning ``AutoencoderKL.training_step`` of latent-diffusion did.

Adapted from (logic copied, formatting and docstrings ours):

* CompVis/taming-transformers ``taming/modules/discriminator/model.py``
  (``weights_init``, ``NLayerDiscriminator``),
* CompVis/taming-transformers ``taming/modules/losses/vqperceptual.py``
  (``adopt_weight``, ``hinge_d_loss``, ``vanilla_d_loss``),
* CompVis/latent-diffusion ``ldm/modules/losses/contperceptual.py``
  (``LPIPSWithDiscriminator``) and ``ldm/models/autoencoder.py``
  (``AutoencoderKL.training_step`` / ``configure_optimizers`` / ``get_last_layer``).

taming-transformers: Copyright (c) 2020 Patrick Esser and Robin Rombach and Björn Ommer
latent-diffusion:    Copyright (c) 2022 Machine Vision and Learning Group, LMU Munich
Both are released under the MIT License:

    Permission is hereby granted, free of charge, to any person obtaining a copy of
    this software and associated documentation files (the "Software"), to deal in the
    Software without restriction, including without limitation the rights to use,
    copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the
    Software, and to permit persons to whom the Software is furnished to do so,
    subject to the following conditions:

    The above copyright notice and this permission notice shall be included in all
    copies or substantial portions of the Software.

    THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
    IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS
    FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
    COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN
    AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION
    WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.

Deviations from the originals (all deliberate, all listed here):

1. Perceptual loss: ``lpips.LPIPS(net="vgg")`` from the ``lpips`` package instead of
   taming's vendored ``LPIPS`` (same architecture: ScalingLayer, VGG16 relu1_2..relu5_3,
   unit-normalised feature differences, 1x1 "lin" layers with dropout, spatial mean;
   the lin weights shipped with ``lpips`` are the same v0.1 VGG weights). ImageNet VGG
   weights cannot be downloaded here, hence ``pnet_rand`` (default True: random trunk;
   the cost is identical). It is kept in eval mode with ``requires_grad=False`` even when
   ``.train()`` is called on the loss (see ``LPIPSWithDiscriminator.train``); under
   Lightning, ``model.train()`` put taming's LPIPS back into train mode, so its dropout
   layers were active during LDM training. This changes values, not cost.
2. The discriminator's width ``disc_ndf`` is exposed (taming's VQ loss has it; LDM's KL
   loss always used 64) so tests can use a tiny discriminator. ``disc_conditional`` /
   ``cond`` are not supported.
3. The loop is plain PyTorch instead of Lightning. Lightning's two-optimizer automatic
   optimisation is reproduced: ``toggle_optimizer`` (the discriminator's parameters do not
   require grad during the generator pass), and the discriminator pass calls the loss with
   ``optimizer_idx=1`` on the same batch. The one simplification is that the
   discriminator pass reuses the generator pass's reconstruction (detached) instead of
   re-running the autoencoder forward as Lightning did; this favours the reference.
4. ``configure_optimizers`` in latent-diffusion does *not* put ``loss.logvar`` in the
   generator optimiser (so LDM never trained it, despite the "train encoder+decoder+logvar"
   comment in ``training_step``). ``ReferenceTrainer(train_logvar=True)`` (the default
   here) adds it; pass ``train_logvar=False`` for the exact LDM behaviour. Cost is nil.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "weights_init",
    "NLayerDiscriminator",
    "adopt_weight",
    "hinge_d_loss",
    "vanilla_d_loss",
    "LPIPSWithDiscriminator",
    "ReferenceTrainer",
    "reference_gradients",
    "build_reference",
    "time_reference",
]


# --------------------------------------------------------------------------------------
# taming/modules/discriminator/model.py
# --------------------------------------------------------------------------------------
def weights_init(m: nn.Module) -> None:
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator as in Pix2Pix (taming's version, BatchNorm only)."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        norm_layer = nn.BatchNorm2d
        use_bias = False  # BatchNorm2d has affine parameters

        kw = 4
        padw = 1
        sequence = [
            nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, True),
        ]
        nf_mult = 1
        nf_mult_prev = 1
        for n in range(1, n_layers):  # gradually increase the number of filters
            nf_mult_prev = nf_mult
            nf_mult = min(2**n, 8)
            sequence += [
                nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=2,
                          padding=padw, bias=use_bias),
                norm_layer(ndf * nf_mult),
                nn.LeakyReLU(0.2, True),
            ]

        nf_mult_prev = nf_mult
        nf_mult = min(2**n_layers, 8)
        sequence += [
            nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1,
                      padding=padw, bias=use_bias),
            norm_layer(ndf * nf_mult),
            nn.LeakyReLU(0.2, True),
        ]
        # output 1 channel prediction map
        sequence += [nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw)]
        self.main = nn.Sequential(*sequence)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.main(input)


# --------------------------------------------------------------------------------------
# taming/modules/losses/vqperceptual.py
# --------------------------------------------------------------------------------------
def adopt_weight(weight, global_step, threshold=0, value=0.0):
    if global_step < threshold:
        weight = value
    return weight


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    loss_real = torch.mean(F.relu(1.0 - logits_real))
    loss_fake = torch.mean(F.relu(1.0 + logits_fake))
    d_loss = 0.5 * (loss_real + loss_fake)
    return d_loss


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    d_loss = 0.5 * (
        torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake))
    )
    return d_loss


# --------------------------------------------------------------------------------------
# ldm/modules/losses/contperceptual.py
# --------------------------------------------------------------------------------------
class LPIPSWithDiscriminator(nn.Module):
    def __init__(
        self,
        disc_start: int,
        logvar_init: float = 0.0,
        kl_weight: float = 1.0,
        pixelloss_weight: float = 1.0,
        disc_num_layers: int = 3,
        disc_in_channels: int = 3,
        disc_factor: float = 1.0,
        disc_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        disc_conditional: bool = False,
        disc_loss: str = "hinge",
        disc_ndf: int = 64,
        pnet_rand: bool = True,
    ):
        super().__init__()
        assert disc_loss in ["hinge", "vanilla"]
        if disc_conditional:
            raise NotImplementedError("disc_conditional=True is not supported by this reference")
        self.kl_weight = kl_weight
        # NB: stored but, as in LDM, never used in forward().
        self.pixel_weight = pixelloss_weight
        import lpips  # local import: heavy, and only the benchmark needs it

        self.perceptual_loss = lpips.LPIPS(
            net="vgg", pretrained=True, pnet_rand=pnet_rand, verbose=False
        ).eval()
        self.perceptual_loss.requires_grad_(False)
        self.perceptual_weight = perceptual_weight
        # output log variance
        self.logvar = nn.Parameter(torch.ones(size=()) * logvar_init)

        self.discriminator = NLayerDiscriminator(
            input_nc=disc_in_channels, n_layers=disc_num_layers, ndf=disc_ndf
        ).apply(weights_init)
        self.discriminator_iter_start = disc_start
        self.disc_loss = hinge_d_loss if disc_loss == "hinge" else vanilla_d_loss
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight
        self.disc_conditional = disc_conditional

    def train(self, mode: bool = True):
        super().train(mode)
        # Deviation 1 (see module docstring): the perceptual network stays in eval mode.
        self.perceptual_loss.eval()
        return self

    def calculate_adaptive_weight(self, nll_loss, g_loss, last_layer=None):
        if last_layer is not None:
            nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
            g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        else:
            nll_grads = torch.autograd.grad(nll_loss, self.last_layer[0], retain_graph=True)[0]
            g_grads = torch.autograd.grad(g_loss, self.last_layer[0], retain_graph=True)[0]

        d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
        d_weight = torch.clamp(d_weight, 0.0, 1e4).detach()
        d_weight = d_weight * self.discriminator_weight
        return d_weight

    def forward(
        self,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        posteriors: Any,
        optimizer_idx: int,
        global_step: int,
        last_layer: torch.Tensor | None = None,
        split: str = "train",
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # As in LDM, the reconstruction / perceptual / KL terms are computed for both
        # optimizer indices (the discriminator pass pays for an LPIPS forward too).
        rec_loss = torch.abs(inputs.contiguous() - reconstructions.contiguous())
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())
            rec_loss = rec_loss + self.perceptual_weight * p_loss

        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar
        weighted_nll_loss = nll_loss
        if weights is not None:
            weighted_nll_loss = weights * nll_loss
        weighted_nll_loss = torch.sum(weighted_nll_loss) / weighted_nll_loss.shape[0]
        nll_loss = torch.sum(nll_loss) / nll_loss.shape[0]
        kl_loss = posteriors.kl()
        kl_loss = torch.sum(kl_loss) / kl_loss.shape[0]

        # now the GAN part
        if optimizer_idx == 0:
            # generator update
            logits_fake = self.discriminator(reconstructions.contiguous())
            g_loss = -torch.mean(logits_fake)

            # NB: gated on the constant self.disc_factor, not on adopt_weight(): the
            # adaptive weight (two extra autograd.grad calls) is computed every step, also
            # before disc_start.
            if self.disc_factor > 0.0:
                try:
                    d_weight = self.calculate_adaptive_weight(
                        nll_loss, g_loss, last_layer=last_layer
                    )
                except RuntimeError:
                    assert not self.training
                    d_weight = torch.tensor(0.0)
            else:
                d_weight = torch.tensor(0.0)

            disc_factor = adopt_weight(
                self.disc_factor, global_step, threshold=self.discriminator_iter_start
            )
            loss = weighted_nll_loss + self.kl_weight * kl_loss + d_weight * disc_factor * g_loss

            log = {
                f"{split}/total_loss": loss.clone().detach().mean(),
                f"{split}/logvar": self.logvar.detach(),
                f"{split}/kl_loss": kl_loss.detach().mean(),
                f"{split}/nll_loss": nll_loss.detach().mean(),
                f"{split}/rec_loss": rec_loss.detach().mean(),
                f"{split}/d_weight": d_weight.detach(),
                f"{split}/disc_factor": torch.tensor(disc_factor),
                f"{split}/g_loss": g_loss.detach().mean(),
            }
            return loss, log

        if optimizer_idx == 1:
            # second pass for discriminator update
            logits_real = self.discriminator(inputs.contiguous().detach())
            logits_fake = self.discriminator(reconstructions.contiguous().detach())

            disc_factor = adopt_weight(
                self.disc_factor, global_step, threshold=self.discriminator_iter_start
            )
            d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)

            log = {
                f"{split}/disc_loss": d_loss.clone().detach().mean(),
                f"{split}/logits_real": logits_real.detach().mean(),
                f"{split}/logits_fake": logits_fake.detach().mean(),
            }
            return d_loss, log

        raise ValueError(f"optimizer_idx must be 0 or 1, got {optimizer_idx}")


# --------------------------------------------------------------------------------------
# ldm/models/autoencoder.py (AutoencoderKL Lightning module), on a diffusers AutoencoderKL
# --------------------------------------------------------------------------------------
def _generator_modules(vae: nn.Module) -> list[nn.Module]:
    # LDM: encoder, decoder, quant_conv, post_quant_conv (diffusers may drop the convs).
    names = ("encoder", "decoder", "quant_conv", "post_quant_conv")
    return [m for m in (getattr(vae, n, None) for n in names) if m is not None]


def _generator_pass(vae, loss: LPIPSWithDiscriminator, x: torch.Tensor, global_step: int,
                    noise: torch.Tensor | None = None):
    """Autoencoder forward + ``loss(optimizer_idx=0)``. Returns (aeloss, log, rec, posterior)."""
    posterior = vae.encode(x).latent_dist
    if noise is None:
        z = posterior.sample()
    else:
        if noise.shape != posterior.mean.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != posterior mean shape "
                             f"{tuple(posterior.mean.shape)}")
        z = posterior.mean + posterior.std * noise.to(posterior.mean)
    rec = vae.decode(z).sample
    aeloss, log = loss(x, rec, posterior, 0, global_step,
                       last_layer=vae.decoder.conv_out.weight, split="train")
    return aeloss, log, rec, posterior


class ReferenceTrainer:
    """Two-optimizer loop equivalent to LDM's Lightning ``AutoencoderKL`` training."""

    def __init__(self, vae, loss: LPIPSWithDiscriminator, lr: float = 4.5e-6,
                 betas: tuple[float, float] = (0.5, 0.9), *, train_logvar: bool = True):
        self.vae = vae
        self.loss = loss
        self.vae.train()
        self.loss.train()  # discriminator BatchNorm in train mode; LPIPS stays eval
        gen_params = [p for m in _generator_modules(vae) for p in m.parameters()]
        if train_logvar:  # not in LDM's configure_optimizers; see module docstring, item 4
            gen_params.append(loss.logvar)
        self.gen_params = gen_params
        self.disc_params = list(loss.discriminator.parameters())
        self.opt_ae = torch.optim.Adam(gen_params, lr=lr, betas=betas)
        self.opt_disc = torch.optim.Adam(self.disc_params, lr=lr, betas=betas)

    @staticmethod
    def _set_requires_grad(params, flag: bool) -> None:
        for p in params:
            p.requires_grad_(flag)

    def step(self, x: torch.Tensor, global_step: int) -> dict[str, float]:
        vae, loss = self.vae, self.loss

        # ---- optimizer_idx = 0: encoder + decoder (+ logvar) ----
        # Lightning's toggle_optimizer: parameters owned by the other optimizer are frozen.
        self._set_requires_grad(self.disc_params, False)
        try:
            aeloss, log_ae, rec, posterior = _generator_pass(vae, loss, x, global_step)
            self.opt_ae.zero_grad()
            aeloss.backward()
            self.opt_ae.step()
        finally:
            self._set_requires_grad(self.disc_params, True)

        # ---- optimizer_idx = 1: discriminator ----
        # Generous to the reference: Lightning re-ran ``self(inputs)`` (a full autoencoder
        # forward, with generator params toggled off) for optimizer_idx=1; we reuse the
        # generator pass's reconstruction, detached, and a detached posterior.
        posterior_d = type(posterior)(posterior.parameters.detach())
        discloss, log_d = loss(x, rec.detach(), posterior_d, 1, global_step,
                               last_layer=vae.decoder.conv_out.weight, split="train")
        self.opt_disc.zero_grad()
        discloss.backward()
        self.opt_disc.step()

        return {
            "aeloss": float(aeloss.detach()),
            "discloss": float(discloss.detach()),
            "nll": float(log_ae["train/nll_loss"]),
            "kl": float(log_ae["train/kl_loss"]),
            "g_loss": float(log_ae["train/g_loss"]),
            "d_weight": float(log_ae["train/d_weight"]),
        }


def reference_gradients(vae, loss: LPIPSWithDiscriminator, x: torch.Tensor, global_step: int,
                        noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Gradients of the generator loss (optimizer_idx=0) w.r.t. all generator parameters.

    Keys are ``vae.named_parameters()`` names plus ``"logvar"``. Nothing is stepped, no
    ``.grad`` is written, and the discriminator's BatchNorm running stats are restored.
    Modules are put in train mode (as during training). If ``noise`` is given (shape of the
    posterior mean), ``z = mean + std * noise`` replaces ``posterior.sample()``.
    """
    vae.train()
    loss.train()
    disc_buffers = {k: v.clone() for k, v in loss.discriminator.named_buffers()}
    named = [(n, p) for n, p in vae.named_parameters() if p.requires_grad]
    named.append(("logvar", loss.logvar))
    try:
        aeloss, _, _, _ = _generator_pass(vae, loss, x, global_step, noise=noise)
        grads = torch.autograd.grad(aeloss, [p for _, p in named], allow_unused=True)
    finally:
        with torch.no_grad():
            for k, v in loss.discriminator.named_buffers():
                v.copy_(disc_buffers[k])
    return {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(named, grads)}


def build_reference(*, block_out_channels=(64, 128), layers_per_block=1, latent_channels=4,
                    norm_num_groups=32, disc_start=0, kl_weight=1e-6, disc_weight=0.5, seed=0,
                    disc_ndf=64, pnet_rand=True):
    """A diffusers ``AutoencoderKL`` and an LDM ``LPIPSWithDiscriminator`` (kl-f8 defaults)."""
    from tokenizers_ae.models.kl_vae import build_autoencoder_kl  # a plain diffusers AutoencoderKL

    torch.manual_seed(seed)
    vae = build_autoencoder_kl(block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                               latent_channels=latent_channels, norm_num_groups=norm_num_groups)
    loss = LPIPSWithDiscriminator(
        disc_start=disc_start,
        kl_weight=kl_weight,
        disc_weight=disc_weight,
        disc_ndf=disc_ndf,
        pnet_rand=pnet_rand,
    )
    return vae, loss


def time_reference(*, batch_size: int = 8, resolution: int = 64, steps: int = 10, warmup: int = 2,
                   disc_start: int = 0, **build_kwargs) -> dict[str, float]:
    """Steady-state fp32 training throughput of the reference loop on random data."""
    vae, loss = build_reference(disc_start=disc_start, **build_kwargs)
    trainer = ReferenceTrainer(vae, loss)
    torch.manual_seed(0)
    x = torch.rand(batch_size, 3, resolution, resolution) * 2 - 1
    for i in range(warmup):
        trainer.step(x, global_step=i)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        trainer.step(x, global_step=i)
    dt = time.perf_counter() - t0
    seconds_per_step = dt / max(steps, 1)
    return {
        "images_per_s": batch_size / seconds_per_step,
        "seconds_per_step": seconds_per_step,
    }


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(time_reference(batch_size=8, resolution=64, steps=5)))
