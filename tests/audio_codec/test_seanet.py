"""Causal SEANet: shapes, configurable stage widths, causality, and chunked `step` equal to the
offline forward for every stateful layer and for the whole encoder / decoder."""

from __future__ import annotations

import pytest
import torch

from audio_codec.seanet import (
    CausalConv1d,
    CausalConvTranspose1d,
    ResidualUnit,
    SEANetDecoder,
    SEANetEncoder,
    StreamingLSTM,
    fold_weight_norm_,
)

TINY = dict(channels=1, dimension=8, ratios=(2, 3), n_filters=4)  # hop 6


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: on a shared 2-core machine thread hand-offs cost more than they save."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_chunks(module, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """`module.step` over consecutive chunks of x (B, C, T) of the given sizes (the rest last)."""
    bounds = [0]
    for s in sizes:
        bounds.append(min(bounds[-1] + s, x.shape[-1]))
    bounds.append(x.shape[-1])
    state, outs = None, []
    for a, b in zip(bounds, bounds[1:]):
        y, state = module.step(x[..., a:b], state)
        outs.append(y)
    return torch.cat(outs, dim=-1)


# --- shapes and widths --------------------------------------------------------------------------


@pytest.mark.parametrize("lstm_layers", [0, 2])
@pytest.mark.parametrize("t", [60, 61, 5])
def test_shapes(lstm_layers, t):
    enc = SEANetEncoder(**TINY, lstm_layers=lstm_layers)
    dec = SEANetDecoder(**TINY, lstm_layers=lstm_layers)
    assert enc.hop_length == dec.hop_length == 6
    z = enc(torch.randn(2, 1, t))
    assert z.shape == (2, 8, -(-t // 6))  # ceil(T / hop) frames
    assert dec(z).shape == (2, 1, z.shape[-1] * 6)


def test_stage_channels_set_every_width():
    widths = [3, 5, 7]
    enc = SEANetEncoder(**TINY, stage_channels=widths, lstm_layers=1)
    dec = SEANetDecoder(**TINY, stage_channels=widths, lstm_layers=1)
    assert enc.layers[0].conv.out_channels == 3 and enc.layers[-1].conv.in_channels == 7
    assert dec.layers[0].conv.out_channels == 7 and dec.output_conv.conv.in_channels == 3
    strided = [m.conv for m in enc.modules() if isinstance(m, CausalConv1d) and m.stride > 1]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in strided] == [(3, 5, 3), (5, 7, 2)]
    assert dec(enc(torch.randn(1, 1, 12))).shape == (1, 1, 12)
    with pytest.raises(ValueError, match="len\\(ratios\\) \\+ 1"):
        SEANetEncoder(**TINY, stage_channels=[4, 8])


def test_residual_dilations_follow_dilation_base():
    enc = SEANetEncoder(**TINY, n_residual_layers=3, dilation_base=3, lstm_layers=0)
    units = [m for m in enc.modules() if isinstance(m, ResidualUnit)]
    assert [u.block[1].conv.dilation[0] for u in units] == [1, 3, 9] * 2


def test_default_size_matches_encodec_24k():
    # EnCodec 24 kHz: 14.9M parameters in its SEANets; ours: 7,425,792 + 7,426,018 = 14,851,810.
    n = sum(p.numel() for m in (SEANetEncoder(), SEANetDecoder()) for p in m.parameters())
    assert n == 14_851_810


# --- initialisation -----------------------------------------------------------------------------


def test_convs_keep_the_signal_scale_at_init():
    torch.manual_seed(0)
    x = torch.randn(4, 64, 400)
    conv = CausalConv1d(in_channels=64, out_channels=64, kernel_size=7)
    up = CausalConvTranspose1d(in_channels=64, out_channels=64, kernel_size=8, stride=4)
    for layer in (conv, up):
        assert float(layer.conv.bias.abs().max()) == 0.0
        assert 0.8 < float(layer(x).std()) < 1.25  # PyTorch's default init gives ~0.6 plus a bias


def test_encoder_latent_depends_on_the_input_at_init():
    """Codebooks are initialised (k-means) and restarted from encoder outputs from the first step,
    so those must tell clips apart. With PyTorch's default conv init the input reaches the latent
    of the recipe's encoder at ~0.3% of its spread (measured), drowned by the biases."""
    torch.manual_seed(0)
    enc = SEANetEncoder(channels=1, dimension=64, ratios=(8, 5, 4, 2), stage_channels=[16, 32, 64, 128, 256],
                        lstm_layers=1)
    t = torch.arange(3200) / 24000
    clips = torch.stack([0.1 * torch.sin(2 * torch.pi * f * t) for f in (110.0, 220.0, 440.0, 880.0)])
    with torch.no_grad():
        z = enc(clips.unsqueeze(1))  # (4, 64, 10)
    across_clips = z.std(0).mean()  # how much the latent changes with the input
    assert across_clips > 0.5 * z.std()


