"""Reconstruction losses for audio codecs: multi-scale mel and STFT distances, waveform L1, feature matching.

References: descript-audio-codec `dac/nn/loss.py` (multi-scale mel loss, windows 32..2048 with 5..320 mels)
and EnCodec (Défossez et al. 2022; relative feature-matching loss). Every loss takes (B, 1, T) or (B, T)
waveforms, returns a scalar, is differentiable, and runs in float32 with autocast switched off: STFTs in
bf16 are unsupported or inaccurate, and the log of a clamped magnitude needs float32's range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DAC_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)
DAC_N_MELS = (5, 10, 20, 40, 80, 160, 320)

# --- mel filterbank (Slaney's Auditory Toolbox, as librosa's default htk=False, norm="slaney") -------------

_F_SP = 200.0 / 3  # Hz per mel on the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15 mels at 1 kHz
_LOGSTEP = math.log(6.4) / 27.0  # log-spaced above 1 kHz: 27 mels per factor 6.4


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    lin = f / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(f, 1e-10) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log, lin)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m)


def mel_frequencies(n: int, *, f_min: float, f_max: float) -> np.ndarray:
    """`n` frequencies (Hz) evenly spaced on the mel scale from f_min to f_max inclusive."""
    return mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n))


def mel_filterbank(*, sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) float32 triangular filters, Slaney-style (librosa's default).

    Filter m rises from edge m to its centre m + 1 and falls to edge m + 2 of `n_mels + 2` mel-spaced
    edges, peaking at 1 before normalisation; each row is then scaled by 2 / (bandwidth in Hz), so every
    filter has unit area in Hz (constant energy per band).
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}, "
                         f"sample_rate={sample_rate}")
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)  # (F,)
    edges = mel_frequencies(n_mels + 2, f_min=f_min, f_max=f_max)  # (M + 2,)
    widths = np.diff(edges)  # (M + 1,)
    ramps = edges[:, None] - fft_freqs[None, :]  # (M + 2, F)
    lower = -ramps[:-2] / widths[:-1, None]  # (M, F) rising edge
    upper = ramps[2:] / widths[1:, None]  # (M, F) falling edge
    weights = np.maximum(0.0, np.minimum(lower, upper))  # (M, F)
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # unit area in Hz
    return torch.from_numpy(weights).float()


# --- shared STFT helpers --------------------------------------------------------------------------------

def as_batch(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 1, T) / (B, T) / (T,) -> (B, T) in `dtype`."""
    if x.ndim == 3:
        if x.shape[1] != 1:
            raise ValueError(f"expected mono audio (B, 1, T), got shape {tuple(x.shape)}")
        x = x[:, 0]
    elif x.ndim == 1:
        x = x[None]
    elif x.ndim != 2:
        raise ValueError(f"expected audio of shape (B, 1, T), (B, T) or (T,), got {tuple(x.shape)}")
    return x.to(dtype)


