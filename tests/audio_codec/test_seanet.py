"""Causal SEANet: shapes, configurable stage widths, causality, and chunked `step` equal to the
offline forward for every stateful layer and for the whole encoder / decoder."""

from __future__ import annotations

import pytest
import torch

from audio_codec.seanet import (
    ELU,
    CausalConv1d,
    CausalConvTranspose1d,
    ResidualUnit,
    SEANetDecoder,
    SEANetEncoder,
    StreamingLSTM,
    conv1d_as_matmul,
    conv_transpose1d_as_matmul,
    fold_weight_norm_,
    lstm_unrolled,
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


@pytest.mark.parametrize("inference", [False, True])  # library LSTM / unrolled small chunks
@pytest.mark.parametrize("sizes", [[1], [3, 0, 5]])
def test_lstm_and_residual_step_equal_forward(sizes, inference):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 12)
    for module in (StreamingLSTM(dim=4, num_layers=2), ResidualUnit(dim=4, dilation=3),
                   ResidualUnit(dim=4, true_skip=True)):
        with torch.inference_mode(inference):
            assert torch.allclose(run_chunks(module, x, sizes), module(x), atol=1e-5)


def test_elu_matches_torch_values_and_gradients():
    x = torch.cat([torch.linspace(-30, 30, 2001), torch.tensor([0.0, -1e-6, 1e-6, 88.0, -104.0])])
    x = x.double().requires_grad_()  # double: gradcheck-level comparison
    ours, ref = ELU()(x), torch.nn.functional.elu(x)
    assert torch.allclose(ours, ref, atol=1e-7)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    assert torch.allclose(g_ours, g_ref, atol=1e-7)
    with torch.no_grad():
        assert torch.allclose(ELU()(x.float()), torch.nn.functional.elu(x.float()), atol=1e-6)


# The kernels `step` uses on small chunks compute exactly what the library kernels compute.


@pytest.mark.parametrize("kernel_size, stride, dilation", [(7, 1, 1), (3, 1, 9), (16, 8, 1), (1, 1, 1), (4, 2, 2)])
@pytest.mark.parametrize("length", [19, 40])
def test_conv1d_as_matmul_equals_conv1d(kernel_size, stride, dilation, length):
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 5, length), torch.randn(6, 5, kernel_size), torch.randn(6)
    expected = torch.nn.functional.conv1d(x, w, b, stride, dilation=dilation)
    assert torch.allclose(conv1d_as_matmul(x, w, b, stride, dilation), expected, atol=1e-5)


@pytest.mark.parametrize("kernel_size, stride", [(16, 8), (4, 2), (9, 3), (2, 2)])
@pytest.mark.parametrize("frames", [1, 7])
def test_conv_transpose1d_as_matmul_equals_conv_transpose1d(kernel_size, stride, frames):
    torch.manual_seed(0)
    x, w = torch.randn(2, 5, frames), torch.randn(5, 3, kernel_size)
    expected = torch.nn.functional.conv_transpose1d(x, w, None, stride)
    assert torch.allclose(conv_transpose1d_as_matmul(x, w, stride), expected, atol=1e-5)


def test_lstm_unrolled_equals_lstm_with_state():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(6, 6, 2, batch_first=True)
    x, state = torch.randn(3, 5, 6), (torch.randn(2, 3, 6), torch.randn(2, 3, 6))
    with torch.no_grad():
        y, (h, c) = lstm(x, state)
        y2, (h2, c2) = lstm_unrolled(lstm, x, state)
    for a, b in ((y, y2), (h, h2), (c, c2)):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("built_in_inference_mode", [False, True])  # weights without version counters
@pytest.mark.parametrize("fold", [False, True])  # folded: the weights are packed for oneDNN
@pytest.mark.parametrize("chunk", [1, 6, 30])
def test_streaming_paths_agree_on_a_wide_model(chunk, fold, built_in_inference_mode):
    """Channels wider than a chunk's frames send the low-rate convs, the transposed convs and the
    LSTM down the small-input kernels; chunked inference still equals the whole signal."""
    torch.manual_seed(0)
    kwargs = dict(channels=1, dimension=16, ratios=(4, 4), stage_channels=(8, 32, 96), lstm_layers=1)
    with torch.inference_mode(built_in_inference_mode):
        enc, dec = SEANetEncoder(**kwargs).eval(), SEANetDecoder(**kwargs).eval()
    if fold:
        enc, dec = fold_weight_norm_(enc), fold_weight_norm_(dec)
    x = torch.randn(1, 1, 16 * 30) * 0.3
    with torch.inference_mode():
        z = enc(x)
        assert torch.allclose(run_chunks(enc, x, [chunk * 16] * 30), z, atol=1e-5)
        assert torch.allclose(run_chunks(dec, z, [chunk] * 30), dec(z), atol=1e-5)


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


@pytest.mark.parametrize("packing", [True, False])  # False: a torch build without the oneDNN ops
@pytest.mark.parametrize("autocast", [False, True])
def test_packed_linear_equals_linear_and_follows_weight_changes(autocast, packing, monkeypatch):
    from audio_codec import seanet
    from audio_codec.seanet import fast_linear

    if not packing:
        monkeypatch.setattr(seanet, "_onednn_packing_available", lambda: False)
    torch.manual_seed(0)
    owner = torch.nn.Linear(16, 8)
    x = torch.randn(3, 16)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        y = fast_linear(owner, "w", x, owner.weight, owner.bias)
        ref = torch.nn.functional.linear(x, owner.weight, owner.bias)
        assert y.dtype == ref.dtype
        assert torch.allclose(y.float(), ref.float(), atol=1e-5)
    with torch.no_grad():
        owner.weight.mul_(-1)  # an optimizer step or load_state_dict: the packed copy is stale
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        y = fast_linear(owner, "w", x, owner.weight, owner.bias)
        assert torch.allclose(y.float(), torch.nn.functional.linear(x, owner.weight, owner.bias).float(), atol=1e-5)
