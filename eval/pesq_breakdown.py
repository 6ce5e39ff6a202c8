"""Where a speech codec loses PESQ: which band, and magnitude or phase.

PESQ gives one number. To know what to train for, each decoded clip is also scored with part of it
replaced by the reference:

- `low band only`: the estimate below `cutoff_hz`, the reference above (zero-phase Butterworth split);
- `high band only`: the reference below, the estimate above;
- `magnitude only`: the estimate's STFT magnitude with the reference's phase;
- `phase only`: the reference's magnitude with the estimate's phase.

A view that scores near the reference's own ceiling holds none of the loss; one that scores near the
estimate as decoded holds all of it. The controls pass the reference itself through the same split and
the same STFT round trip, so the views' own cost is known. `quiet_bins_db` is how much louder (dB, mean
of 20 log10 ratios) the estimate is than the reference in the time-frequency bins below `cutoff_hz`
where the reference is quiet (under its median): noise filling the valleys between harmonics and words,
which PESQ's loudness model punishes (`loud_bins_db`: the same over the other half).

Inputs are mono clips as 1-D float arrays at `sample_rate`; PESQ is wide-band (`eval.audio.pesq_score`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.signal import butter, istft, sosfiltfilt, stft

from eval.audio import pesq_score

VIEWS = ("as decoded", "low band only", "high band only", "magnitude only", "phase only")
CONTROLS = ("reference, split and rejoined", "reference, STFT round trip")


def split_bands(x: np.ndarray, sample_rate: int, cutoff_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """(T,) -> (below, above) `cutoff_hz`, 8th-order Butterworth run forwards and back (no phase shift)."""
    lo = sosfiltfilt(butter(8, cutoff_hz, "low", fs=sample_rate, output="sos"), x)
    hi = sosfiltfilt(butter(8, cutoff_hz, "high", fs=sample_rate, output="sos"), x)
    return lo, hi


def _stft(x: np.ndarray, sample_rate: int, n_fft: int) -> np.ndarray:
    return stft(x, fs=sample_rate, nperseg=n_fft, noverlap=3 * n_fft // 4)[2]  # (F, frames), Hann


def _istft(z: np.ndarray, sample_rate: int, n_fft: int, length: int) -> np.ndarray:
    y = istft(z, fs=sample_rate, nperseg=n_fft, noverlap=3 * n_fft // 4)[1]
    return np.pad(y, (0, max(0, length - len(y))))[:length]


def views(est: np.ndarray, ref: np.ndarray, sample_rate: int, *, cutoff_hz: float = 4000.0,
          n_fft: int = 512) -> dict[str, np.ndarray]:
    """The estimate (T,) as decoded and with part of it replaced by the reference (T,), keyed by VIEWS."""
    e_lo, e_hi = split_bands(est, sample_rate, cutoff_hz)
    r_lo, r_hi = split_bands(ref, sample_rate, cutoff_hz)
    e, r = _stft(est, sample_rate, n_fft), _stft(ref, sample_rate, n_fft)
    t = len(ref)
    return {"as decoded": est, "low band only": e_lo + r_hi, "high band only": r_lo + e_hi,
            "magnitude only": _istft(np.abs(e) * np.exp(1j * np.angle(r)), sample_rate, n_fft, t),
            "phase only": _istft(np.abs(r) * np.exp(1j * np.angle(e)), sample_rate, n_fft, t)}


def controls(ref: np.ndarray, sample_rate: int, *, cutoff_hz: float = 4000.0, n_fft: int = 512
             ) -> dict[str, np.ndarray]:
    """The reference through the views' own machinery: what a perfect estimate would score."""
    lo, hi = split_bands(ref, sample_rate, cutoff_hz)
    return {"reference, split and rejoined": lo + hi,
            "reference, STFT round trip": _istft(_stft(ref, sample_rate, n_fft), sample_rate, n_fft, len(ref))}


