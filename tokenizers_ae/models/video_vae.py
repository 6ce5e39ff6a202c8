"""Causal 3D video VAE on diffusers' `AutoencoderKLWan` (Wan 2.1's video autoencoder).

Why Wan's class among diffusers' video autoencoders: it is causal in time in every layer
(causal 3D convolutions, RMS norms over channels only, attention within a frame), so a clip
encoded in chunks of frames carrying each convolution's last frames gives the latents of the whole
clip; its first frame is encoded alone, so an image is a one-frame video; and its compression is a
config (`dim_mult` sets the spatial factor 2**(len-1), `temperal_downsample` the temporal one).
CogVideoX's and HunyuanVideo's group norms take statistics over time, and Mochi does not code the
first frame alone, so none of them streams exactly.

Layout: videos are (B, C, T, H, W) in [-1, 1] with T = 1 + k * f_t frames; latents are
(B, c, 1 + k, H / f, W / f). The first frame gives the first latent frame, each following group
of f_t frames one more.

Exactness: `encode_moments(x, chunk=n)` and `decode(z, chunk=n)` run the network over the clip
`n` frames at a time with Wan's causal cache (bounded memory for long clips); the result equals the
whole-clip call within float rounding (tested), as for the audio codec's streaming. Spatial tiling
cannot be exact for this architecture (the mid-block attention sees the whole frame), so a `tile`
is refused rather than approximated with blended seams.

Inference (no_grad, whole clip or streams) runs the same network depth first (tokenizers_ae/models/
wan_pipeline.py): the same outputs within 1e-5 in less time and memory than diffusers' loop.

Optional FSQ bottleneck (`quantizer`): the posterior mean is quantized, giving discrete video
tokens (B, 1 + k, h, w). With it the model is saved in aetk's native format (diffusers' class has
no quantizer); without, as a diffusers `AutoencoderKLWan` directory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from torch import nn

from tokenizers_ae.models.kl_vae import gaussian_kl
from tokenizers_ae.models.output import AEOutput
from tokenizers_ae.models.wan_pipeline import Pipeline, causal_cache
from tokenizers_ae.pretrained import (
    Pretrained,
    Saved,
    apply_measured,
    check_finite,
    expect,
    plain_config,
    prepare_dir,
    save_native,
)
from tokenizers_ae.quantizers import Quantizer, QuantizerOutput, build_quantizer, quantizer_config

NoiseFn = Callable[[torch.Size], torch.Tensor]

MEASURED_KEYS = ("latents_mean", "latents_std")
"""Config entries training measures on data at the end (per-channel, where Wan pipelines read them)."""

NOT_TILEABLE = ("spatial tiling cannot be exact for a Wan video VAE (its mid-block attention sees the whole frame); "
                "encode long videos in chunks of frames instead (exact), or at a lower resolution")


def build_autoencoder_kl_wan(*, in_channels: int = 3, base_dim: int = 32, z_dim: int = 4,
                             dim_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 1,
                             temporal_downsample: Sequence[bool] = (False, True, True),
                             residual: bool = False) -> AutoencoderKLWan:
    """A diffusers AutoencoderKLWan compressing space by 2**(len(dim_mult)-1) and time by
    2**sum(temporal_downsample); latents_mean/std start as 0/1 (training measures them). `residual`:
    Wan 2.2's blocks with parameter-free down/up shortcuts (`is_residual`)."""
    dim_mult, temporal_downsample = list(dim_mult), list(temporal_downsample)
    if len(temporal_downsample) != len(dim_mult) - 1:
        raise ValueError(f"temporal_downsample needs one entry per downsampling level ({len(dim_mult) - 1}), "
                         f"got {temporal_downsample}")
    return AutoencoderKLWan(
        base_dim=base_dim, z_dim=z_dim, dim_mult=dim_mult, num_res_blocks=num_res_blocks, attn_scales=[],
        temperal_downsample=temporal_downsample, is_residual=residual, in_channels=in_channels,
        out_channels=in_channels,
        latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim,
        scale_factor_temporal=2 ** sum(temporal_downsample), scale_factor_spatial=2 ** (len(dim_mult) - 1))