# --- causality ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lstm_layers", [0, 2])
def test_encoder_is_causal(lstm_layers):
    torch.manual_seed(0)
    enc = SEANetEncoder(**TINY, lstm_layers=lstm_layers)
    x = torch.randn(2, 1, 60)
    t = 27  # frames 0..3 end at sample 24 <= t; frame 4 holds samples 24..29
    x2 = x.clone()
    x2[..., t:] += torch.randn_like(x2[..., t:])
    z, z2 = enc(x), enc(x2)
    assert torch.allclose(z[..., : t // 6], z2[..., : t // 6], atol=1e-6, rtol=0)
    assert not torch.allclose(z[..., t // 6], z2[..., t // 6], atol=1e-4)


@pytest.mark.parametrize("lstm_layers", [0, 2])
def test_decoder_is_causal(lstm_layers):
    torch.manual_seed(0)
    dec = SEANetDecoder(**TINY, lstm_layers=lstm_layers)
    z = torch.randn(2, 8, 10)
    f = 4
    z2 = z.clone()
    z2[..., f:] += torch.randn_like(z2[..., f:])
    y, y2 = dec(z), dec(z2)
    assert torch.allclose(y[..., : f * 6], y2[..., : f * 6], atol=1e-6, rtol=0)
    assert not torch.allclose(y[..., f * 6:(f + 1) * 6], y2[..., f * 6:(f + 1) * 6], atol=1e-4)


# --- streaming ----------------------------------------------------------------------------------

CHUNKS = [[1], [5, 1, 7], [6, 6, 6], [0, 13, 2, 0, 30], [59]]


@pytest.mark.parametrize("sizes", CHUNKS)
@pytest.mark.parametrize("kwargs", [dict(kernel_size=7), dict(kernel_size=3, dilation=3),
                                    dict(kernel_size=4, stride=2), dict(kernel_size=6, stride=3),
                                    dict(kernel_size=1)])
def test_conv_step_equals_forward(kwargs, sizes):
    torch.manual_seed(0)
    conv = CausalConv1d(in_channels=3, out_channels=2, **kwargs)
    x = torch.randn(2, 3, 60)  # a multiple of every stride
    assert torch.allclose(run_chunks(conv, x, sizes), conv(x), atol=1e-5)


@pytest.mark.parametrize("sizes", [[1], [2, 0, 3], [4, 4, 4], [11]])
@pytest.mark.parametrize("kernel_size, stride", [(4, 2), (6, 3), (9, 3), (2, 2)])
def test_transposed_conv_step_equals_forward(kernel_size, stride, sizes):
    torch.manual_seed(0)
    conv = CausalConvTranspose1d(in_channels=3, out_channels=2, kernel_size=kernel_size, stride=stride)
    with torch.no_grad():
        conv.conv.bias.normal_()  # the bias must be added once per sample, tails included
    x = torch.randn(2, 3, 12)
    assert torch.allclose(run_chunks(conv, x, sizes), conv(x), atol=1e-5)


@pytest.mark.parametrize("sizes", [[1], [3, 0, 5]])
def test_lstm_and_residual_step_equal_forward(sizes):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 12)
    for module in (StreamingLSTM(dim=4, num_layers=2), ResidualUnit(dim=4, dilation=3),
                   ResidualUnit(dim=4, true_skip=True)):
        assert torch.allclose(run_chunks(module, x, sizes), module(x), atol=1e-5)


@pytest.mark.parametrize("sizes", CHUNKS)
@pytest.mark.parametrize("lstm_layers", [0, 2])
def test_encoder_step_equals_forward(lstm_layers, sizes):
    torch.manual_seed(0)
    enc = SEANetEncoder(**TINY, lstm_layers=lstm_layers, n_residual_layers=2)
    x = torch.randn(2, 1, 60)
    assert torch.allclose(run_chunks(enc, x, sizes), enc(x), atol=1e-5)


def test_encoder_step_emits_each_frame_once_complete():
    enc = SEANetEncoder(**TINY, lstm_layers=1)
    state, emitted = None, []
    for _ in range(20):
        z, state = enc.step(torch.randn(1, 1, 1), state)
        emitted.append(z.shape[-1])
    assert [i + 1 for i, n in enumerate(emitted) if n] == [6, 12, 18] and max(emitted) == 1


@pytest.mark.parametrize("sizes", [[1], [2, 0, 3], [5, 5], [9]])
@pytest.mark.parametrize("lstm_layers", [0, 2])
def test_decoder_step_equals_forward(lstm_layers, sizes):
    torch.manual_seed(0)
    dec = SEANetDecoder(**TINY, lstm_layers=lstm_layers, n_residual_layers=2)
    z = torch.randn(2, 8, 10)
    assert torch.allclose(run_chunks(dec, z, sizes), dec(z), atol=1e-5)


def test_fold_weight_norm_keeps_outputs_and_the_original():
    torch.manual_seed(0)
    import copy

    enc = SEANetEncoder(**TINY)
    x = torch.randn(1, 1, 24)
    folded = fold_weight_norm_(copy.deepcopy(enc))
    assert not any(hasattr(m, "parametrizations") for m in folded.modules())
    assert torch.equal(folded(x), enc(x))  # and `enc` still works: its weight-norm classes are intact
