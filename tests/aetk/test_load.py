"""`aetk.load`: every family's saved model loads and runs in a fresh interpreter without the trainer.

diffusers and transformers import accelerate on their own whenever it is installed, so the fresh
interpreter blocks it (`sys.modules["accelerate"] = None`, which both libraries read as "not
installed"): loading, encoding, decoding and sampling must work without it, and `train` must
never be imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, tiny_overrides

CHECK = r"""
import json, sys
sys.modules["accelerate"] = None  # see the module docstring
import torch
import aetk

torch.manual_seed(0)
report = {}
for name, path in json.loads(sys.argv[1]).items():
    m = aetk.load(path)
    with torch.no_grad():
        if name in ("kl_vae", "kl_checkpoint", "sd_single_file"):
            x = torch.rand(2, 3, 16, 16) * 2 - 1
            out = m.decode(m.encode(x))
        elif name in ("vq_diffusers", "vq_native"):
            x = torch.rand(2, 3, 16, 16) * 2 - 1
            out = m.decode_indices(m.encode(x).indices)
        elif name == "soundstream":
            out = m.decode(m.encode(torch.randn(1, 1, 800) * 0.1, 2))
        elif name == "diffusion_prior":
            from latent_diffusion.diffusion_prior import sample
            out = sample(m, n=2, steps=2)
        elif name == "ar_prior":
            from latent_diffusion.ar_prior import sample
            out = sample(m, n=2, top_k=2)
        else:  # classic variants (the MAE has no decoder of codes alone: its forward reconstructs)
            x = torch.rand(2, *m.input_shape) * 2 - 1
            out = m(x).recon
    report[name] = [type(m).__name__, list(out.shape), bool(torch.isfinite(out.float()).all())]
report["imported"] = sorted({k.split(".")[0] for k in sys.modules if k.split(".")[0] in ("train", "accelerate")
                             and sys.modules[k] is not None})
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, str]:
    """One saved model per family (and per format a family has), written by the families' own code."""
    from latent_diffusion.ar_prior import ARPrior, TokenLayout, build_lm
    from latent_diffusion.diffusion_prior import DiffusionPrior, build_unet
    from train.families import FAMILIES
    from train.recipe import config_from_dict
    from train.run import train

    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    paths = {}

    def build(kind: str, *extra: str):
        cfg = config_from_dict({}, tiny_overrides(root / "unused", f"model.kind={kind}", *extra))
        return FAMILIES[kind].build_model(cfg).eval()

    kl = build("kl_vae")
    paths["kl_vae"] = str(kl.save_pretrained(root / "kl"))
    paths["sd_single_file"] = str(kl.save_single_file(root / "kl.safetensors"))
    paths["vq_diffusers"] = str(build("vq_vae", "model.quantizer.codebook_size=16").save_pretrained(root / "vq"))
    paths["vq_native"] = str(build("vq_vae", "model.quantizer.type=fsq", "model.quantizer.fsq_levels=[4,3]",
                                   "model.latent_channels=2").save_pretrained(root / "fsq"))
    codec = FAMILIES["soundstream"].build_model(config_from_dict({}, [
        "model.kind=soundstream", "model.sample_rate=8000", "model.ratios=[4,4]", "model.stage_channels=[4,8,8]",
        "model.dimension=8", "model.lstm_layers=0", "model.quantizer.levels=2", "model.quantizer.codebook_size=16"]))
    paths["soundstream"] = str(codec.eval().save_pretrained(root / "codec"))
    prior = DiffusionPrior(build_unet(latent_channels=2, sample_size=8, block_out_channels=(16, 32),
                                      norm_num_groups=8), latent_shape=[2, 8, 8], scaling_factor=0.5)
    prior.save_pretrained(root / "prior")
    paths["diffusion_prior"] = str(root / "prior")
    layout = TokenLayout(shape=(2, 3), codebook_size=8)
    ar = ARPrior(build_lm(arch="gpt2", vocab_size=layout.vocab_size, n_positions=layout.seq_len, width=16, layers=1,
                          heads=2, bos_token_id=layout.bos), layout)
    paths["ar_prior"] = str(ar.save_pretrained(root / "ar"))
    mae = ["data.path=builtin:skimage", "model.in_channels=3", "model.vit_dim=16"]
    for variant, extra in (("vae", []), ("mae", mae), ("linear", [])):
        model = build("classic", f"model.variant={variant}", "data.path=builtin:digits", "data.resolution=8",
                      "model.in_channels=1", "model.code_size=4", "model.hidden_sizes=[16]", *extra)
        paths[f"classic_{variant}"] = str(model.save_pretrained(root / variant))
    run = root / "run"  # a run directory: its newest checkpoint (model_config.json), not its export
    train(config_from_dict({}, tiny_overrides(run, "train.max_steps=2", "train.checkpoint_every=2",
                                              "train.eval_every=2"))).close()
    paths["kl_checkpoint"] = str(run / "checkpoints" / "step-2")
    return paths


