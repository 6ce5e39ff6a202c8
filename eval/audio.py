"""Audio reconstruction metrics: SI-SNR, multi-scale mel and log-STFT distances, bitrate, PESQ/STOI if installed.

Inputs are waveforms (B, 1, T), (B, T) or (T,), estimate first and reference second. PESQ and STOI need the
optional packages `pesq` and `pystoi` (not dependencies of aetk); without them their functions return None.
"""

from __future__ import annotations

import functools
import math
import warnings
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from audio_codec.losses import MultiScaleMelLoss, MultiScaleSTFTLoss, as_batch


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, T) / (B, T) / (T,) -> (B, T) float64."""
    return as_batch(x.detach(), torch.float64)


@torch.no_grad()
def si_snr(est: torch.Tensor, ref: torch.Tensor, *, max_db: float = 100.0) -> torch.Tensor:
    """Scale-invariant SNR in dB: both zero-meaned, target = projection of est on ref, noise = est - target.

    Returns (B,) for batched input, a scalar for (T,), computed in float64 and clamped to
    [-max_db, max_db]: a perfect estimate gives max_db and an all-zero one -max_db, not inf. A silent
    (constant) reference makes SI-SNR undefined: NaN for that item.
    """
    e, r = _flat(est), _flat(ref)
    if e.shape != r.shape:
        raise ValueError(f"estimate and reference differ in shape: {tuple(e.shape)} vs {tuple(r.shape)}")
    e = e - e.mean(dim=-1, keepdim=True)
    r = r - r.mean(dim=-1, keepdim=True)
    ref_energy = r.pow(2).sum(-1, keepdim=True)  # (B, 1)
    target = (e * r).sum(-1, keepdim=True) / ref_energy * r  # (B, T) projection of est on ref
    noise = e - target
    tiny = torch.finfo(torch.float64).tiny
    ratio = target.pow(2).sum(-1) / noise.pow(2).sum(-1).clamp(min=tiny)  # (B,); 0 for a zero estimate
    db = (10 * torch.log10(ratio)).clamp(-max_db, max_db)
    db = torch.where(ref_energy[:, 0] > 0, db, torch.full_like(db, math.nan)).float()
    return db[0] if est.ndim == 1 else db


@functools.lru_cache(maxsize=8)
def _mel_loss(sample_rate: int) -> MultiScaleMelLoss:
    return MultiScaleMelLoss(sample_rate=sample_rate).eval()


@functools.lru_cache(maxsize=1)
def _stft_loss() -> MultiScaleSTFTLoss:
    return MultiScaleSTFTLoss(window_lengths=(2048, 1024, 512, 256, 128), log_weight=1.0, sc_weight=0.0).eval()


@torch.no_grad()
def mel_distance(est: torch.Tensor, ref: torch.Tensor, *, sample_rate: int) -> float:
    """DAC's multi-scale mel distance (`MultiScaleMelLoss` defaults: windows 32..2048, log + magnitude L1)."""
    return float(_mel_loss(sample_rate).to(est.device)(est, ref))


@torch.no_grad()
def stft_distance(est: torch.Tensor, ref: torch.Tensor) -> float:
    """Multi-scale log10-magnitude STFT L1 over windows 2048..128 (no spectral convergence term)."""
    return float(_stft_loss().to(est.device)(est, ref))


def _mono_numpy(x: torch.Tensor) -> list[np.ndarray]:
    return [row.numpy() for row in _flat(x)]


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return x
    g = gcd(sr_in, sr_out)
    return resample_poly(x, sr_out // g, sr_in // g)


def pesq_score(est: torch.Tensor, ref: torch.Tensor, *, sample_rate: int) -> float | None:
    """Wide-band PESQ (at 16 kHz, resampled), mean over the clips PESQ can score; None if `pesq` is
    not installed or it scores none (clips under 0.25 s, or no speech its detector finds)."""
    try:
        from pesq import PesqError, pesq  # optional: the `speech` extra
    except ImportError:
        return None
    scores = []
    for e, r in zip(_mono_numpy(est), _mono_numpy(ref)):
        try:
            scores.append(pesq(16000, _resample(r, sample_rate, 16000), _resample(e, sample_rate, 16000), "wb"))
        except PesqError:  # BufferTooShortError, NoUtterancesError: no score, not a crash
            continue
    return float(np.mean(scores)) if scores else None


def stoi_score(est: torch.Tensor, ref: torch.Tensor, *, sample_rate: int, extended: bool = False
               ) -> float | None:
    """STOI (or extended STOI), mean over the clips STOI can score; None if `pystoi` is not installed
    or no clip is long enough (pystoi returns a 1e-5 placeholder, with a warning, for those)."""
    try:
        from pystoi import stoi  # optional: the `speech` extra
    except ImportError:
        return None
    scores = []
    for e, r in zip(_mono_numpy(est), _mono_numpy(ref)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = stoi(r, e, sample_rate, extended=extended)
        if not any("Not enough STFT frames" in str(w.message) for w in caught):
            scores.append(value)
    return float(np.mean(scores)) if scores else None


@torch.no_grad()
def audio_metrics(est: torch.Tensor, ref: torch.Tensor, *, sample_rate: int) -> dict[str, Any]:
    """si_snr (mean dB over items with a non-silent reference), mel_distance and stft_distance, plus
    pesq / stoi when their packages import."""
    out: dict[str, Any] = {"si_snr": float(si_snr(est, ref).nanmean()),
                           "mel_distance": mel_distance(est, ref, sample_rate=sample_rate),
                           "stft_distance": stft_distance(est, ref)}
    for name, fn in (("pesq", pesq_score), ("stoi", stoi_score)):
        value = fn(est, ref, sample_rate=sample_rate)
        if value is not None:
            out[name] = value
    return out


def save_audio_examples(ref: torch.Tensor, est: torch.Tensor, out_dir, *, sample_rate: int, n: int = 2) -> list:
    """Write the first `n` clips of (B, 1, T) `ref` and `est` as 16-bit WAVs `{i}-ref.wav`, `{i}-recon.wav`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(min(n, ref.shape[0])):
        for name, x in (("ref", ref[i]), ("recon", est[i])):
            path = out_dir / f"{i}-{name}.wav"
            sf.write(path, x.detach().float().clamp(-1, 1).reshape(-1).cpu().numpy(), sample_rate, subtype="PCM_16")
            written.append(path)
    return written


def save_spectrogram_grid(ref: torch.Tensor, est: torch.Tensor, path, *, sample_rate: int, n: int = 4) -> None:
    """Log-mel spectrograms of reference (top row) and reconstruction (bottom row), n clips, as a PNG."""
    import matplotlib  # matplotlib: heavy, only figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: heavy, only figures need it

    mel = _mel_loss(sample_rate)
    n = min(n, ref.shape[0])
    fig, axes = plt.subplots(2, n, figsize=(3 * n, 4.5), squeeze=False)
    for i in range(n):
        for row, (name, x) in enumerate((("reference", ref[i]), ("reconstruction", est[i]))):
            spec = mel.mel(x.detach().float().reshape(1, -1).cpu(), 1024)[0].clamp_min(1e-5).log10()  # (mels, frames)
            axes[row, i].imshow(spec.numpy(), origin="lower", aspect="auto", cmap="magma")
            axes[row, i].set_title(f"{name} {i}", fontsize=8)
            axes[row, i].axis("off")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
