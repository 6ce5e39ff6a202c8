"""The audio codec through the one trainer: a tiny SoundStream trains end to end (reconstruction,
multi-discriminator GAN, feature matching, RVQ dropout), exports, reloads; and the task's single
back-propagation gives the same generator gradient as differentiating the full loss directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_codec.model import SoundStream
from tokenizers_ae.pretrained import RAW_WEIGHTS, read_safetensors
from train.families.soundstream import build_model, build_task
from train.recipe import config_from_dict, load_config

SR = 8000
TINY_CODEC = ["model.sample_rate=8000", "model.ratios=[4,4]", "model.stage_channels=[4,8,8]",
              "model.dimension=8", "model.lstm_layers=1", "model.quantizer.levels=4",
              "model.quantizer.codebook_size=16",
              "loss.msstft_filters=4", "loss.mpd_channels=[4,8]", "loss.discriminators=[msstft,mpd]"]


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    for i in range(6):
        t = np.arange(SR // 2) / SR
        x = 0.3 * np.sin(2 * np.pi * (200 + 60 * i) * t) + 0.02 * rng.standard_normal(t.size)
        sf.write(root / f"clip{i}.wav", x.astype(np.float32), SR)
    (root / "broken.wav").write_bytes(b"RIFF not really a wav")
    return root


def test_tiny_codec_trains_end_to_end_with_gan_and_feature_matching(audio_dir, tmp_path):
    from train.run import train

    out = tmp_path / "run"
    cfg = load_config("configs/codec-tiny.yaml", [
        f"output_dir={out}", f"data.path={audio_dir}", f"data.val_path={audio_dir}", "data.segment_seconds=0.1",
        "data.val_size=2", *TINY_CODEC, "model.quantizer.kmeans_init=false", "loss.disc_start=2", "train.batch_size=2",
        "train.max_steps=4", "train.eval_every=4", "train.checkpoint_every=4", "train.log_every=1",
        "train.mixed_precision=no", "train.progress=false",
        # every loss term and the weight EMA, which the quick-start recipe leaves off at its budget
        "loss.stft_weight=1.0", "train.ema_decay=0.99"])
    train(cfg).close()
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "generator/loss" in r]
    assert len(steps) == 4 and all(np.isfinite(r["generator/loss"]) for r in steps)
    assert "gan/feature_matching" not in steps[0] and "disc/loss" not in steps[0]  # before disc_start
    assert steps[-1]["gan/feature_matching"] > 0 and "disc/acc_real" in steps[-1]
    assert {"rec/mel", "rec/stft", "rec/l1", "reg/vq/commitment"} <= set(steps[-1])
    ev = next(r for r in logs if "eval/si_snr" in r)
    # 2 and 4 levels x 4 bits x 500 Hz
    assert {"eval/si_snr@4kbps", "eval/mel_distance@4kbps", "eval/si_snr@8kbps"} <= set(ev)
    assert (out / "samples" / "spectrogram-0000004.png").is_file()
    card = (out / "model" / "README.md").read_text()  # the card says what the codec trained on, in its units
    assert f"- data: `{audio_dir}`, 0.1 s crops" in card
    assert f"| 4kbps | {ev['eval/si_snr@4kbps']:.4g} |" in card and f"| 8kbps | {ev['eval/si_snr@8kbps']:.4g} |" in card
    assert sf.info(str(out / "samples" / "audio-0000004" / "0-recon.wav")).samplerate == SR
    model = SoundStream.from_pretrained(out / "model")
    x = torch.from_numpy(sf.read(str(audio_dir / "clip0.wav"), dtype="float32")[0])[None, None]
    with torch.no_grad():
        codes = model.encode(x, n_quantizers=4)
        y = model.decode(codes)
    assert codes.shape == (1, 4, x.shape[-1] // 16) and 0 <= int(codes.min()) and int(codes.max()) < 16
    assert y.shape[-1] == x.shape[-1] and torch.isfinite(y).all()
    # The checkpoint's EMA weights and the export are the same model; `raw` is the checkpoint's live model.
    torch.testing.assert_close(SoundStream.from_pretrained(out).decode(codes), y)
    raw, ema = SoundStream.from_pretrained(out, weights="raw").state_dict(), model.state_dict()
    live = read_safetensors(out / "checkpoints" / "step-4" / RAW_WEIGHTS)  # the generator phase: autoencoder.*
    assert all(torch.equal(raw[k], live["autoencoder." + k]) for k in raw)
    assert any(not torch.equal(raw[k], ema[k]) for k in ema)  # 4 steps at decay 0.99 moved them apart


def test_generator_gradient_with_feature_matching_equals_the_direct_gradient():
    """The task back-propagates the codec once with d(loss)/d(recon) assembled from the mel/STFT loss,
    the adversarial loss of two discriminators and feature matching; that must equal autograd's
    gradient of nll + w_g * g + w_fm * fm through everything."""
    from audio_codec.losses import feature_matching_loss
    from tokenizers_ae.losses.adversarial import g_loss

    cfg = config_from_dict({"model": {"kind": "soundstream"}}, [
        *TINY_CODEC, "model.quantizer.ema_decay=null", "model.quantizer.dropout=0.0", "loss.disc_start=0",
        "loss.adaptive_weight=false", "loss.disc_weight=0.7", "loss.feature_weight=2.0"])
    torch.manual_seed(0)
    task = build_task(cfg, build_model(cfg))
    gen, disc = task.generator, task.discriminator
    x = torch.randn(2, 1, 800) * 0.3
    models = {"generator": gen, "discriminator": disc}

    from train.tasks import StepContext

    ctx = StepContext(step=5, noise=lambda shape: torch.zeros(shape))
    out = task.forward(models, {"x": x}, ctx)
    surrogate, logs = task.loss("generator", models, out, {"x": x}, ctx)
    params = [p for p in gen.parameters() if p.requires_grad]
    ours = torch.autograd.grad(surrogate, params, allow_unused=True)

    out2 = gen(x)
    nll, _ = task.rec_loss(out2.recon, x, None)
    fake = disc(out2.recon)
    g = torch.stack([g_loss("hinge", lg) for lg in fake.logits]).mean()
    with torch.no_grad():
        real = disc(x)
    fm = feature_matching_loss(real.features, fake.features)
    reg = sum(task.reg_weights[k] * v for k, v in out2.reg.items())
    direct = torch.autograd.grad(nll + 0.7 * g + 2.0 * fm + reg, params, allow_unused=True)
    assert logs["gan/feature_matching"] == pytest.approx(float(fm.detach()), rel=1e-5)
    for a, b in zip(ours, direct):
        if a is None or b is None:
            assert a is None and b is None
            continue
        assert (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-9  # float rounding, relative to the largest element


def test_init_from_starts_a_new_phase_from_a_trained_codec(tmp_path):
    """model.init_from: a fine-tune (e.g. a GAN phase after a waveform phase) starts from the codec's
    weights and codebooks; another architecture or a path that is no codec is a config error."""
    from train.config import ConfigError

    cfg = config_from_dict({"model": {"kind": "soundstream"}}, [*TINY_CODEC, "model.quantizer.kmeans_init=true"])
    torch.manual_seed(0)
    source = build_model(cfg)
    source.train()(torch.randn(2, 1, 800) * 0.3)  # k-means: codebooks that differ from a fresh model's
    source.eval().save_pretrained(tmp_path / "phase1")
    torch.manual_seed(1)
    tuned = build_model(config_from_dict({"model": {"kind": "soundstream"}}, [
        *TINY_CODEC, "model.quantizer.kmeans_init=true", f"model.init_from={tmp_path / 'phase1'}"]))
    expected = source.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in tuned.state_dict().items())
    assert bool(tuned.quantizer.layers[0].initialized)  # no second k-means on the first batch
    with pytest.raises(ConfigError, match="another architecture"):
        build_model(config_from_dict({"model": {"kind": "soundstream"}},
                                     [*TINY_CODEC, "model.dimension=16", f"model.init_from={tmp_path / 'phase1'}"]))
    with pytest.raises(ConfigError, match="not a run directory"):
        build_model(config_from_dict({"model": {"kind": "soundstream"}}, [*TINY_CODEC, f"model.init_from={tmp_path}"]))
