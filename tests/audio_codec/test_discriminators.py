"""Audio discriminators: output structure and lengths, weight norm, gradients, combination, feature matching."""

from __future__ import annotations

import pytest
import torch

from audio_codec.discriminators import (
    CombinedDiscriminator,
    DiscriminatorOutput,
    MultiPeriodDiscriminator,
    MultiScaleSTFTDiscriminator,
)
from audio_codec.losses import feature_matching_loss

N_FFTS = (128, 256, 64)
CHANNELS = (4, 8, 8, 8, 8)


def tiny_msstft() -> MultiScaleSTFTDiscriminator:
    return MultiScaleSTFTDiscriminator(n_ffts=N_FFTS, filters=4)


def tiny_mpd() -> MultiPeriodDiscriminator:
    return MultiPeriodDiscriminator(periods=(2, 3, 5, 7, 11), channels=CHANNELS)


@pytest.mark.parametrize("t", [2000, 3001])
def test_msstft_shapes(t):
    torch.manual_seed(0)
    out = tiny_msstft()(torch.randn(2, 1, t))
    assert isinstance(out, DiscriminatorOutput)
    assert len(out.logits) == len(out.features) == 3
    for n_fft, logits, feats in zip(N_FFTS, out.logits, out.features):
        frames = 1 + (t - n_fft) // (n_fft // 4)  # no centring, hop n_fft // 4
        bins = n_fft // 2 + 1
        assert len(feats) == 5  # first conv, three dilated strided convs, the 3x3 conv
        assert all(f.shape[:3] == (2, 4, frames) for f in feats)  # filters channels, time kept
        # Frequency halves (rounding up) at each of the three stride-2 convs.
        widths = [bins, (bins + 1) // 2]
        widths += [(widths[-1] + 1) // 2, ((widths[-1] + 1) // 2 + 1) // 2]
        assert [f.shape[3] for f in feats] == widths + [widths[-1]]
        assert logits.shape == (2, 1, frames, widths[-1])


@pytest.mark.parametrize("t", [2000, 3001])
def test_mpd_shapes(t):
    out = tiny_mpd()(torch.randn(2, 1, t))
    assert len(out.logits) == len(out.features) == 5
    for p, logits, feats in zip((2, 3, 5, 7, 11), out.logits, out.features):
        assert len(feats) == len(CHANNELS)
        rows = -(-t // p)  # padded up to a multiple of the period
        for f, c in zip(feats[:4], CHANNELS):
            rows = (rows - 1) // 3 + 1  # kernel 5, stride 3, padding 2
            assert f.shape == (2, c, rows, p)
        assert feats[4].shape == (2, CHANNELS[4], rows, p) and logits.shape == (2, 1, rows, p)


def test_weight_norm_and_gradients():
    d = CombinedDiscriminator([tiny_msstft(), tiny_mpd()])
    names = [n for n, _ in d.named_parameters()]
    conv_weights = [n for n in names if n.endswith(".weight") or "parametrizations.weight" in n]
    assert conv_weights and all("parametrizations.weight" in n for n in conv_weights)  # every conv normed
    x = torch.randn(1, 1, 1500, requires_grad=True)
    out = d(x)
    sum(lg.mean() for lg in out.logits).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.parameters())


def test_combined_concatenates_in_order():
    torch.manual_seed(0)
    a, b = tiny_msstft(), tiny_mpd()
    x = torch.randn(2, 1, 1024)
    out, out_a, out_b = CombinedDiscriminator([a, b])(x), a(x), b(x)
    assert len(out.logits) == 8 and len(out.features) == 8
    for got, want in zip(out.logits, out_a.logits + out_b.logits):
        torch.testing.assert_close(got, want)


def test_batch_items_are_independent_and_chunk_splits():
    """D(cat([real, fake])) split in two equals D(real) and D(fake): no batch statistics, as the task assumes."""
    torch.manual_seed(0)
    d = CombinedDiscriminator([tiny_msstft(), tiny_mpd()])
    real, fake = torch.randn(2, 1, 1200), torch.randn(2, 1, 1200)
    both_real, both_fake = d(torch.cat([real, fake])).chunk(2)
    alone_real = d(real)
    for got, want in zip(both_real.logits, alone_real.logits):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert feature_matching_loss(alone_real.features, both_real.features) < 1e-4
    assert feature_matching_loss(both_real.features, both_fake.features) > 0.01


def test_rejects_non_mono_input():
    with pytest.raises(ValueError, match=r"\(B, 1, T\)"):
        tiny_mpd()(torch.randn(2, 2, 1000))


def test_short_input_still_gives_one_frame():
    out = tiny_msstft()(torch.randn(1, 1, 100))  # shorter than the 256-point FFT
    assert all(lg.shape[2] >= 1 for lg in out.logits)


def test_default_sizes_match_encodec_and_hifigan():
    ms = MultiScaleSTFTDiscriminator()
    assert [d.n_fft for d in ms.discriminators] == [1024, 2048, 512]
    assert [d.hop_length for d in ms.discriminators] == [256, 512, 128]
    assert ms.discriminators[0].convs[0].out_channels == 32
    mpd = MultiPeriodDiscriminator()
    assert [d.period for d in mpd.discriminators] == [2, 3, 5, 7, 11]
    assert [c.out_channels for c in mpd.discriminators[0].convs] == [32, 128, 512, 1024, 1024]
