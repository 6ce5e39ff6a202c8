"""KL-regularised autoencoder (the latent-diffusion / Stable Diffusion VAE) on diffusers' `AutoencoderKL`.

Keeping diffusers' class as the network means an exported model is a working `AutoencoderKL`
(`save_pretrained` writes a diffusers directory) with no conversion step; `from_pretrained` also
reads Stable Diffusion single files and `aetk train` checkpoints and run directories.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import nn

from tokenizers_ae.export.sd_single_file import load_sd_single_file, save_sd_single_file
from tokenizers_ae.models.output import AEOutput
from tokenizers_ae.pretrained import (
    LoadError,
    Pretrained,
    Saved,
    apply_measured,
    check_finite,
    expect,
    plain_config,
    prepare_dir,
)
from tokenizers_ae.tiling import vae_decode, vae_moments

MEASURED_KEYS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast")
"""Config entries training measures on data at the end and writes to the run's `model/`."""

NoiseFn = Callable[[torch.Size], torch.Tensor]


def build_autoencoder_kl(
    *,
    in_channels: int = 3,
    block_out_channels: Sequence[int] = (64, 128),
    layers_per_block: int = 1,
    latent_channels: int = 4,
    norm_num_groups: int = 32,
    mid_block_attention: bool = True,
    sample_size: int = 64,
) -> AutoencoderKL:
    """A diffusers AutoencoderKL with downsampling factor 2**(len(block_out_channels)-1)."""
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=norm_num_groups,
        sample_size=sample_size,
        mid_block_add_attention=mid_block_attention,
    )


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over every non-batch dim: (B, ...) -> (B,) nats.

    Reducing over range(1, ndim) (not diffusers' fixed [1, 2, 3]) serves (B, c, t) audio latents too.
    """
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.sum(dim=tuple(range(1, kl.ndim)))


class KLVAE(Pretrained, nn.Module):
    """x -> q(z|x) = N(mean, var) -> z -> x_hat, with a per-value KL term.

    `vae` is any diffusers AutoencoderKL (built fresh or loaded to fine-tune).
    """

    saved_name, saved_what = "KLVAE", "a KL-VAE"

    def __init__(self, vae: AutoencoderKL, *, sample_posterior: bool = True) -> None:
        super().__init__()
        self.vae = vae
        self.sample_posterior = sample_posterior

    # --- saving and loading ---------------------------------------------------------------------

    def pretrained_config(self) -> dict:
        return plain_config(self.vae.config)

    @classmethod
    def from_config(cls, config: dict) -> KLVAE:
        return cls(AutoencoderKL.from_config(config))

    @classmethod
    def from_legacy(cls, legacy: dict) -> KLVAE:
        m = legacy["model"]
        if m.get("init_from"):  # the architecture was the fine-tuned model's
            return cls(cls.from_pretrained(m["init_from"]).vae)
        return cls(build_autoencoder_kl(
            in_channels=m["in_channels"], block_out_channels=m["block_out_channels"],
            layers_per_block=m["layers_per_block"], latent_channels=m["latent_channels"],
            norm_num_groups=m["norm_num_groups"], mid_block_attention=m["mid_block_attention"],
            sample_size=legacy["data"].get("resolution", 64)))

    @classmethod
    def from_saved(cls, saved: Saved) -> KLVAE:
        expect(saved, cls.saved_name, cls.saved_what)
        if saved.source == "single_file":
            try:
                return cls(load_sd_single_file(saved.path))
            except ValueError as e:
                raise LoadError(str(e)) from None
        if saved.source == "diffusers":
            return cls(AutoencoderKL.from_pretrained(saved.path).eval()).eval()
        model = super().from_saved(saved)
        apply_measured(model.vae, saved, MEASURED_KEYS)
        return model

    def save_pretrained(self, out: str | Path) -> Path:
        """A diffusers AutoencoderKL directory (`AutoencoderKL.from_pretrained(out)` loads it)."""
        check_finite(self.vae.state_dict(), f"KL-VAE for {out}")
        out = prepare_dir(out)
        self.vae.save_pretrained(out, safe_serialization=True)
        return out

    def save_single_file(self, path: str | Path) -> Path:
        """One LDM-named `.safetensors` file (what `AutoencoderKL.from_single_file` and SD tools read)."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"an SD single file must end in .safetensors, got {path}")
        if path.is_dir():
            raise ValueError(f"{path} is a directory; an SD single file is one .safetensors file")
        check_finite(self.vae.state_dict(), f"KL-VAE for {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_sd_single_file(self.vae, path)
        return path

    def trainable_parts(self) -> dict[str, tuple[nn.Module, ...]]:
        """The halves `train.trainable` can freeze: what makes the latents and what reads them."""
        v = self.vae
        return {"encoder": tuple(m for m in (v.encoder, v.quant_conv) if m is not None),
                "decoder": tuple(m for m in (v.post_quant_conv, v.decoder) if m is not None)}

    @property
    def downsampling_factor(self) -> int:
        """Pixels per latent position along a side: 2 ** (levels - 1)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        """Latents times this have unit variance (what a diffusion prior and diffusers pipelines use)."""
        return float(self.vae.config.scaling_factor)

    def encode(self, x: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> posterior means (B, c, h, w), unscaled."""
        return self.encode_moments(x, tile)[0]

    def reconstruct(self, x: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """(B, C, H, W) -> the decoded posterior mean (B, C, H, W); `tile` as in `encode_moments`."""
        return self.decode(self.encode(x, tile), tile)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output conv: where the adaptive GAN weight is measured."""
        return self.vae.decoder.conv_out.weight

    def encode_moments(self, x: torch.Tensor, tile: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> mean, logvar each (B, c, h, w); logvar clamped as diffusers does.
        `tile`: run in exact tiles of that many pixels (bounded memory, inference only)."""
        moments = vae_moments(self.vae, x, tile) if tile else self.vae._encode(x)  # (B, 2c, h, w)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """(B, c, h, w) -> (B, C, H, W); `tile` as in `encode_moments`."""
        return vae_decode(self.vae, z, tile) if tile else self.vae._decode(z, return_dict=False)[0]

    def forward(self, x: torch.Tensor, noise: NoiseFn | None = None) -> AEOutput:
        """Reconstruct x. `noise(shape)` supplies the posterior noise (default: torch.randn) so a
        trainer can make it independent of how a batch is split across processes."""
        mean, logvar = self.encode_moments(x)  # (B, c, h, w)
        if self.sample_posterior and self.training:
            eps = noise(mean.shape) if noise is not None else torch.randn_like(mean)
            z = mean + torch.exp(0.5 * logvar) * eps.to(mean)
        else:
            z = mean
        recon = self.decode(z)  # (B, C, H, W)
        # KL in nats per input value: matches latent-diffusion's kl_weight, whose losses were sums.
        kl = gaussian_kl(mean.float(), logvar.float()).mean() / x[0].numel()
        stats = {"latent/mean": mean.detach().mean(), "latent/std": mean.detach().float().std()}
        return AEOutput(recon=recon, latent=z, reg={"kl": kl}, stats=stats)