def test_every_family_loads_and_runs_without_train_or_accelerate(saved):
    proc = subprocess.run([sys.executable, "-c", CHECK, json.dumps(saved)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report.pop("imported") == []
    assert {k: v[0] for k, v in report.items()} == {
        "kl_vae": "KLVAE", "sd_single_file": "KLVAE", "kl_checkpoint": "KLVAE", "vq_diffusers": "VQVAE",
        "vq_native": "VQVAE", "soundstream": "SoundStream", "diffusion_prior": "DiffusionPrior",
        "ar_prior": "ARPrior", "classic_vae": "VAE", "classic_mae": "MaskedAutoencoder",
        "classic_linear": "Autoencoder"}
    assert report["kl_vae"][1] == [2, 3, 16, 16] and report["soundstream"][1] == [1, 1, 800]
    assert report["diffusion_prior"][1] == [2, 2, 8, 8] and report["ar_prior"][1] == [2, 2, 3]
    assert all(ok for _, _, ok in report.values())


def test_load_gives_the_saved_weights(saved):
    """What `aetk.load` returns computes what the saved model computed (one family per format)."""
    import aetk
    from tokenizers_ae.models.kl_vae import KLVAE

    x = torch.rand(1, 3, 16, 16) * 2 - 1
    a, b = aetk.load(saved["kl_vae"]), KLVAE.from_pretrained(saved["sd_single_file"])
    with torch.no_grad():
        torch.testing.assert_close(a.reconstruct(x), b.reconstruct(x), atol=1e-6, rtol=0)


def test_load_names_what_is_wrong(tmp_path):
    import aetk
    from tokenizers_ae.pretrained import LoadError

    with pytest.raises(LoadError, match="no such file or directory"):
        aetk.load(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LoadError, match="not a .safetensors single file"):
        aetk.load(tmp_path / "notes.txt")
    (tmp_path / "run").mkdir()
    (tmp_path / "run/config.yaml").write_text("model: {kind: kl_vae}\n")
    with pytest.raises(LoadError, match="no complete checkpoint or exported model yet"):
        aetk.load(tmp_path / "run")
    (tmp_path / "v9").mkdir()
    (tmp_path / "v9/aetk_model.json").write_text(json.dumps({"format": "aetk-model", "version": 9}))
    with pytest.raises(LoadError, match="version 9 is not supported"):
        aetk.load(tmp_path / "v9")


def test_a_class_refuses_another_family(saved):
    from audio_codec.model import SoundStream
    from tokenizers_ae.pretrained import LoadError

    with pytest.raises(LoadError, match="holds a VQVAE model, not an audio codec"):
        SoundStream.from_pretrained(saved["vq_native"])


def test_models_of_aetk_0_1_still_load(saved, tmp_path):
    """A native export of aetk 0.1 stored the recipe's model section instead of a config; it loads."""
    import aetk
    from train.recipe import config_from_dict

    cfg = config_from_dict({}, ["model.kind=soundstream", "model.sample_rate=8000", "model.ratios=[4,4]",
                                "model.stage_channels=[4,8,8]", "model.dimension=8", "model.lstm_layers=0",
                                "model.quantizer.levels=2", "model.quantizer.codebook_size=16"])
    old_recipe = {"kind": "soundstream", "codec": {"sample_rate": 8000, "ratios": [4, 4], "n_filters": 32,
                                                   "stage_channels": [4, 8, 8], "dimension": 8, "lstm_layers": 0,
                                                   "n_residual_layers": 1, "dilation_base": 2},
                  "rvq_levels": 2, "codebook_size": 16, "quantizer_dropout": 0.0, "vq_ema_decay": 0.99,
                  "dead_code_threshold": 0.0, "kmeans_init": False, "cosine": False, "codebook_dim": None}
    assert cfg.model.quantizer.levels == old_recipe["rvq_levels"]
    new = aetk.load(saved["soundstream"])
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.safetensors").write_bytes((Path(saved["soundstream"]) / "model.safetensors").read_bytes())
    (old / "aetk_model.json").write_text(json.dumps({"format": "aetk-model", "version": 1, "recipe": old_recipe}))
    back = aetk.load(old)
    codes = torch.randint(0, 16, (1, 2, 5))
    with torch.no_grad():
        torch.testing.assert_close(back.decode(codes), new.decode(codes))
