"""AR prior over token shards: the sequence layout round-trips, sampling is seeded and respects
top-k and the per-position code ranges, and it trains through the one trainer on VQ and codec tokens,
exports with save_pretrained and samples to PNG / WAV files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from aetk.cli import main
from latent_diffusion.ar_prior import ARPrior, LayoutMask, TokenLayout, build_lm, sample

LAYOUTS = {
    "grid": TokenLayout(shape=(3, 4), codebook_size=5),
    "rvq-grid": TokenLayout(shape=(2, 3, 2), codebook_size=5, levels=2),
    "codec+class": TokenLayout(shape=(3, 4), codebook_size=5, levels=3, num_classes=2, modality="audio"),
}


def tiny_prior(layout: TokenLayout, arch: str = "gpt2", seed: int = 0) -> ARPrior:
    torch.manual_seed(seed)
    lm = build_lm(arch=arch, vocab_size=layout.vocab_size, n_positions=layout.seq_len, width=32, layers=2, heads=2,
                  bos_token_id=layout.bos)
    return ARPrior(lm, layout).eval()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread hand-offs cost more than they save
    yield
    torch.set_num_threads(threads)


# --- layout ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_round_trip(name):
    layout = LAYOUTS[name]
    tokens = torch.randint(0, layout.codebook_size, (4, *layout.shape))
    labels = torch.tensor([0, 1, 1, 0]) if layout.num_classes else None
    seq = layout.to_sequence(tokens, labels)
    assert seq.shape == (4, layout.seq_len) and (seq[:, 0] == layout.bos).all()
    if layout.num_classes:
        assert torch.equal(seq[:, 1], layout.bos + 1 + labels)
    assert torch.equal(layout.from_sequence(seq), tokens)
    assert torch.equal(TokenLayout.from_dict(json.loads(json.dumps(layout.to_dict()))).from_sequence(seq), tokens)


def test_residual_levels_interleave_time_major_with_per_level_offsets():
    layout = TokenLayout(shape=(2, 3), codebook_size=10, levels=2, modality="audio")
    codes = torch.tensor([[[1, 2, 3], [4, 5, 6]]])  # (1, n_q=2, T=3)
    assert layout.flatten(codes).tolist() == [[1, 14, 2, 15, 3, 16]]  # t0q0 t0q1 t1q0 ...
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        layout.flatten(torch.tensor([[[1, 2, 3], [4, -1, 6]]]))  # an unused level (-1)
    with pytest.raises(ValueError, match="labels are required"):
        LAYOUTS["codec+class"].prefix(2)


def test_layout_from_manifests():
    grid = TokenLayout.from_manifest({"format": "aetk-tokens", "token_shape": [8, 8], "codebook_size": 64})
    assert (grid.levels, grid.modality, grid.vocab_size) == (1, "image", 65)
    audio = TokenLayout.from_manifest({"format": "aetk-tokens", "token_shape": [2, 50], "codebook_size": 16,
                                       "n_quantizers": 2, "sample_rate": 8000, "num_classes": 3})
    assert (audio.levels, audio.modality, audio.vocab_size, audio.prefix_len) == (2, "audio", 36, 2)
    assert TokenLayout.from_manifest({"format": "aetk-tokens", "token_shape": [2, 50], "codebook_size": 16,
                                      "n_quantizers": 2, "num_classes": 3}, class_conditional=False).num_classes == 0


@pytest.mark.parametrize("override, key", [("model.heads=3", "model.heads"), ("model.top_p=0", "model.top_p"),
                                           ("model.arch=rnn", "model.arch"), ("model.depth=2", "depth"),
                                           ("model.ar.width=32", "model.ar was renamed")])
def test_ar_config_is_validated_at_load(override, key):
    from train.config import ConfigError
    from train.recipe import config_from_dict

    with pytest.raises(ConfigError, match=key):
        config_from_dict({}, ["model.kind=ar_prior", "model.width=32", override])


# --- sampling -------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sampling_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone(arch):
    prior = tiny_prior(LAYOUTS["codec+class"], arch)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = sample(prior, n=3, seed=1, labels=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, sample(prior, n=3, seed=1, labels=1))
    assert not torch.equal(a, sample(prior, n=3, seed=2, labels=1))


def test_sampled_tokens_lie_in_the_top_k_of_the_masked_logits():
    layout = TokenLayout(shape=(2, 6), codebook_size=12, levels=2, modality="audio")
    prior = tiny_prior(layout)
    with torch.no_grad():  # sharpen the random model so the top 3 stand apart from the rest
        prior.lm.lm_head.weight.mul_(20)
    k = 3
    tokens = sample(prior, n=8, seed=0, top_k=k)
    seq = layout.to_sequence(tokens)
    with torch.no_grad():
        logits = prior.mask_logits(prior.lm(input_ids=seq[:, :-1]).logits[:, layout.prefix_len - 1:])  # (n, N, V)
    chosen = logits.gather(-1, seq[:, layout.prefix_len:, None])[..., 0]  # (n, N)
    kth = logits.topk(k, dim=-1).values[..., -1]  # (n, N)
    assert (chosen >= kth - 1e-4).all()  # incremental (KV-cache) and full forward agree to float error
    # ... which would fail without the filter: plain sampling leaves the top 3 often.
    free = layout.to_sequence(sample(prior, n=8, seed=0))[:, layout.prefix_len:, None]
    assert (logits.gather(-1, free)[..., 0] < kth - 1e-4).any()


def test_top_k_1_is_greedy_decoding():
    layout = LAYOUTS["codec+class"]
    prior = tiny_prior(layout)
    seq = layout.prefix(2, torch.tensor([0, 1]))
    with torch.no_grad():
        for j in range(layout.n_tokens):
            logits = prior.lm(input_ids=seq).logits[:, -1] + prior.level_mask[j % layout.levels]  # (2, V)
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    for seed in (0, 1):
        assert torch.equal(sample(prior, n=2, seed=seed, top_k=1, labels=torch.tensor([0, 1])),
                           layout.from_sequence(seq))


def test_position_mask_never_yields_an_invalid_token():
    layout = LAYOUTS["codec+class"]
    prior = tiny_prior(layout)
    with torch.no_grad():  # make BOS, class tokens and the wrong levels' codes the model's favourites
        prior.lm.lm_head.weight[layout.bos:] += 5.0
    tokens = sample(prior, n=16, seed=0, temperature=3.0, top_p=0.99, labels=0)
    assert tokens.min() >= 0 and tokens.max() < layout.codebook_size
    seq = layout.to_sequence(tokens, torch.zeros(16, dtype=torch.long))
    body = seq[:, layout.prefix_len:]
    level = torch.arange(layout.n_tokens) % layout.levels
    assert ((body // layout.codebook_size) == level).all()  # every id in its own level's range
    scores = LayoutMask(layout)(seq[:, :layout.prefix_len + 4], torch.zeros(16, layout.vocab_size))
    assert torch.isfinite(scores).sum(-1).eq(layout.codebook_size).all()


def test_sample_labels_by_index_or_name_and_every_class_by_default():
    from latent_diffusion.sampling import sample_labels

    k, names = LAYOUTS["codec+class"].num_classes, ["cat", "dog"]
    assert sample_labels(5, k, None).tolist() == [0, 1, 0, 1, 0]
    assert sample_labels(3, k, "dog", names).tolist() == [1, 1, 1]
    assert sample_labels(2, k, "0", names).tolist() == [0, 0]
    for bad in ("2", "bird"):
        with pytest.raises(ValueError, match="--label"):
            sample_labels(2, k, bad, names)
    with pytest.raises(ValueError, match="unconditional"):
        sample_labels(2, LAYOUTS["grid"].num_classes, "0")


# --- training, export, CLI ------------------------------------------------------------------------

AR = ["model.kind=ar_prior", "model.width=32", "model.layers=2", "model.heads=2", "train.lr=3e-3",
      "train.betas=[0.9,0.95]"]


@pytest.fixture(scope="module")
def vq_tokens(tmp_path_factory):
    """A tiny random VQ tokenizer (exported as a diffusers VQModel) and `aetk encode` of 12 images."""
    from helpers import tiny_overrides

    from train.families.vq_vae import build_model
    from train.recipe import config_from_dict

    root = tmp_path_factory.mktemp("ar-vq")
    torch.manual_seed(0)
    cfg = config_from_dict({}, tiny_overrides(root / "unused", "model.kind=vq_vae", "model.quantizer.codebook_size=16",
                                              "model.latent_channels=4"))
    build_model(cfg).eval().save_pretrained(root / "vq")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    assert main(["encode", str(root / "vq"), "--data", str(root / "images"), "--resolution", "16", "--out",
                 str(root / "tok"), "--shard-size", "8", "--precision", "no"]) == 0
    return root


def test_ar_prior_trains_on_vq_tokens_exports_and_samples_a_grid(vq_tokens, tmp_path, tiny_config):
    from PIL import Image as PILImage
    from transformers import AutoModelForCausalLM

    from train.run import train

    cfg = tiny_config(tmp_path / "run", *AR, f"data.path={vq_tokens / 'tok'}", f"model.first_stage={vq_tokens / 'vq'}",
                      "train.max_steps=4", "train.eval_every=4", "train.checkpoint_every=4", "model.top_k=4")
    trainer = train(cfg)
    rows = [json.loads(l) for l in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "prior/loss" in r] == [1, 2, 3, 4]
    ev = [r for r in rows if "eval/nll" in r][0]
    assert ev["eval/bits_per_token"] == pytest.approx(ev["eval/nll"] / math.log(2))
    assert (tmp_path / "run/samples/sample-0000004.png").is_file()
    meta = json.loads((tmp_path / "run/model/prior.json").read_text())
    assert meta["kind"] == "ar_prior" and meta["token_shape"] == [8, 8] and meta["sampling"]["top_k"] == 4
    # The export is a plain transformers model: same logits as the trained (averaged) prior.
    prior = trainer.averaged_model().eval()
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "run/model/ar").eval()
    ids = prior.layout.to_sequence(torch.randint(0, 16, (2, 8, 8)))
    with torch.no_grad():
        torch.testing.assert_close(lm(input_ids=ids).logits, prior.lm(input_ids=ids).logits, rtol=0, atol=0)
    trainer.close()
    out = tmp_path / "grid.png"
    assert main(["sample", str(tmp_path / "run"), "--n", "4", "--top-k", "3", "--temperature", "0.9",
                 "--out", str(out)]) == 0
    assert PILImage.open(out).size == (4 * 18 + 2, 16 + 4)  # 4 images of 16 px in one row, 2 px padding
    assert main(["sample", str(tmp_path / "run"), "--n", "2", "--label", "1", "--out", str(out)]) == 2  # unconditional


def _labelled_token_shards(root, n: int = 48, classes: int = 3):
    """Token shards in `aetk encode`'s format (train/encode.py) with a `label` tensor and
    `num_classes` in the manifest. Every token of an item equals its label."""
    root.mkdir()
    labels = torch.arange(n) % classes
    tokens = labels[:, None, None].expand(n, 2, 2).to(torch.int16).contiguous()
    meta = {"aetk": json.dumps({"version": 1, "bad": [], "hashes": {}})}
    shards = []
    for s, lo in enumerate(range(0, n, 32)):
        hi = min(n, lo + 32)
        save_file({"tokens": tokens[lo:hi].contiguous(), "label": labels[lo:hi].contiguous(),
                   "index": torch.arange(lo, hi), "flip": torch.zeros(hi - lo, dtype=torch.bool)},
                  root / f"shard-{s:05d}.safetensors", metadata=meta)
        shards.append({"file": f"shard-{s:05d}.safetensors", "count": hi - lo})
    manifest = {"format": "aetk-tokens", "version": 1, "count": n, "token_shape": [2, 2], "codebook_size": 4,
                "dtype": "int16", "num_classes": classes, "class_names": ["zero", "one", "two"], "shards": shards}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_class_token_conditions_the_samples(tmp_path, tiny_config):
    from latent_diffusion.ar_prior import ARPrior
    from train.data.shards import TokenItems
    from train.run import train

    data = _labelled_token_shards(tmp_path / "tok")
    item = TokenItems(str(data))[40]
    assert torch.equal(item["x"], torch.full((2, 2), 1)) and item["y"] == 1
    cfg = tiny_config(tmp_path / "run", *AR, f"data.path={data}", "train.max_steps=60", "train.batch_size=8",
                      "train.eval_every=60", "train.checkpoint_every=60", "train.ema_decay=null",
                      "train.mixed_precision=no", "train.log_every=10")
    train(cfg).close()
    prior = ARPrior.from_pretrained(tmp_path / "run/model")
    assert prior.layout.num_classes == 3 and prior.class_names == ["zero", "one", "two"]
    for c in range(3):
        assert (sample(prior, n=2, seed=c, labels=c, top_k=1) == c).all()  # the mode follows the class
    rows = [json.loads(l) for l in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if "eval/nll" in r][0]["eval/nll"] < 0.2  # log 4 = 1.39 without the class token


def test_ar_prior_over_codec_tokens_writes_wavs(tmp_path, tiny_config):
    import soundfile as sf

    from train.families.soundstream import build_model
    from train.recipe import load_config

    sr, hop = 8000, 16
    torch.manual_seed(0)
    codec = build_model(load_config("configs/codec-tiny.yaml", [
        "model.sample_rate=8000", "model.ratios=[4,4]", "model.stage_channels=[4,8,8]",
        "model.dimension=8", "model.lstm_layers=0", "model.quantizer.levels=2", "model.quantizer.codebook_size=16",
        "model.quantizer.kmeans_init=true"]))
    codec.train()(torch.randn(2, 1, 1600) * 0.3)  # fit the codebooks by k-means so codes vary
    codec.eval().save_pretrained(tmp_path / "codec")
    (tmp_path / "audio").mkdir()
    t = np.arange(3200) / sr
    for i in range(2):
        tone = 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t)
        sf.write(tmp_path / "audio" / f"{i}.wav", tone.astype(np.float32), sr)
    assert main(["encode", str(tmp_path / "codec"), "--data", str(tmp_path / "audio"), "--out", str(tmp_path / "tok"),
                 "--segment-seconds", "0.05"]) == 0  # 8 segments of 25 frames x 2 levels
    cfg = tiny_config(tmp_path / "run", *AR, f"data.path={tmp_path / 'tok'}", f"model.first_stage={tmp_path / 'codec'}",
                      "train.max_steps=2", "train.eval_every=2", "train.checkpoint_every=2")
    from train.run import train

    train(cfg).close()
    assert len(list((tmp_path / "run/samples/audio-0000002").glob("*.wav"))) == 4  # data.val_size
    assert main(["sample", str(tmp_path / "run"), "--n", "2", "--seed", "3", "--out", str(tmp_path / "wavs")]) == 0
    wavs = sorted((tmp_path / "wavs").glob("*.wav"))
    assert [w.name for w in wavs] == ["sample-000.wav", "sample-001.wav"]
    audio, rate = sf.read(wavs[0])
    assert rate == sr and audio.shape == (25 * hop,)