class VideoVAE(Pretrained, nn.Module):
    """x (B, C, T, H, W) -> q(z|x) -> z (B, c, t, h, w) -> x_hat, causal in time.

    `vae` is a diffusers AutoencoderKLWan (fresh or loaded to fine-tune); `quantizer` an optional
    FSQ over the posterior mean (discrete tokens instead of Gaussian latents).
    """

    saved_name, saved_what = "VideoVAE", "a video VAE"

    def __init__(self, vae: AutoencoderKLWan, *, quantizer: Quantizer | None = None,
                 sample_posterior: bool = True) -> None:
        super().__init__()
        if vae.config.patch_size is not None:
            raise ValueError("patchified Wan VAEs (Wan 2.2, patch_size set) are not supported")
        self.vae = vae
        self.quantizer = quantizer
        self.sample_posterior = sample_posterior

    # --- geometry -------------------------------------------------------------------------------

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first: 2 ** (temporal downsampling levels)."""
        return 2 ** sum(bool(t) for t in self.vae.config.temperal_downsample)

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent position along a side."""
        return 2 ** (len(self.vae.config.dim_mult) - 1)

    downsampling_factor = spatial_factor

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.z_dim)

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a clip of `frames` frames; ValueError unless frames = 1 + k * f_t."""
        ft = self.temporal_factor
        if frames < 1 or (frames - 1) % ft:
            raise ValueError(f"a clip must have 1 + k*{ft} frames (the first frame is coded alone, then groups of "
                             f"{ft}), got {frames}")
        return 1 + (frames - 1) // ft

    def check_size(self, x: torch.Tensor) -> None:
        """ValueError naming what is wrong unless x is (B, C, 1 + k*f_t, H, W) with H, W multiples of f."""
        if x.ndim != 5:
            raise ValueError(f"videos are (B, C, T, H, W), got shape {tuple(x.shape)}")
        self.latent_frames(x.shape[2])
        f = self.spatial_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"frame sides must be multiples of {f}, got {x.shape[-2]}x{x.shape[-1]}")

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output conv: where the adaptive GAN weight is measured."""
        return self.vae.decoder.conv_out.weight

    @property
    def latents_mean(self) -> torch.Tensor:
        """(c,) per-channel latent mean measured on the training data (0 until measured)."""
        return torch.tensor(self.vae.config.latents_mean, dtype=torch.float32)

    @property
    def latents_std(self) -> torch.Tensor:
        """(c,) per-channel latent std; (z - mean) / std is what a prior models."""
        return torch.tensor(self.vae.config.latents_std, dtype=torch.float32)

    # --- saving and loading ---------------------------------------------------------------------

    def pretrained_config(self) -> dict:
        return {"backbone": plain_config(self.vae.config),
                "quantizer": quantizer_config(self.quantizer) if self.quantizer is not None else None}

    @classmethod
    def from_config(cls, config: dict) -> VideoVAE:
        q = config.get("quantizer")
        return cls(AutoencoderKLWan.from_config(config["backbone"]), quantizer=build_quantizer(q) if q else None)

    @classmethod
    def from_saved(cls, saved: Saved) -> VideoVAE:
        expect(saved, cls.saved_name, cls.saved_what)
        if saved.source == "diffusers":
            return cls(AutoencoderKLWan.from_pretrained(saved.path).eval()).eval()
        model = super().from_saved(saved)
        apply_measured(model.vae, saved, MEASURED_KEYS)
        return model

    def save_pretrained(self, out: str | Path) -> Path:
        """A diffusers AutoencoderKLWan directory (`AutoencoderKLWan.from_pretrained(out)` loads it);
        with an FSQ bottleneck, aetk's native format (diffusers' class cannot hold one)."""
        if self.quantizer is not None:
            return save_native(self, out, class_name=self.saved_name, config=self.pretrained_config())
        check_finite(self.vae.state_dict(), f"video VAE for {out}")
        out = prepare_dir(out)
        self.vae.save_pretrained(out, safe_serialization=True)
        return out

    # --- the causal network, in chunks of frames ------------------------------------------------

    def _encoder_chunks(self, x: torch.Tensor, chunk: int | None) -> list[torch.Tensor]:
        """The clip's frame groups: the first frame alone, then `chunk` frames (a multiple of f_t) at a time."""
        rest = x.shape[2] - 1
        step = chunk or max(rest, 1)
        if chunk is not None and (chunk < 1 or chunk % self.temporal_factor):
            raise ValueError(f"chunk must be a positive multiple of {self.temporal_factor} frames, got {chunk}")
        return [x[:, :, :1]] + [x[:, :, 1 + s:1 + s + step] for s in range(0, rest, step)]

    def _recording(self, x: torch.Tensor) -> bool:
        """Whether autograd records this call (training): then the clip goes through in one graph."""
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.vae.parameters()))

    def _streams(self, x: torch.Tensor, chunk: int | None) -> bool:
        """The bounded-memory path: inference (nothing recorded), no explicit chunk, a Wan 2.1 network."""
        return chunk is None and not self.vae.config.is_residual and not self._recording(x)

    def trainable_parts(self) -> dict[str, tuple[nn.Module, ...]]:
        """The halves `train.trainable` can freeze: what makes the latents (with the FSQ, which has no
        weights to train but belongs to the code) and what reads them."""
        v = self.vae
        enc = (v.encoder, v.quant_conv) + ((self.quantizer,) if self.quantizer is not None else ())
        return {"encoder": enc, "decoder": (v.post_quant_conv, v.decoder)}

    def encode_moments(self, x: torch.Tensor, *, chunk: int | None = None,
                       tile: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, T, H, W) -> posterior mean, logvar each (B, c, t, h, w); logvar clamped as diffusers does.

        `chunk`: frames per encoder call after the first (a multiple of f_t; None: all at once when
        autograd records, else the streaming pipeline below). The causal cache carries each
        convolution's last frames between calls, so the result is the same whatever the chunking
        (within float rounding); smaller chunks bound the activation memory. Under no_grad with no
        chunk, the encoder runs depth first through `Pipeline` (one frame per call above its first
        temporally strided layer) into preallocated outputs: bounded memory whatever the clip length.
        """
        if tile:
            raise ValueError(NOT_TILEABLE)
        self.check_size(x)
        if self._streams(x, chunk):
            return self._encode_streaming(x)
        cache = causal_cache(self.vae.encoder)
        outs = [self.vae.encoder(part, feat_cache=cache, feat_idx=[0]) for part in self._encoder_chunks(x, chunk)]
        moments = self.vae.quant_conv(torch.cat(outs, dim=2))  # 1x1x1: no temporal context
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def _encode_streaming(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.spatial_factor
        shape = (x.shape[0], self.latent_channels, self.latent_frames(x.shape[2]), x.shape[-2] // f, x.shape[-1] // f)
        mean, logvar = x.new_empty(shape), x.new_empty(shape)
        pos = 0
        for y in Pipeline.encoder(self.vae.encoder).push(x):
            m, lv = self.vae.quant_conv(y).chunk(2, dim=1)
            n = m.shape[2]
            mean[:, :, pos:pos + n] = m  # a copy, cast to x's dtype (autocast may give bf16)
            logvar[:, :, pos:pos + n] = lv.clamp(-30.0, 20.0)
            pos += n
        return mean, logvar

    def decode(self, z: torch.Tensor, *, chunk: int | None = None, tile: int | None = None,
               clamp: bool = False) -> torch.Tensor:
        """(B, c, t, h, w) -> (B, C, 1 + (t-1)*f_t, H, W), not clamped unless `clamp` (training needs the
        gradient beyond [-1, 1]; diffusers' decode clamps to [-1, 1]).

        `chunk`: latent frames per decoder call after the first (None: all at once when autograd
        records, else the streaming pipeline: the decoder runs depth first, one frame per call at each
        resolution, each output frame written once into a preallocated video and clamped in place).
        """
        if tile:
            raise ValueError(NOT_TILEABLE)
        if z.ndim != 5:
            raise ValueError(f"video latents are (B, c, t, h, w), got shape {tuple(z.shape)}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1 latent frame, got {chunk}")
        x = self.vae.post_quant_conv(z)
        if self._streams(z, chunk):
            return self._decode_streaming(x, clamp)
        cache = causal_cache(self.vae.decoder)
        rest = x.shape[2] - 1
        step = chunk or max(rest, 1)
        outs = [self.vae.decoder(x[:, :, :1], feat_cache=cache, feat_idx=[0], first_chunk=True)]
        outs += [self.vae.decoder(x[:, :, 1 + s:1 + s + step], feat_cache=cache, feat_idx=[0])
                 for s in range(0, rest, step)]
        out = torch.cat(outs, dim=2)
        return out.clamp(-1.0, 1.0) if clamp else out

    def _decode_streaming(self, x: torch.Tensor, clamp: bool) -> torch.Tensor:
        f, t = self.spatial_factor, x.shape[2]
        out = x.new_empty(x.shape[0], self.vae.config.out_channels, 1 + (t - 1) * self.temporal_factor,
                          x.shape[-2] * f, x.shape[-1] * f)
        pos = 0
        for y in Pipeline.decoder(self.vae.decoder).push(x):
            n = y.shape[2]
            if clamp:
                torch.clamp(y, -1.0, 1.0, out=out[:, :, pos:pos + n])
            else:
                out[:, :, pos:pos + n] = y
            pos += n
        return out

    # --- what users call ------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, *, chunk: int | None = None, tile: int | None = None) -> torch.Tensor:
        """(B, C, T, H, W) in [-1, 1] -> latents (B, c, t, h, w): the posterior mean, unnormalised
        (or the quantized codes with an FSQ bottleneck)."""
        mean = self.encode_moments(x, chunk=chunk, tile=tile)[0]
        return self.quantizer(mean).quantized if self.quantizer is not None else mean

    def tokens(self, x: torch.Tensor, *, chunk: int | None = None) -> torch.Tensor:
        """(B, C, T, H, W) -> FSQ token indices (B, t, h, w); ValueError without a quantizer."""
        if self.quantizer is None:
            raise ValueError("this video VAE has continuous (KL) latents, not tokens; train it with model.quantizer")
        return self.quantizer(self.encode_moments(x, chunk=chunk)[0]).indices

    def decode_indices(self, indices: torch.Tensor, *, chunk: int | None = None) -> torch.Tensor:
        """Token grid (B, t, h, w) -> videos (B, C, T, H, W) in [-1, 1]."""
        if self.quantizer is None:
            raise ValueError("this video VAE has no quantizer")
        return self.decode(self.quantizer.indices_to_codes(indices), chunk=chunk, clamp=True)

    def reconstruct(self, x: torch.Tensor, *, chunk: int | None = None, tile: int | None = None) -> torch.Tensor:
        """(B, C, T, H, W) -> the decoded latents (B, C, T, H, W), clamped to [-1, 1] as diffusers' decode."""
        return self.decode(self.encode(x, chunk=chunk, tile=tile), chunk=chunk, clamp=True)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> (z - latents_mean) / latents_std per channel: what a prior models (Wan pipelines' rule)."""
        shape = (1, -1) + (1,) * (z.ndim - 2)
        return (z - self.latents_mean.to(z).view(shape)) / self.latents_std.to(z).view(shape)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of `normalize`."""
        shape = (1, -1) + (1,) * (z.ndim - 2)
        return z * self.latents_std.to(z).view(shape) + self.latents_mean.to(z).view(shape)

    def forward(self, x: torch.Tensor, noise: NoiseFn | None = None) -> AEOutput:
        """Reconstruct x (B, C, T, H, W). `noise(shape)` supplies the posterior noise (default
        torch.randn) so a trainer can make it independent of how a batch is split across processes."""
        mean, logvar = self.encode_moments(x)  # (B, c, t, h, w)
        if self.quantizer is not None:
            q: QuantizerOutput = self.quantizer(mean)
            return AEOutput(recon=self.decode(q.quantized), latent=q.indices, reg=q.losses, stats=q.stats)
        if self.sample_posterior and self.training:
            eps = noise(mean.shape) if noise is not None else torch.randn_like(mean)
            z = mean + torch.exp(0.5 * logvar) * eps.to(mean)
        else:
            z = mean
        recon = self.decode(z)
        kl = gaussian_kl(mean.float(), logvar.float()).mean() / x[0].numel()  # nats per input value
        stats = {"latent/mean": mean.detach().mean(), "latent/std": mean.detach().float().std()}
        return AEOutput(recon=recon, latent=z, reg={"kl": kl}, stats=stats)


class VideoEncoderStream:
    """Encode a video pushed a few frames at a time, in bounded memory: the latents equal
    `VideoVAE.encode_moments` of the whole clip (within float rounding).

    `push(frames (B, C, n, H, W))` returns the latent means (B, c, m, h, w) ready so far (m may be 0):
    the first frame is coded alone, then every f_t frames give one latent frame; frames that do not
    yet fill a group wait. `flush()` raises if frames are left over (a clip has 1 + k*f_t frames).
    A Wan 2.1 network streams through the same depth-first pipeline as `encode` under no_grad.
    """

    def __init__(self, model: VideoVAE) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        enc = self.model.vae.encoder
        self._pipe = None if self.model.vae.config.is_residual else Pipeline.encoder(enc)
        self._cache = causal_cache(enc)
        self._pending: torch.Tensor | None = None
        self._started = False
        self._frames = 0

    @torch.no_grad()
    def push(self, frames: torch.Tensor) -> torch.Tensor:
        self._frames += frames.shape[2]
        if self._pipe is not None:
            outs = list(self._pipe.push(frames))
        else:
            outs = self._push_whole(frames)
        if not outs:
            return frames.new_zeros(frames.shape[0], self.model.latent_channels, 0, *self._latent_hw(frames))
        return self.model.vae.quant_conv(torch.cat(outs, dim=2)).chunk(2, dim=1)[0]

    def _push_whole(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """Wan's own encoder forward on the first frame, then on each full group of f_t frames."""
        pending = frames if self._pending is None else torch.cat([self._pending, frames], dim=2)
        parts = []
        if not self._started and pending.shape[2] >= 1:
            parts.append(pending[:, :, :1])
            pending = pending[:, :, 1:]
            self._started = True
        ft = self.model.temporal_factor
        ready = pending.shape[2] // ft * ft
        if ready:
            parts.append(pending[:, :, :ready])
        self._pending = pending[:, :, ready:]
        return [self.model.vae.encoder(p, feat_cache=self._cache, feat_idx=[0]) for p in parts]

    def _latent_hw(self, frames: torch.Tensor) -> tuple[int, int]:
        f = self.model.spatial_factor
        return frames.shape[-2] // f, frames.shape[-1] // f

    def flush(self) -> None:
        left = (self._frames - 1) % self.model.temporal_factor if self._frames else 0
        if left:
            raise ValueError(f"{left} frame(s) left over: a clip must have 1 + k*{self.model.temporal_factor} frames")


class VideoDecoderStream:
    """Decode latents pushed a few latent frames at a time: the frames equal `VideoVAE.decode` of
    the whole latent clip (within float rounding). `push((B, c, m, h, w))` -> (B, C, n, H, W).
    A Wan 2.1 network streams through the same depth-first pipeline as `decode` under no_grad."""

    def __init__(self, model: VideoVAE) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        dec = self.model.vae.decoder
        self._pipe = None if self.model.vae.config.is_residual else Pipeline.decoder(dec)
        self._cache = causal_cache(dec)
        self._started = False

    @torch.no_grad()
    def push(self, z: torch.Tensor) -> torch.Tensor:
        x = self.model.vae.post_quant_conv(z)
        outs = list(self._pipe.push(x)) if self._pipe is not None else self._push_whole(x)
        if not outs:
            f = self.model.spatial_factor
            return z.new_zeros(z.shape[0], self.model.vae.config.out_channels, 0, z.shape[-2] * f, z.shape[-1] * f)
        return torch.cat(outs, dim=2).contiguous()

    def _push_whole(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Wan's own decoder forward on the first latent frame, then on the rest."""
        dec = self.model.vae.decoder
        outs = []
        if not self._started and x.shape[2]:
            outs.append(dec(x[:, :, :1], feat_cache=self._cache, feat_idx=[0], first_chunk=True))
            x = x[:, :, 1:]
            self._started = True
        if x.shape[2]:
            outs.append(dec(x, feat_cache=self._cache, feat_idx=[0]))
        return outs
