"""Reference "common practice" VQGAN training loop (taming-transformers), for `aetk bench quality`.

taming's ``VQLPIPSWithDiscriminator`` and the two-optimizer ``VQModel.training_step`` /
``configure_optimizers``, driven by a plain loop, on a diffusers ``VQModel``. diffusers' ``VectorQuantizer``
is taming's ``VectorQuantizer2`` (legacy=True, beta 0.25, codebook initialised uniform in +-1/K, codebook
and commitment losses, straight-through gradient), so the model is taming's VQModel on diffusers modules.

Adapted from (logic copied, formatting and docstrings ours):

* CompVis/taming-transformers ``taming/modules/losses/vqperceptual.py`` (``VQLPIPSWithDiscriminator``),
* CompVis/taming-transformers ``taming/models/vqgan.py`` (``VQModel.forward`` / ``training_step`` /
  ``configure_optimizers``); the hyper-parameters of ``configs/custom_vqgan.yaml`` (1,024 codes).

taming-transformers: Copyright (c) 2020 Patrick Esser and Robin Rombach and Björn Ommer, released under the
MIT License (its full text is in eval/bench/reference_taming.py).

Deviations from the originals, all deliberate (the numbers are those of reference_taming.py):

1. LPIPS is ``lpips.LPIPS(net="vgg")`` with a random trunk (``pnet_rand``; nothing is downloaded), kept in
   eval mode: the real network's cost, not its judgement.
3. A plain loop instead of Lightning; the discriminator pass reuses the generator pass's reconstruction
   (detached) instead of re-running the autoencoder, which favours the reference.
5. FSQ has no codebook, so taming has no FSQ model. For an FSQ race the generator is aetk's ``VQVAE`` with
   its ``FSQ`` (the same modules aetk trains) and the codebook loss is zero; everything else is taming's loop.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers import VQModel

from eval.bench.reference_taming import (
    LPIPSWithDiscriminator,
    NLayerDiscriminator,
    adopt_weight,
    hinge_d_loss,
    vanilla_d_loss,
    weights_init,
)

__all__ = ["VQLPIPSWithDiscriminator", "VQReferenceTrainer", "vqgan_forward", "TAMING_VQGAN"]

TAMING_VQGAN = {"base_lr": 4.5e-6, "disc_start": 10000, "disc_weight": 0.8, "codebook_weight": 1.0}
"""taming's configs/custom_vqgan.yaml (n_embed 1024); main.py multiplies base_lr by the batch size."""


# --------------------------------------------------------------------------------------
# taming/modules/losses/vqperceptual.py
# --------------------------------------------------------------------------------------
class VQLPIPSWithDiscriminator(nn.Module):
    def __init__(
        self,
        disc_start: int,
        codebook_weight: float = 1.0,
        pixelloss_weight: float = 1.0,
        disc_num_layers: int = 3,
        disc_in_channels: int = 3,
        disc_factor: float = 1.0,
        disc_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        disc_ndf: int = 64,
        disc_loss: str = "hinge",
        pnet_rand: bool = True,
    ):
        super().__init__()
        assert disc_loss in ["hinge", "vanilla"]
        self.codebook_weight = codebook_weight
        self.pixel_weight = pixelloss_weight  # stored, never used in forward(), as in taming
        import lpips  # heavy, and only the benchmark needs it

        self.perceptual_loss = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=pnet_rand, verbose=False).eval()
        self.perceptual_loss.requires_grad_(False)
        self.perceptual_weight = perceptual_weight
        self.discriminator = NLayerDiscriminator(
            input_nc=disc_in_channels, n_layers=disc_num_layers, ndf=disc_ndf
        ).apply(weights_init)
        self.discriminator_iter_start = disc_start
        self.disc_loss = hinge_d_loss if disc_loss == "hinge" else vanilla_d_loss
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight

    def train(self, mode: bool = True):
        super().train(mode)
        self.perceptual_loss.eval()  # deviation 1
        return self

    # taming's VQ and latent-diffusion's KL losses share this function to the letter.
    calculate_adaptive_weight = LPIPSWithDiscriminator.calculate_adaptive_weight

    def forward(self, codebook_loss, inputs, reconstructions, optimizer_idx, global_step, last_layer=None,
                split="train"):
        rec_loss = torch.abs(inputs.contiguous() - reconstructions.contiguous())
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())
            rec_loss = rec_loss + self.perceptual_weight * p_loss
        nll_loss = torch.mean(rec_loss)

        if optimizer_idx == 0:
            logits_fake = self.discriminator(reconstructions.contiguous())
            g_loss = -torch.mean(logits_fake)
            # As in taming, the adaptive weight (two autograd.grad calls) is computed every step,
            # also before disc_start.
            try:
                d_weight = self.calculate_adaptive_weight(nll_loss, g_loss, last_layer=last_layer)
            except RuntimeError:
                assert not self.training
                d_weight = torch.tensor(0.0)
            disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
            loss = nll_loss + d_weight * disc_factor * g_loss + self.codebook_weight * codebook_loss.mean()
            log = {f"{split}/total_loss": loss.detach(), f"{split}/quant_loss": codebook_loss.detach().mean(),
                   f"{split}/nll_loss": nll_loss.detach(), f"{split}/d_weight": d_weight.detach(),
                   f"{split}/g_loss": g_loss.detach()}
            return loss, log

        if optimizer_idx == 1:
            logits_real = self.discriminator(inputs.contiguous().detach())
            logits_fake = self.discriminator(reconstructions.contiguous().detach())
            disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
            d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
            return d_loss, {f"{split}/disc_loss": d_loss.detach()}

        raise ValueError(f"optimizer_idx must be 0 or 1, got {optimizer_idx}")


