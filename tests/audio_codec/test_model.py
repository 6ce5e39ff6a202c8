"""SoundStream: the trainer's contract (AEOutput, padding, last_layer), causality end to end,
quantizer dropout giving one model for every bitrate, the bitrate arithmetic and weight-norm folding."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from audio_codec import SoundStream, build_soundstream
from audio_codec.seanet import SEANetDecoder, SEANetEncoder
from tokenizers_ae.models.output import AEOutput
from tokenizers_ae.quantizers import ResidualVQ

HOP = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: on a shared 2-core machine thread hand-offs cost more than they save."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**kwargs) -> SoundStream:
    """hop 4 (ratios 2, 2), 4 levels of 16 codes over 8 channels."""
    torch.manual_seed(0)
    args = dict(n_filters=4, ratios=(2, 2), dimension=8, codebook_size=16, num_quantizers=4,
                sample_rate=16000, lstm_layers=1)
    return build_soundstream(**{**args, **kwargs})


def signal(b: int = 2, t: int = 103, seed: int = 0) -> torch.Tensor:
    """(B, 1, T) sums of three sines, peak < 1."""
    g = torch.Generator().manual_seed(seed)
    time = torch.arange(t) / 256
    freqs = torch.randint(2, 30, (b, 3, 1), generator=g).float()
    amps = torch.rand(b, 3, 1, generator=g)
    return (0.3 * amps * torch.sin(2 * torch.pi * freqs * time)).sum(1, keepdim=True)


# --- the trainer's contract ---------------------------------------------------------------------


@pytest.mark.parametrize("t", [103, 104, 3])
def test_forward_pads_and_crops(t):
    model = tiny()
    x = signal(t=t)
    out = model(x, noise=torch.randn(3))  # noise: accepted, ignored
    assert isinstance(out, AEOutput) and out.recon.shape == x.shape
    assert out.latent.shape == (2, 8, -(-t // HOP))
    assert set(out.reg) == {"vq/commitment", "vq/codebook"} and all(v.ndim == 0 for v in out.reg.values())
    assert "vq/perplexity" in out.stats
    # The crop keeps the samples of the zero-padded signal.
    model.eval()
    padded = F.pad(x, (0, -t % HOP))
    assert torch.allclose(model(x).recon, model(padded).recon[..., :t], atol=1e-6)


def test_encode_decode_round_trip_matches_forward():
    model = tiny().eval()
    x = signal()
    codes = model.encode(x, n_quantizers=3)
    assert codes.shape == (2, 3, 26) and codes.dtype == torch.long and codes.min() >= 0
    assert torch.allclose(model.decode(codes)[..., :103], model(x, n_quantizers=3).recon, atol=1e-6)
    assert model.encode(x).shape[1] == 4


def test_last_layer_gradient():
    model = tiny()
    recon = model(signal()).recon
    (grad,) = torch.autograd.grad(recon, model.last_layer, torch.randn_like(recon))
    assert grad.shape == model.last_layer.shape and grad.abs().sum() > 0
    assert model.last_layer is model.decoder.output_conv.conv.parametrizations.weight.original1


def test_folded_weight_norm_gives_identical_outputs():
    model = tiny().eval()
    folded = model.fold_weight_norm()
    x = signal()
    assert not any(hasattr(m, "parametrizations") for m in folded.modules())
    assert torch.equal(folded(x).recon, model(x).recon)
    assert torch.equal(folded.encode(x), model.encode(x))
    recon = folded(x).recon  # the folded copy's last_layer is its plain weight
    assert torch.autograd.grad(recon.sum(), folded.last_layer)[0].abs().sum() > 0


def test_parts_must_agree():
    enc = SEANetEncoder(n_filters=2, ratios=(2, 2), dimension=8, lstm_layers=0)
    with pytest.raises(ValueError, match="hop"):
        SoundStream(encoder=enc, quantizer=ResidualVQ(num_quantizers=2, codebook_size=4, dim=8),
                    decoder=SEANetDecoder(n_filters=2, ratios=(2, 3), dimension=8, lstm_layers=0), sample_rate=8000)
    with pytest.raises(ValueError, match="latent dims"):
        SoundStream(encoder=enc, quantizer=ResidualVQ(num_quantizers=2, codebook_size=4, dim=4),
                    decoder=SEANetDecoder(n_filters=2, ratios=(2, 2), dimension=8, lstm_layers=0), sample_rate=8000)


# --- causality ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lstm_layers", [0, 1])
def test_model_is_causal(lstm_layers):
    model = tiny(lstm_layers=lstm_layers).eval()
    x = signal(t=96)
    t = 50  # frames 0..11 (samples < 48) cannot see the change
    x2 = x.clone()
    x2[..., t:] += 0.5 * torch.randn_like(x2[..., t:])
    assert torch.equal(model.encode(x)[..., : t // HOP], model.encode(x2)[..., : t // HOP])
    y, y2 = model(x).recon, model(x2).recon
    assert torch.allclose(y[..., : t // HOP * HOP], y2[..., : t // HOP * HOP], atol=1e-6, rtol=0)
    # Not vacuous: the change reaches the latents of the later frames (the untrained codebook may
    # still map them to the same codes).
    z, z2 = model.encoder(x), model.encoder(x2)
    assert not torch.allclose(z[..., t // HOP:], z2[..., t // HOP:], atol=1e-4)


# --- quantizer dropout --------------------------------------------------------------------------


def test_dropout_varies_the_levels_in_training_only():
    model = tiny(quantizer_dropout=1.0)
    x = signal(t=32)
    used = {int(model(x).stats["rvq/num_quantizers"]) for _ in range(40)}
    assert used == {1, 2, 3, 4}
    model.eval()
    assert {int(model(x).stats["rvq/num_quantizers"]) for _ in range(5)} == {4}


@pytest.mark.parametrize("train", [True, False])
def test_every_n_quantizers(train):
    model = tiny().train(train)
    x = signal(t=32)
    for n in range(1, 5):
        out = model(x, n_quantizers=n)
        assert out.recon.shape == x.shape and int(out.stats["rvq/num_quantizers"]) == n
        assert model.encode(x, n).shape == (2, n, 8)
    with pytest.raises(ValueError, match="n_quantizers"):
        model(x, n_quantizers=5)


def fit_errors(*, train_levels: int | None, steps: int = 100) -> list[float]:
    """Fit a tiny codec to fixed signals with Adam; reconstruction MSE with 1..Q levels after.

    `train_levels=None` trains under quantizer dropout (1.0); an int trains with that many levels
    only (what a broken dropout that never reaches the later levels would do).
    """
    model = tiny(n_filters=8, dimension=4, lstm_layers=0, quantizer_dropout=1.0, ema_decay=0.8,
                 kmeans_init=True, dead_code_threshold=0.5)
    x = signal(b=4, t=256)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        out = model(x, n_quantizers=train_levels)
        loss = F.mse_loss(out.recon, x) + 0.25 * out.reg["vq/commitment"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return [F.mse_loss(model(x, n_quantizers=n).recon, x).item() for n in range(1, 5)]


def test_dropout_training_makes_more_levels_better():
    power = signal(b=4, t=256).pow(2).mean().item()  # 0.043
    errors = fit_errors(train_levels=None)  # about [0.0017, 0.0010, 0.0009, 0.0008]
    assert errors[0] < 0.1 * power  # it learned
    assert errors[-1] < 0.7 * errors[0]
    assert all(b <= 1.02 * a for a, b in zip(errors, errors[1:]))  # non-increasing (2% slack)
    # Control: the same fit where levels 2..4 never train fails that assertion.
    control = fit_errors(train_levels=1)
    assert control[-1] > errors[0]


# --- bitrates -----------------------------------------------------------------------------------


def test_bitrate_arithmetic_24khz():
    model = build_soundstream(n_filters=1, dimension=2, lstm_layers=0)  # EnCodec's rates, tiny nets
    assert model.hop_length == 320 and model.frame_rate == 75.0
    assert model.bits_per_frame(1) == 10.0 and model.bitrate(32) == 24000.0
    assert [model.n_quantizers_for(k) for k in (1.5, 3, 6, 12, 24)] == [2, 4, 8, 16, 32]
    assert model.n_quantizers_for(0.75) == 1 and model.n_quantizers_for(2.0) == 2  # the most that fit


@pytest.mark.parametrize("kbps", [0.5, 24.5])
def test_n_quantizers_for_out_of_range(kbps):
    model = build_soundstream(n_filters=1, dimension=2, lstm_layers=0)
    with pytest.raises(ValueError, match=r"available bitrates \(kbps\): 0.75, 1.5, .*, 24$"):
        model.n_quantizers_for(kbps)


def test_default_parameter_count():
    # EnCodec 24 kHz: 14.9M. Ours: 14,851,810 in the SEANets, plus 32 x 1024 x 128 = 4,194,304 in
    # the RVQ codebooks when they are learned parameters (EnCodec's EMA codebooks are buffers).
    model = build_soundstream()
    nets = sum(p.numel() for m in (model.encoder, model.decoder) for p in m.parameters())
    assert nets == 14_851_810
    assert sum(p.numel() for p in model.quantizer.parameters()) == 32 * 1024 * 128
    assert sum(p.numel() for p in build_soundstream(ema_decay=0.99).parameters()) == nets
