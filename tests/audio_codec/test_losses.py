"""Audio losses: the Slaney mel filterbank, multi-scale mel / STFT losses, feature matching, the task loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audio_codec.losses import (
    AudioReconstructionLoss,
    MultiScaleMelLoss,
    MultiScaleSTFTLoss,
    feature_matching_loss,
    hz_to_mel,
    mel_filterbank,
    mel_frequencies,
    mel_to_hz,
    waveform_l1,
)

SR = 16000
SMALL = dict(window_lengths=(64, 128, 256), n_mels=(10, 20, 40))


def speechlike(b: int = 2, t: int = 4000, seed: int = 0) -> torch.Tensor:
    """(B, 1, T) sum of a few harmonics with a slow envelope: a deterministic non-trivial signal."""
    g = torch.Generator().manual_seed(seed)
    n = torch.arange(t) / SR
    f0 = 100 + 150 * torch.rand(b, 1, generator=g)  # (B, 1)
    x = sum(torch.sin(2 * math.pi * k * f0 * n) / k for k in range(1, 6))  # (B, T)
    return (0.3 * x * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * n)))[:, None]


def test_mel_scale_known_values_and_inverse():
    assert hz_to_mel(1000.0) == pytest.approx(15.0)  # linear part: 3 mels per 200 Hz up to 1 kHz
    assert hz_to_mel(200.0) == pytest.approx(3.0)
    assert hz_to_mel(6400.0) == pytest.approx(15.0 + 27.0)  # 27 mels per factor 6.4 above 1 kHz
    f = np.array([0.0, 55.0, 999.0, 1000.0, 4321.0, 11025.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, rtol=1e-9, atol=1e-9)


def test_mel_filterbank_peaks_at_centres_and_unit_area():
    sr, n_fft, n_mels = 16000, 4096, 40
    fb = mel_filterbank(sample_rate=sr, n_fft=n_fft, n_mels=n_mels).double().numpy()  # (M, F)
    assert fb.shape == (n_mels, n_fft // 2 + 1) and (fb >= 0).all()
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    centres = mel_frequencies(n_mels + 2, f_min=0, f_max=sr / 2)[1:-1]
    bin_hz = sr / n_fft
    peaks = freqs[fb.argmax(axis=1)]
    assert np.all(np.abs(peaks - centres) <= bin_hz / 2 + 1e-9)  # each filter peaks at its centre's bin
    assert np.all(np.diff(peaks) > 0)  # increasing centre frequencies
    # Slaney normalisation: each triangle has unit area in Hz (fine FFT grid: Riemann sum ~ integral).
    np.testing.assert_allclose(fb.sum(axis=1) * bin_hz, 1.0, rtol=0.03)


def test_mel_filterbank_unnormalised_triangles_partition_unity():
    sr, n_fft, n_mels = 22050, 2048, 64
    fb = mel_filterbank(sample_rate=sr, n_fft=n_fft, n_mels=n_mels, f_min=50.0, f_max=8000.0).double().numpy()
    edges = mel_frequencies(n_mels + 2, f_min=50.0, f_max=8000.0)
    peak_one = fb / (2.0 / (edges[2:] - edges[:-2]))[:, None]  # undo the area normalisation
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    inside = (freqs >= edges[1]) & (freqs <= edges[-2])  # between the first and last centre
    np.testing.assert_allclose(peak_one[:, inside].sum(axis=0), 1.0, atol=1e-9)
    outside = (freqs < edges[0]) | (freqs > edges[-1])
    assert np.all(fb[:, outside] == 0)  # nothing outside [f_min, f_max]


def test_mel_filterbank_rejects_bad_range():
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(sample_rate=16000, n_fft=512, n_mels=10, f_max=9000)


@pytest.mark.parametrize("loss_cls", ["mel", "stft"])
def test_spectral_loss_zero_for_identical_and_grows_with_noise(loss_cls):
    loss = (MultiScaleMelLoss(sample_rate=SR, **SMALL) if loss_cls == "mel"
            else MultiScaleSTFTLoss(window_lengths=(64, 128, 256)))
    x = speechlike()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    assert float(loss(x, x)) == 0.0
    values = [float(loss(x + s * noise, x)) for s in (0.001, 0.01, 0.1)]
    assert 0 < values[0] < values[1] < values[2]
    assert float(loss(x[:, 0], x[:, 0])) == 0.0  # (B, T) input too


def test_dac_default_scales_and_gradient_flows():
    loss = MultiScaleMelLoss(sample_rate=24000)  # windows 32..2048, 5..320 mels
    assert loss.window_lengths == (32, 64, 128, 256, 512, 1024, 2048)
    x = speechlike(t=6000)
    est = (x + 0.05 * torch.randn_like(x)).requires_grad_(True)
    value = loss(est, x)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0
    # One gradient step on the estimate lowers the loss.
    with torch.no_grad():
        stepped = est - 1e-4 * est.grad / est.grad.abs().max()
    assert float(loss(stepped, x)) < value.item()


def test_windows_are_non_persistent_buffers():
    mel = MultiScaleMelLoss(sample_rate=SR, **SMALL)
    names = {n for n, _ in mel.named_buffers()}
    assert {"window_64", "mel_64"} <= names
    assert mel.state_dict() == {}  # nothing saved with a checkpoint
    moved = mel.to(torch.float64)  # buffers follow .to(); forward still computes in float32
    x = speechlike()
    assert moved(x.double(), x.double()).dtype == torch.float32


def test_bf16_autocast_computes_in_float32():
    loss = MultiScaleMelLoss(sample_rate=SR, **SMALL)
    x = speechlike()
    est = x + 0.01 * torch.randn_like(x)
    ref = float(loss(est, x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(est.bfloat16(), x)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref, rel=0.05)  # only the bf16 rounding of the input differs


def test_silent_input_is_finite_with_finite_gradient():
    loss = MultiScaleSTFTLoss(window_lengths=(64, 256))
    zeros = torch.zeros(1, 1, 2000, requires_grad=True)
    value = loss(zeros, speechlike(b=1, t=2000))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(zeros.grad).all()


def test_spectral_convergence_is_relative_error():
    x = speechlike()
    loss = MultiScaleSTFTLoss(window_lengths=(128,), log_weight=0.0, sc_weight=1.0)
    # Scaling the estimate by (1 + a) scales every magnitude: spectral convergence is exactly a.
    assert float(loss(1.25 * x, x)) == pytest.approx(0.25, rel=1e-4)


def test_spectral_convergence_leaves_out_silent_references():
    # A digitally silent crop (a short file's zero padding) once made spectral convergence 1e5 for its
    # whole batch: |X - X_hat| / max(|X|, eps) with |X| = 0. It is left out; the log term scores it.
    x = speechlike(b=2)
    loss = MultiScaleSTFTLoss(window_lengths=(128,), log_weight=0.0, sc_weight=1.0)
    ref = torch.cat([x[:1], torch.zeros_like(x[:1])])
    est = (1.25 * ref + 0.01 * x[1:]).requires_grad_(True)  # noise where the reference is silent
    value = loss(est, ref)
    value.backward()
    alone = loss(est[:1].detach(), ref[:1])
    assert float(value) == pytest.approx(float(alone), rel=1e-5) and float(alone) < 1.0
    assert torch.isfinite(est.grad).all() and est.grad[0].abs().sum() > 0
    silent = loss(0.01 * x, torch.zeros_like(x))
    assert float(silent) == 0.0


def test_waveform_l1():
    x = speechlike()
    assert float(waveform_l1(x + 0.5, x)) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        waveform_l1(x, x[..., :-1])


def test_feature_matching():
    g = torch.Generator().manual_seed(0)
    real = [[torch.randn(2, 4, 10, generator=g) for _ in range(3)], [torch.randn(2, 4, 5, generator=g)]]
    assert float(feature_matching_loss(real, real)) == 0.0
    fake = [[t + 0.1 for t in layers] for layers in real]
    # Relative L1: each layer's 0.1 offset over its mean |real|, averaged over the 4 layers.
    flat = [t for layers in real for t in layers]
    want = np.mean([0.1 / t.abs().mean().item() for t in flat])
    assert float(feature_matching_loss(real, fake)) == pytest.approx(want, rel=1e-5)
    assert float(feature_matching_loss(real, fake, relative=False)) == pytest.approx(0.1, rel=1e-5)
    # The gradient reaches the fake features only.
    real_leaf = [t.clone().requires_grad_(True) for t in flat]
    fake_leaf = [t.clone().requires_grad_(True) for t in [t + 0.1 for t in flat]]
    feature_matching_loss(real_leaf, fake_leaf).backward()
    assert all(t.grad is None for t in real_leaf) and all(t.grad.abs().sum() > 0 for t in fake_leaf)
    with pytest.raises(ValueError, match="differ in length"):
        feature_matching_loss(real, real[:1])


def make_rec_loss(**kw) -> AudioReconstructionLoss:
    return AudioReconstructionLoss(mel=MultiScaleMelLoss(sample_rate=SR, **SMALL),
                                   stft=MultiScaleSTFTLoss(window_lengths=(64, 256)), **kw)


def test_reconstruction_loss_matches_its_terms_and_the_task_signature():
    rec_loss = make_rec_loss(mel_weight=15.0, stft_weight=2.0, waveform_weight=0.1)
    x = speechlike()
    recon = (x + 0.02 * torch.randn_like(x)).requires_grad_(True)
    nll, logs = rec_loss(recon, x, None)
    assert set(logs) == {"rec/mel", "rec/stft", "rec/l1"}
    assert all(v.ndim == 0 and not v.requires_grad for v in logs.values())
    assert nll.item() == pytest.approx(float(15 * logs["rec/mel"] + 2 * logs["rec/stft"] + 0.1 * logs["rec/l1"]),
                                       rel=1e-5)
    assert float(logs["rec/l1"]) == pytest.approx(waveform_l1(recon, x).item(), rel=1e-6)
    # Learned log-variance, as ReconstructionLoss: nll = rec / exp(s) + s, and s gets a gradient.
    s = torch.tensor(0.5, requires_grad=True)
    nll_s, logs_s = rec_loss(recon, x, s)
    assert nll_s.item() == pytest.approx(nll.item() / math.exp(0.5) + 0.5, rel=1e-5)
    assert "rec/logvar" in logs_s
    nll_s.backward()
    assert s.grad is not None and recon.grad.abs().sum() > 0
    assert float(rec_loss(x, x)[0]) == 0.0


def test_reconstruction_loss_skips_zero_weight_terms():
    _, logs = make_rec_loss(stft_weight=0.0, waveform_weight=0.0)(speechlike(), speechlike(seed=1))
    assert set(logs) == {"rec/mel"}
    with pytest.raises(ValueError, match="at least one term"):
        AudioReconstructionLoss(mel=None, stft=None, waveform_weight=0.0)


def test_reconstruction_loss_in_the_gan_task():
    """AutoencoderGANTask (before the GAN starts) trains an audio model through the new loss unchanged."""
    from torch import nn

    from tokenizers_ae.models.output import AEOutput
    from train.tasks import AutoencoderGANTask, StepContext

    class TinyAudioAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = nn.Conv1d(1, 4, 4, 2, 1), nn.ConvTranspose1d(4, 1, 4, 2, 1)

        @property
        def last_layer(self):
            return self.dec.weight

        def forward(self, x, noise=None):
            z = torch.tanh(self.enc(x))  # (B, 4, T / 2)
            return AEOutput(recon=self.dec(z), latent=z)

    task = AutoencoderGANTask(autoencoder=TinyAudioAE(), rec_loss=make_rec_loss(), discriminator=None,
                              reg_weights={}, lr=1e-2)
    models = {"generator": task.generator}
    batch = {"x": speechlike(b=2, t=1024)}
    ctx = StepContext(step=0, noise=lambda shape: torch.randn(shape))
    out = task.forward(models, batch, ctx)
    loss, logs = task.loss("generator", models, out, batch, ctx)
    loss.backward()
    assert {"rec/mel", "rec/stft", "rec/l1", "rec/nll"} <= set(logs)
    assert task.generator.autoencoder.dec.weight.grad.abs().sum() > 0