# --------------------------------------------------------------------------------------
# taming/models/vqgan.py (VQModel Lightning module)
# --------------------------------------------------------------------------------------
def vqgan_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """taming's ``VQModel.forward``: x (B, C, H, W) -> (reconstruction (B, C, H, W), codebook loss (scalar),
    token indices (B, h, w)).

    A diffusers ``VQModel`` runs encoder -> quant_conv -> quantize -> post_quant_conv -> decoder; aetk's
    ``VQVAE`` with an FSQ (deviation 5) runs the same path and has no codebook loss.
    """
    if isinstance(model, VQModel):
        h = model.encode(x).latents
        quant, qloss, (_, _, indices) = model.quantize(h)
        rec = model.decode(quant, force_not_quantize=True).sample
        return rec, qloss, indices.reshape(quant.shape[0], *quant.shape[2:])
    q = model.encode(x)
    if q.losses:
        raise ValueError(f"the VQGAN reference takes a diffusers VQModel or an FSQ model; this quantizer has "
                         f"losses of its own ({', '.join(q.losses)})")
    return model.decode(q.quantized), x.new_zeros(()), q.indices


class VQReferenceTrainer:
    """Two-optimizer loop equivalent to taming's Lightning ``VQModel`` training (Adam for the whole
    autoencoder including the codebook, Adam for the discriminator, both at `lr` with `betas`)."""

    def __init__(self, model: nn.Module, loss: VQLPIPSWithDiscriminator, lr: float,
                 betas: tuple[float, float] = (0.5, 0.9)):
        self.model, self.loss = model, loss
        self.model.train()
        self.loss.train()
        self.gen_params = [p for p in model.parameters() if p.requires_grad]
        self.disc_params = list(loss.discriminator.parameters())
        self.opt_ae = torch.optim.Adam(self.gen_params, lr=lr, betas=betas)
        self.opt_disc = torch.optim.Adam(self.disc_params, lr=lr, betas=betas)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.model.decoder.conv_out.weight

    def step(self, x: torch.Tensor, global_step: int) -> dict[str, float]:
        for p in self.disc_params:  # Lightning's toggle_optimizer
            p.requires_grad_(False)
        try:
            rec, qloss, _ = vqgan_forward(self.model, x)
            aeloss, log_ae = self.loss(qloss, x, rec, 0, global_step, last_layer=self.last_layer)
            self.opt_ae.zero_grad()
            aeloss.backward()
            self.opt_ae.step()
        finally:
            for p in self.disc_params:
                p.requires_grad_(True)
        discloss, _ = self.loss(qloss.detach(), x, rec.detach(), 1, global_step, last_layer=self.last_layer)
        self.opt_disc.zero_grad()
        discloss.backward()
        self.opt_disc.step()
        return {"aeloss": float(aeloss.detach()), "discloss": float(discloss.detach()),
                "quant_loss": float(log_ae["train/quant_loss"]), "nll": float(log_ae["train/nll_loss"])}
