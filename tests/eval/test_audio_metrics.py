"""Audio metrics against known values: SI-SNR at a set noise level, distances, bitrate, optional PESQ/STOI."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from eval.audio import audio_metrics, mel_distance, pesq_score, si_snr, stft_distance, stoi_score

SR = 16000


def tone_mix(b: int = 3, t: int = 16000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = torch.arange(t) / SR
    f = 100 + 900 * torch.rand(b, 3, 1, generator=g)  # (B, 3, 1)
    return 0.2 * torch.sin(2 * math.pi * f * n).sum(1, keepdim=True)  # (B, 1, T)


def add_noise_at_snr(x: torch.Tensor, snr_db: float, seed: int = 1) -> torch.Tensor:
    """x + white noise scaled so that the (zero-mean) signal-to-noise energy ratio is exactly snr_db."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    noise = noise - noise.mean(-1, keepdim=True)
    xd = x.double() - x.double().mean(-1, keepdim=True)
    # Remove the noise's projection on x so that it is all "noise" for SI-SNR.
    noise = noise - (noise * xd).sum(-1, keepdim=True) / xd.pow(2).sum(-1, keepdim=True) * xd
    gain = (xd.pow(2).sum(-1, keepdim=True) / noise.pow(2).sum(-1, keepdim=True) / 10 ** (snr_db / 10)).sqrt()
    return (x.double() + gain * noise).float()


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_si_snr_matches_the_added_noise_level(snr_db):
    x = tone_mix()
    got = si_snr(add_noise_at_snr(x, snr_db), x)
    assert got.shape == (3,)
    torch.testing.assert_close(got, torch.full((3,), snr_db), atol=0.5, rtol=0)


def test_si_snr_with_plain_white_noise_is_near_the_set_snr():
    x = tone_mix(b=1, t=48000)[0, 0]  # (T,)
    noise = torch.randn(48000, generator=torch.Generator().manual_seed(3))
    noise = noise * (x.pow(2).mean() / noise.pow(2).mean() / 10 ** (12 / 10)).sqrt()
    got = si_snr(x + noise, x)
    assert got.ndim == 0 and abs(float(got) - 12) < 0.5


def test_si_snr_is_scale_and_offset_invariant_and_capped():
    x = tone_mix()
    y = add_noise_at_snr(x, 15.0)
    torch.testing.assert_close(si_snr(3.7 * y + 0.25, x), si_snr(y, x), atol=1e-3, rtol=0)
    perfect = si_snr(0.5 * x, x)
    assert torch.all(perfect > 60) and torch.all(perfect <= 100)  # float noise only, capped at 100 dB
    assert torch.all(si_snr(torch.zeros_like(x), x) == -100)  # nothing recovered: floor, not -inf/nan
    assert si_snr(-x, x).min() > 60  # sign flips are a scale too
    assert torch.isnan(si_snr(x[0, 0], torch.full_like(x[0, 0], 0.3)))  # constant reference: undefined


def test_distances_are_zero_for_identical_and_ordered_by_noise():
    x = tone_mix(b=2, t=8000)
    assert mel_distance(x, x, sample_rate=SR) == 0.0 and stft_distance(x, x) == 0.0
    near, far = add_noise_at_snr(x, 30.0), add_noise_at_snr(x, 5.0)
    assert 0 < mel_distance(near, x, sample_rate=SR) < mel_distance(far, x, sample_rate=SR)
    assert 0 < stft_distance(near, x) < stft_distance(far, x)
    assert isinstance(mel_distance(near[0, 0], x[0, 0], sample_rate=SR), float)  # (T,) input


def voiced_syllables(seconds: float = 3.0, sample_rate: int = 16000) -> torch.Tensor:
    """Speech-like audio PESQ's voice-activity detector accepts: a gliding 120 Hz harmonic voice
    gated into four syllables per second, (T,)."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * np.cumsum(120 + 20 * np.sin(np.pi * t)) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 30))
    return torch.from_numpy((0.2 * voice * np.clip(np.sin(4 * np.pi * t), 0, None) ** 2).astype(np.float32))


def test_optional_perceptual_metrics_follow_their_packages():
    x = voiced_syllables()
    noisy = {snr: add_noise_at_snr(x[None, None], snr)[0, 0] for snr in (20.0, 5.0)}
    for module, fn, key in (("pesq", pesq_score, "pesq"), ("pystoi", stoi_score, "stoi")):
        if importlib.util.find_spec(module) is None:
            assert fn(noisy[20.0], x, sample_rate=16000) is None
            assert key not in audio_metrics(noisy[20.0], x, sample_rate=16000)
            continue
        clean, mild, heavy = (fn(y, x, sample_rate=16000) for y in (x, noisy[20.0], noisy[5.0]))
        assert clean > mild > heavy  # more noise, lower score
        assert clean == pytest.approx({"pesq": 4.64, "stoi": 1.0}[key], abs=0.01)  # each scale's maximum
        assert key in audio_metrics(noisy[20.0], x, sample_rate=16000)
        assert fn(x[:1000], x[:1000], sample_rate=16000) is None  # 62 ms: too short to score, not a crash
    metrics = audio_metrics(noisy[20.0], x, sample_rate=16000)
    assert metrics["si_snr"] == pytest.approx(20.0, abs=0.5)
    assert metrics["mel_distance"] > 0 and metrics["stft_distance"] > 0