def _check_pair(est: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    est, ref = as_batch(est), as_batch(ref)
    if est.shape != ref.shape:
        raise ValueError(f"estimate and reference differ in shape: {tuple(est.shape)} vs {tuple(ref.shape)}")
    return est, ref


def stft_magnitude(x: torch.Tensor, window: torch.Tensor, hop: int) -> torch.Tensor:
    """(B, T) -> (B, n_fft // 2 + 1, frames) magnitude, centred frames (reflect padding when long enough)."""
    n_fft = window.shape[0]
    pad_mode = "reflect" if x.shape[-1] > n_fft // 2 else "constant"  # reflect needs T > pad
    spec = torch.stft(x, n_fft, hop_length=hop, window=window.float(), center=True, pad_mode=pad_mode,
                      return_complex=True)  # (B, F, frames)
    return spec.abs()


class _MultiWindow(nn.Module):
    """Holds one Hann window per scale as non-persistent buffers (they follow `.to(device)`, never saved)."""

    def __init__(self, window_lengths: Sequence[int]) -> None:
        super().__init__()
        if not window_lengths:
            raise ValueError("need at least one window length")
        self.window_lengths = tuple(int(w) for w in window_lengths)
        for w in self.window_lengths:
            self.register_buffer(f"window_{w}", torch.hann_window(w), persistent=False)

    def window(self, w: int) -> torch.Tensor:
        return getattr(self, f"window_{w}")


class MultiScaleMelLoss(_MultiWindow):
    """sum over scales of  log_weight * L1(log10 mel_hat, log10 mel) + mag_weight * L1(mel_hat, mel).

    Mel magnitudes (not power) from a Hann STFT with hop = window // 4, clamped at `clamp_eps` and raised
    to `pow` before the log (DAC's recipe: pow 1, windows 32..2048 with 5..320 mels). Returns a scalar.
    """

    def __init__(self, *, sample_rate: int, window_lengths: Sequence[int] = DAC_WINDOWS,
                 n_mels: Sequence[int] = DAC_N_MELS, log_weight: float = 1.0, mag_weight: float = 1.0,
                 clamp_eps: float = 1e-5, pow: float = 1.0, f_min: float = 0.0,
                 f_max: float | None = None) -> None:
        super().__init__(window_lengths)
        if len(n_mels) != len(self.window_lengths):
            raise ValueError(f"one n_mels per window: {len(n_mels)} n_mels for {len(window_lengths)} windows")
        self.sample_rate, self.n_mels = sample_rate, tuple(int(m) for m in n_mels)
        self.log_weight, self.mag_weight, self.clamp_eps, self.pow = log_weight, mag_weight, clamp_eps, pow
        for w, m in zip(self.window_lengths, self.n_mels):
            fb = mel_filterbank(sample_rate=sample_rate, n_fft=w, n_mels=m, f_min=f_min, f_max=f_max)
            self.register_buffer(f"mel_{w}", fb, persistent=False)  # (M, F)

    def mel(self, x: torch.Tensor, w: int) -> torch.Tensor:
        """(B, T) -> (B, n_mels, frames) mel magnitudes at window length `w`."""
        mag = stft_magnitude(x, self.window(w), w // 4)  # (B, F, frames)
        return torch.matmul(getattr(self, f"mel_{w}").float(), mag)  # (B, M, frames)

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=est.device.type, enabled=False):
            est, ref = _check_pair(est, ref)
            loss = est.new_zeros(())
            for w in self.window_lengths:
                m_est, m_ref = self.mel(est, w), self.mel(ref, w)
                if self.log_weight:
                    log_est = m_est.clamp(min=self.clamp_eps).pow(self.pow).log10()
                    log_ref = m_ref.clamp(min=self.clamp_eps).pow(self.pow).log10()
                    loss = loss + self.log_weight * F.l1_loss(log_est, log_ref)
                if self.mag_weight:
                    loss = loss + self.mag_weight * F.l1_loss(m_est, m_ref)
            return loss


class MultiScaleSTFTLoss(_MultiWindow):
    """sum over scales of  log_weight * L1(log10 |X_hat|, log10 |X|) + sc_weight * spectral convergence.

    Spectral convergence is ||  |X| - |X_hat|  ||_F / ||X||_F over the batch (Arik et al. 2018; pooled
    as Parallel WaveGAN does), silent references left out (`spectral_convergence`). Hann windows,
    hop = window // 4. Returns a scalar.
    """

    def __init__(self, *, window_lengths: Sequence[int] = (2048, 1024, 512), log_weight: float = 1.0,
                 sc_weight: float = 1.0, clamp_eps: float = 1e-5) -> None:
        super().__init__(window_lengths)
        self.log_weight, self.sc_weight, self.clamp_eps = log_weight, sc_weight, clamp_eps

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=est.device.type, enabled=False):
            est, ref = _check_pair(est, ref)
            loss = est.new_zeros(())
            for w in self.window_lengths:
                s_est = stft_magnitude(est, self.window(w), w // 4)  # (B, F, frames)
                s_ref = stft_magnitude(ref, self.window(w), w // 4)
                if self.log_weight:
                    loss = loss + self.log_weight * F.l1_loss(s_est.clamp(min=self.clamp_eps).log10(),
                                                              s_ref.clamp(min=self.clamp_eps).log10())
                if self.sc_weight:
                    loss = loss + self.sc_weight * spectral_convergence(s_est, s_ref, eps=self.clamp_eps)
            return loss


def spectral_convergence(s_est: torch.Tensor, s_ref: torch.Tensor, *, eps: float = 1e-5) -> torch.Tensor:
    """|| |X| - |X_hat| ||_F / || X ||_F over the batch's (B, F, frames) magnitudes, as Parallel WaveGAN
    pools it, leaving out items whose reference is silent (norm <= eps): their ratio is unbounded (a
    digitally silent crop made one 0.5 s batch's loss 1e5), and the log term already scores them. 0 when
    every reference is silent."""
    num = (s_ref - s_est).flatten(1).pow(2).sum(1)  # (B,)
    den = s_ref.flatten(1).pow(2).sum(1)  # (B,)
    keep = den > eps**2
    if not keep.any():
        return num.sum() * 0  # keeps the graph (and DDP's gradient buckets) intact
    ratio = num[keep].sum() / den[keep].sum()
    return torch.where(ratio > 0, ratio.clamp(min=1e-24).sqrt(), ratio)  # exactly 0 at 0, finite gradient


def waveform_l1(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean |est - ref| over samples and batch, in float32."""
    est, ref = _check_pair(est, ref)
    return (est - ref).abs().mean()


def feature_matching_loss(fmaps_real: Sequence, fmaps_fake: Sequence, *, relative: bool = True,
                          eps: float = 1e-8) -> torch.Tensor:
    """Mean over layers of L1(fake, real), each layer divided by mean |real| when `relative` (EnCodec).

    Takes the `features` of a `DiscriminatorOutput` (a list per sub-discriminator of layer tensors) or a
    flat list of tensors. Real features are detached: only the generator learns from this loss.
    """
    real, fake = _flatten(fmaps_real), _flatten(fmaps_fake)
    if len(real) != len(fake):
        raise ValueError(f"feature lists differ in length: {len(real)} real vs {len(fake)} fake layers")
    if not real:
        raise ValueError("no feature maps to match")
    total = torch.zeros((), device=fake[0].device)
    for r, f in zip(real, fake):
        r = r.detach().float()
        layer = (f.float() - r).abs().mean()
        if relative:
            layer = layer / (r.abs().mean() + eps)
        total = total + layer
    return total / len(real)


def _flatten(fmaps: Sequence) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for f in fmaps:
        out.extend(_flatten(f) if isinstance(f, (list, tuple)) else [f])
    return out


class AudioReconstructionLoss(nn.Module):
    """nll = (mel_weight * mel + stft_weight * stft + waveform_weight * L1) / exp(s) + s.

    Same call as `tokenizers_ae.losses.reconstruction.ReconstructionLoss`, so `AutoencoderGANTask` trains
    audio unchanged: `loss(recon, x, logvar=None) -> (nll scalar, logs of detached scalars)` with logs
    "rec/mel", "rec/stft", "rec/l1" (each unweighted) and "rec/logvar". A term whose weight is 0 (or whose
    module is None) is skipped. Defaults: DAC's mel weight 15, EnCodec's time-domain weight 0.1.
    Holds only fixed buffers (windows, filterbanks): nothing to train or checkpoint.
    """

    def __init__(self, *, mel: MultiScaleMelLoss | None, stft: MultiScaleSTFTLoss | None = None,
                 mel_weight: float = 15.0, stft_weight: float = 1.0, waveform_weight: float = 0.1) -> None:
        super().__init__()
        self.mel = mel if mel_weight > 0 else None
        self.stft = stft if stft_weight > 0 else None
        self.mel_weight, self.stft_weight, self.waveform_weight = mel_weight, stft_weight, waveform_weight
        if self.mel is None and self.stft is None and waveform_weight <= 0:
            raise ValueError("AudioReconstructionLoss needs at least one term with a positive weight")

    def forward(self, recon: torch.Tensor, x: torch.Tensor, logvar: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(device_type=recon.device.type, enabled=False):
            rec = torch.zeros((), device=recon.device)
            logs: dict[str, torch.Tensor] = {}
            for name, term, weight in (("mel", self.mel, self.mel_weight), ("stft", self.stft, self.stft_weight),
                                       ("l1", waveform_l1 if self.waveform_weight > 0 else None,
                                        self.waveform_weight)):
                if term is None:
                    continue
                value = term(recon, x)
                rec = rec + weight * value
                logs[f"rec/{name}"] = value.detach()
            if logvar is not None:
                nll = rec / torch.exp(logvar.float()) + logvar.float()
                logs["rec/logvar"] = logvar.detach()
            else:
                nll = rec
            return nll, logs