def bin_levels_db(est: np.ndarray, ref: np.ndarray, sample_rate: int, *, cutoff_hz: float = 4000.0,
                  n_fft: int = 512, floor: float = 1e-5) -> dict[str, float]:
    """Mean 20 log10(|E| / |R|) (dB) over STFT bins below `cutoff_hz`: where |R| is under its median
    (`quiet_bins_db`) and elsewhere (`loud_bins_db`). Positive: the estimate is louder there."""
    band = np.fft.rfftfreq(n_fft, 1 / sample_rate) < cutoff_hz
    e = np.abs(_stft(est, sample_rate, n_fft))[band]
    r = np.abs(_stft(ref, sample_rate, n_fft))[band]
    ratio = 20 * (np.log10(e + floor) - np.log10(r + floor))
    quiet = r < np.median(r)
    return {"quiet_bins_db": float(ratio[quiet].mean()), "loud_bins_db": float(ratio[~quiet].mean())}


def _pesq(est: np.ndarray, ref: np.ndarray, sample_rate: int) -> float:
    score = pesq_score(torch.from_numpy(np.ascontiguousarray(est, dtype=np.float64)),
                       torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float64)), sample_rate=sample_rate)
    return float("nan") if score is None else score


def breakdown(estimates: list[np.ndarray], refs: list[np.ndarray], sample_rate: int, *,
              cutoff_hz: float = 4000.0, n_fft: int = 512) -> dict:
    """Mean PESQ of each view over clips (pairs of (T_i,) arrays), the two bin levels, and the clips
    PESQ could score. NaN-safe: a clip PESQ cannot score (too short, no speech found) is left out."""
    rows = []
    for est, ref in zip(estimates, refs):
        est, ref = np.asarray(est, np.float64), np.asarray(ref, np.float64)
        row = {k: _pesq(v, ref, sample_rate) for k, v in views(est, ref, sample_rate, cutoff_hz=cutoff_hz,
                                                                 n_fft=n_fft).items()}
        rows.append({**row, **bin_levels_db(est, ref, sample_rate, cutoff_hz=cutoff_hz, n_fft=n_fft)})
    keys = list(rows[0])
    out = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    out["clips_scored"] = int(sum(not np.isnan(r["as decoded"]) for r in rows))
    return out


def control_scores(refs: list[np.ndarray], sample_rate: int, *, cutoff_hz: float = 4000.0, n_fft: int = 512
                   ) -> dict[str, float]:
    """Mean PESQ of the reference through each control (the views' ceiling)."""
    scores = [{k: _pesq(v, ref, sample_rate) for k, v in controls(np.asarray(ref, np.float64), sample_rate,
                                                                   cutoff_hz=cutoff_hz, n_fft=n_fft).items()}
              for ref in refs]
    return {k: float(np.nanmean([s[k] for s in scores])) for k in CONTROLS}


def plot(result: dict, path) -> None:
    """Horizontal bars: PESQ of each view for each estimate (codec, Opus), the controls as a line."""
    import matplotlib  # matplotlib: heavy, only figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: heavy, only figures need it

    names = [k for k in result["estimates"]]
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=120)
    h = 0.8 / len(names)
    for j, name in enumerate(names):
        vals = [result["estimates"][name][v] for v in VIEWS]
        ys = np.arange(len(VIEWS)) + j * h
        ax.barh(ys, vals, height=h, label=name)
        for y, v in zip(ys, vals):
            ax.text(v + 0.03, y, f"{v:.2f}", va="center", fontsize=7)
    ceiling = min(result["controls"].values())
    ax.axvline(ceiling, color="grey", ls="--", lw=1)
    ax.text(ceiling, -0.55, f"reference through the views: {ceiling:.2f} ", fontsize=7, color="grey", ha="right")
    ax.set_yticks(np.arange(len(VIEWS)) + h * (len(names) - 1) / 2, list(VIEWS))
    ax.invert_yaxis()
    ax.set_xlim(1, 4.7)
    ax.set_xlabel(f"wide-band PESQ (mean of {result['clips']} clips); split at {result['cutoff_hz'] / 1000:g} kHz")
    ax.set_title(result["title"], fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
