"""Audio discriminators: EnCodec's multi-scale STFT discriminator and HiFi-GAN's multi-period discriminator.

Each takes a waveform (B, 1, T) and returns a `DiscriminatorOutput`: one logits map per sub-discriminator
and, per sub-discriminator, the activations of its hidden layers (for the feature-matching loss; the
logits themselves are not among them). `CombinedDiscriminator` runs several and concatenates the lists.
Every conv is weight-normalised (torch.nn.utils.parametrizations.weight_norm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


@dataclass
class DiscriminatorOutput:
    """logits[k]: sub-discriminator k's logits map; features[k]: its hidden activations, input to output."""

    logits: list[torch.Tensor]
    features: list[list[torch.Tensor]]

    def chunk(self, n: int) -> list[DiscriminatorOutput]:
        """Split every tensor along the batch, e.g. the outputs of D(cat([real, fake])) into two."""
        logits = [t.chunk(n) for t in self.logits]
        feats = [[t.chunk(n) for t in layer] for layer in self.features]
        return [DiscriminatorOutput([lg[i] for lg in logits], [[t[i] for t in layer] for layer in feats])
                for i in range(n)]


def _check_input(x: torch.Tensor) -> None:
    if x.ndim != 3 or x.shape[1] != 1:
        raise ValueError(f"discriminators take mono audio (B, 1, T), got shape {tuple(x.shape)}")


def _run_all(discriminators: nn.ModuleList, x: torch.Tensor) -> DiscriminatorOutput:
    """Each sub-discriminator's (logits, features) on the same input, as one output."""
    _check_input(x)
    outs = [d(x) for d in discriminators]
    return DiscriminatorOutput([lg for lg, _ in outs], [fm for _, fm in outs])


# --- EnCodec's MS-STFT discriminator -----------------------------------------------------------------------

class STFTDiscriminator(nn.Module):
    """One scale: complex STFT (real and imaginary parts as 2 channels, time x frequency) -> 2-D convs.

    Conv (3, 9) -> three convs (3, 9) with stride (1, 2) and time dilations 1, 2, 4 -> conv (3, 3) -> conv
    (3, 3) to one logit channel; LeakyReLU(0.2) after every conv but the last. The STFT has no centring and
    is normalised by the window's energy (torchaudio's `normalized=True`), as EnCodec.
    """

    def __init__(self, *, n_fft: int = 1024, hop_length: int | None = None, filters: int = 32,
                 dilations: Sequence[int] = (1, 2, 4), kernel_size: tuple[int, int] = (3, 9)) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length or n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        kt, kf = kernel_size
        convs = [nn.Conv2d(2, filters, kernel_size, padding=((kt - 1) // 2, (kf - 1) // 2))]
        for d in dilations:
            convs.append(nn.Conv2d(filters, filters, kernel_size, stride=(1, 2), dilation=(d, 1),
                                   padding=((kt - 1) * d // 2, (kf - 1) // 2)))
        convs.append(nn.Conv2d(filters, filters, (kt, kt), padding=((kt - 1) // 2, (kt - 1) // 2)))
        self.convs = nn.ModuleList(weight_norm(c) for c in convs)
        self.conv_post = weight_norm(nn.Conv2d(filters, 1, (kt, kt), padding=((kt - 1) // 2, (kt - 1) // 2)))
        self.act = nn.LeakyReLU(0.2)

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) -> (B, 2, frames, n_fft // 2 + 1): real and imaginary parts, in float32."""
        x = x[:, 0].float()  # (B, T)
        if x.shape[-1] < self.n_fft:  # one frame at least
            x = F.pad(x, (0, self.n_fft - x.shape[-1]))
        with torch.autocast(device_type=x.device.type, enabled=False):
            window = self.window.float()
            z = torch.stft(x, self.n_fft, hop_length=self.hop_length, window=window, center=False,
                           return_complex=True)  # (B, F, frames)
            z = z / window.pow(2).sum().sqrt()
        return torch.view_as_real(z).permute(0, 3, 2, 1)  # (B, 2, frames, F)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z = self.spectrogram(x).to(next(self.parameters()).dtype)  # (B, 2, t, f)
        features = []
        for conv in self.convs:
            z = self.act(conv(z))  # (B, filters, t, f'), f' halved by each strided conv
            features.append(z)
        return self.conv_post(z), features  # (B, 1, t, f')


class MultiScaleSTFTDiscriminator(nn.Module):
    """EnCodec's MS-STFT discriminator: `STFTDiscriminator`s at n_fft (1024, 2048, 512), hop n_fft // 4."""

    def __init__(self, *, n_ffts: Sequence[int] = (1024, 2048, 512), filters: int = 32,
                 dilations: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            STFTDiscriminator(n_fft=n, filters=filters, dilations=dilations) for n in n_ffts)

    def forward(self, x: torch.Tensor) -> DiscriminatorOutput:
        return _run_all(self.discriminators, x)


# --- HiFi-GAN's multi-period discriminator ----------------------------------------------------------------

class PeriodDiscriminator(nn.Module):
    """The waveform folded into (T / p, p) columns -> 2-D convs (5, 1) striding 3 along time.

    HiFi-GAN: channels 32, 128, 512, 1024 with stride 3, then 1024 with stride 1, then a (3, 1) conv to one
    logit channel; LeakyReLU(0.1). The input is reflect-padded to a multiple of the period.
    """

    def __init__(self, *, period: int, channels: Sequence[int] = (32, 128, 512, 1024, 1024),
                 kernel_size: int = 5, stride: int = 3) -> None:
        super().__init__()
        self.period = period
        convs, c_in = [], 1
        for i, c in enumerate(channels):
            s = stride if i < len(channels) - 1 else 1
            convs.append(weight_norm(nn.Conv2d(c_in, c, (kernel_size, 1), (s, 1), padding=(kernel_size // 2, 0))))
            c_in = c
        self.convs = nn.ModuleList(convs)
        self.conv_post = weight_norm(nn.Conv2d(c_in, 1, (3, 1), padding=(1, 0)))
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, t = x.shape
        if t % self.period:
            pad = self.period - t % self.period
            x = F.pad(x, (0, pad), mode="reflect" if t > pad else "constant")
        z = x.view(b, c, -1, self.period)  # (B, 1, T / p, p)
        features = []
        for conv in self.convs:
            z = self.act(conv(z))  # (B, C, ~T / (p * 3^i), p)
            features.append(z)
        return self.conv_post(z), features  # (B, 1, t', p)


class MultiPeriodDiscriminator(nn.Module):
    """HiFi-GAN's MPD: one `PeriodDiscriminator` per period (2, 3, 5, 7, 11)."""

    def __init__(self, *, periods: Sequence[int] = (2, 3, 5, 7, 11),
                 channels: Sequence[int] = (32, 128, 512, 1024, 1024)) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(period=p, channels=channels) for p in periods)

    def forward(self, x: torch.Tensor) -> DiscriminatorOutput:
        return _run_all(self.discriminators, x)


class CombinedDiscriminator(nn.Module):
    """Several discriminators on the same input; their logits and features lists, concatenated in order."""

    def __init__(self, discriminators: Sequence[nn.Module]) -> None:
        super().__init__()
        if not discriminators:
            raise ValueError("CombinedDiscriminator needs at least one discriminator")
        self.discriminators = nn.ModuleList(discriminators)

    def forward(self, x: torch.Tensor) -> DiscriminatorOutput:
        logits, features = [], []
        for d in self.discriminators:
            out = d(x)
            logits += out.logits
            features += out.features
        return DiscriminatorOutput(logits, features)
