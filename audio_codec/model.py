"""SoundStream-style codec (Zeghidour et al. 2021; EnCodec): causal SEANet encoder -> residual VQ
(from `tokenizers_ae`) -> causal SEANet decoder, with quantizer dropout for one model at many
bitrates."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from audio_codec.seanet import SEANetDecoder, SEANetEncoder, fold_weight_norm_
from tokenizers_ae.models.output import AEOutput
from tokenizers_ae.pretrained import Pretrained
from tokenizers_ae.quantizers import ResidualVQ


class SoundStream(Pretrained, nn.Module):
    """audio (B, C, T) in [-1, 1] -> latents (B, D, F) at `frame_rate` Hz -> Q residual codes per
    frame -> audio (B, C, T).

    Args:
        encoder: `SEANetEncoder` (or anything with `hop_length`, `dimension`, `forward`, `step`).
        quantizer: `ResidualVQ` over the encoder's `dimension` channels.
        decoder: `SEANetDecoder` with the encoder's hop length.
        sample_rate: Hz, for the bitrate arithmetic.

    Training uses `forward` (the quantizer's dropout picks the number of levels). Inference
    (`encode`, `decode`, `StreamingEncoder`) expects eval mode: in training mode the quantizer's
    forward also updates EMA codebooks.

    Saved in aetk's native format with the keyword arguments of `build_soundstream` as its config
    (`from_config`); a codec built from parts has no config to save.
    """

    saved_name, saved_what = "SoundStream", "an audio codec (model.kind: soundstream)"
    config: dict | None = None
    """`build_soundstream`'s keyword arguments, when it built this model."""

    def __init__(self, *, encoder: SEANetEncoder, quantizer: ResidualVQ, decoder: SEANetDecoder,
                 sample_rate: int) -> None:
        super().__init__()
        if encoder.hop_length != decoder.hop_length:
            raise ValueError(f"encoder hop {encoder.hop_length} != decoder hop {decoder.hop_length}")
        if not encoder.dimension == quantizer.dim == decoder.dimension:
            raise ValueError(f"latent dims differ: encoder {encoder.dimension}, quantizer {quantizer.dim}, "
                             f"decoder {decoder.dimension}")
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.sample_rate = sample_rate

    # --- saving and loading ---------------------------------------------------------------------

    def pretrained_config(self) -> dict:
        if self.config is None:
            raise ValueError("this SoundStream was built from parts, so it has no config to save; build it with "
                             "build_soundstream (or SoundStream.from_config)")
        return dict(self.config)

    @classmethod
    def from_config(cls, config: dict) -> SoundStream:
        return build_soundstream(**config)

    @classmethod
    def from_legacy(cls, legacy: dict) -> SoundStream:
        m = legacy["model"]
        c = m["codec"]
        return build_soundstream(
            sample_rate=c["sample_rate"], n_filters=c["n_filters"], ratios=c["ratios"], dimension=c["dimension"],
            lstm_layers=c["lstm_layers"], stage_channels=c["stage_channels"], n_residual_layers=c["n_residual_layers"],
            dilation_base=c["dilation_base"], num_quantizers=m["rvq_levels"], codebook_size=m["codebook_size"],
            quantizer_dropout=m["quantizer_dropout"], ema_decay=m["vq_ema_decay"],
            dead_code_threshold=m["dead_code_threshold"], kmeans_init=m["kmeans_init"], cosine=m["cosine"],
            codebook_dim=m["codebook_dim"])

    # --- rates --------------------------------------------------------------------------------

    @property
    def hop_length(self) -> int:
        """Samples per frame."""
        return self.encoder.hop_length

    @property
    def frame_rate(self) -> float:
        """Frames (code vectors) per second, Hz."""
        return self.sample_rate / self.hop_length

    @property
    def num_quantizers(self) -> int:
        return self.quantizer.num_quantizers

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def bits_per_frame(self, n_quantizers: int) -> float:
        """Bits per frame with the first n_quantizers levels: n_q * log2(codebook_size)."""
        return n_quantizers * math.log2(self.codebook_size)

    def bitrate(self, n_quantizers: int) -> float:
        """Bits per second with the first n_quantizers levels."""
        return self.frame_rate * self.bits_per_frame(n_quantizers)

    def n_quantizers_for(self, kbps: float) -> int:
        """The most levels whose bitrate is at most `kbps` kbit/s; ValueError outside the model's range."""
        rates = [self.bitrate(n) / 1000 for n in range(1, self.num_quantizers + 1)]  # kbps
        tol = 1e-9 * rates[-1]  # 1.5 kbps must mean exactly 2 levels at 75 Hz x 10 bits
        if not rates[0] - tol <= kbps <= rates[-1] + tol:
            listed = ", ".join(f"{r:g}" for r in rates)
            raise ValueError(f"{kbps} kbps is outside this model's range; available bitrates (kbps): {listed}")
        return max(n for n, r in enumerate(rates, start=1) if r <= kbps + tol)

    # --- stages -------------------------------------------------------------------------------

    def pad(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, ceil(T / hop) * hop), zeros on the right (a stream's final flush)."""
        return F.pad(x, (0, -x.shape[-1] % self.hop_length))

    def forward(self, x: Tensor, noise=None, n_quantizers: int | None = None) -> AEOutput:
        """x (B, C, T) in [-1, 1] -> AEOutput(recon (B, C, T), latent = quantized (B, D, F),
        reg = the quantizer's losses, stats = its stats). `noise` is ignored (deterministic model);
        `n_quantizers` fixes the number of levels (None: all, or a random number under dropout)."""
        t = x.shape[-1]
        z = self.encoder(self.pad(x))  # (B, D, F)
        q = self.quantizer(z, n_quantizers)
        recon = self.decoder(q.quantized)[..., :t]  # (B, C, T)
        return AEOutput(recon=recon, latent=q.quantized, reg=q.losses, stats=q.stats)

    def encode(self, x: Tensor, n_quantizers: int | None = None) -> Tensor:
        """x (B, C, T) -> codes (B, n_q, ceil(T / hop)) long (all levels when n_quantizers is None)."""
        z = self.encoder(self.pad(x))  # (B, D, F)
        return self.quantize(z, self.num_quantizers if n_quantizers is None else n_quantizers)

    def quantize(self, z: Tensor, n_quantizers: int) -> Tensor:
        """latents (B, D, F) -> codes (B, n_q, F) of the first n_quantizers levels."""
        if not 1 <= n_quantizers <= self.num_quantizers:
            raise ValueError(f"n_quantizers must be in [1, {self.num_quantizers}], got {n_quantizers}")
        if z.shape[-1] == 0:  # nothing to look up (a stream between frames)
            return torch.zeros(z.shape[0], n_quantizers, 0, dtype=torch.long, device=z.device)
        if self.training:  # the quantizer's forward updates its codebooks, as training expects
            return self.quantizer(z, n_quantizers).indices[:, :n_quantizers]  # (B, n_q, F)
        return self.quantizer.encode(z, n_quantizers)  # (B, n_q, F)

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        """codes (B, n_q, F), n_q <= Q -> quantized latents (B, D, F) (levels >= n_q unused)."""
        if not 1 <= codes.shape[1] <= self.num_quantizers:
            raise ValueError(f"codes have {codes.shape[1]} levels, the model has 1 to {self.num_quantizers}")
        return self.quantizer.decode(codes)  # (B, D, F)

    def decode(self, codes: Tensor) -> Tensor:
        """codes (B, n_q, F) -> audio (B, C, F * hop)."""
        return self.decoder(self.codes_to_latents(codes))

    # --- training and inference helpers -------------------------------------------------------

    @property
    def last_layer(self) -> Tensor:
        """The decoder's final conv weight as a leaf of the graph, for `autograd.grad(recon, last_layer)`
        (the adaptive GAN weight): with weight norm, the direction v (`original1`) the weight is
        computed from on every forward; after `fold_weight_norm`, the plain weight."""
        conv = self.decoder.output_conv.conv
        if parametrize.is_parametrized(conv, "weight"):
            return conv.parametrizations.weight.original1
        return conv.weight

    def fold_weight_norm(self) -> SoundStream:
        """A copy for inference with every weight norm folded into a plain weight: the same outputs,
        without recomputing g * v / ||v|| per call. (Or run under `torch.nn.utils.parametrize.cached()`.)"""
        return fold_weight_norm_(copy.deepcopy(self))


def build_soundstream(*, sample_rate: int = 24000, channels: int = 1, n_filters: int = 32,
                      ratios: Sequence[int] = (8, 5, 4, 2), dimension: int = 128, lstm_layers: int = 2,
                      stage_channels: Sequence[int] | None = None, n_residual_layers: int = 1,
                      dilation_base: int = 2, num_quantizers: int = 32, codebook_size: int = 1024,
                      quantizer_dropout: float = 1.0, **vq_kwargs) -> SoundStream:
    """A SoundStream with mirrored causal SEANets and a residual VQ.

    The defaults are EnCodec 24 kHz: hop 320 (75 Hz), 32 levels of 1024 codes = 1.5-24 kbps,
    14.85M encoder + decoder parameters. `vq_kwargs` go to every level's `VectorQuantizer`
    (EnCodec: ema_decay=0.99, kmeans_init=True, dead_code_threshold=2).
    """
    net = dict(channels=channels, dimension=dimension, ratios=ratios, n_filters=n_filters,
               stage_channels=stage_channels, n_residual_layers=n_residual_layers, dilation_base=dilation_base,
               lstm_layers=lstm_layers)
    quantizer = ResidualVQ(num_quantizers=num_quantizers, codebook_size=codebook_size, dim=dimension,
                           quantizer_dropout=quantizer_dropout, **vq_kwargs)
    model = SoundStream(encoder=SEANetEncoder(**net), quantizer=quantizer, decoder=SEANetDecoder(**net),
                        sample_rate=sample_rate)
    model.config = dict(sample_rate=sample_rate, **{k: list(v) if isinstance(v, tuple) else v for k, v in net.items()},
                        num_quantizers=num_quantizers, codebook_size=codebook_size,
                        quantizer_dropout=quantizer_dropout, **vq_kwargs)
    return model
