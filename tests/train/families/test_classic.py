"""The classic family through the toolkit: recipes, built-in digits and LM activations, `aetk train`
(train.run.train) with the classic task, `aetk eval` of the run, and `aetk bench classic`."""

import json

import pytest
import torch
from helpers import REPO
from safetensors.torch import load_file

RECIPES = sorted((REPO / "configs/classic").glob("*.yaml"))
FAST = ["train.max_steps=6", "train.eval_every=3", "train.checkpoint_every=6", "train.log_every=1",
        "train.progress=false", "resume=never"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread beats two on a shared 2-core machine
    yield
    torch.set_num_threads(before)


def test_there_is_a_recipe_per_variant():
    import typing

    import yaml

    from tokenizers_ae.classic.registry import VARIANTS
    from train.families.classic import ClassicModel

    variants = set(typing.get_args(typing.get_type_hints(ClassicModel)["variant"]))
    used = {yaml.safe_load(p.read_text())["model"]["variant"] for p in RECIPES}
    assert used == variants == set(VARIANTS)  # a recipe and a class for every variant the recipe section allows


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_classic_recipe_loads_and_builds_its_model_and_task(recipe):
    from train.classic_task import ClassicTask
    from train.families.classic import build_model, build_task
    from train.recipe import load_config

    cfg = load_config(recipe)
    assert cfg.model.kind == "classic" and cfg.output_dir == f"runs/classic/{recipe.stem}"
    model = build_model(cfg)
    task = build_task(cfg, model)
    assert isinstance(task, ClassicTask) and task.model_to_average() is model
    names = [ph.name for ph in task.phases()]
    assert names == (["autoencoder", "latent_discriminator"] if cfg.model.variant == "aae" else ["autoencoder"])


@pytest.mark.parametrize("overrides,match", [
    (["model.variant=cvae", "data.path=builtin:skimage"], "needs labels"),
    (["data.path=builtin:digits", "model.in_channels=3"], "grayscale"),
    (["model.variant=overcomplete", "model.code_size=16"], "wider than the input"),
    (["model.variant=deep", "model.hidden_sizes=[32]"], "2 hidden layers"),
    (["model.variant=sae"], "lm-activations"),
    (["model.variant=conv", "model.channels=[4,8,16,32]"], "divisible"),
    (["model.variant=nope"], "model.variant"),
    (["model.k=99"], "model.k"),
])
def test_classic_config_errors_name_the_key(overrides, match):
    from train.config import ConfigError
    from train.families.classic import build_model
    from train.recipe import config_from_dict

    base = ["model.kind=classic", "data.path=builtin:digits", "data.resolution=8", "model.in_channels=1"]
    with pytest.raises(ConfigError, match=match):
        build_model(config_from_dict({}, base + overrides))


def test_digits_split_is_fixed_disjoint_and_holds_a_class_out_of_training_only():
    from tokenizers_ae.data.digits import digits_split
    from tokenizers_ae.data.images import collate_images
    from tokenizers_ae.data.sources import build_image_dataset

    xt, yt = digits_split("train")
    xv, yv = digits_split("val")
    assert len(yt) + len(yv) == 1797 and len(yv) == 359
    assert xt.shape[1:] == (1, 8, 8) and float(xt.min()) == -1.0 and float(xt.max()) == 1.0
    # Disjoint: no held-out image equals a training image's index in the permutation (compare rows).
    assert not (torch.cdist(xv.flatten(1)[:50], xt.flatten(1)) == 0).all(1).any()
    xh, yh = digits_split("train", holdout_class=3)
    assert 3 not in yh.tolist() and len(yh) == int((yt != 3).sum())
    assert torch.equal(digits_split("val")[1], yv)  # the split ignores the run's seed
    ds = build_image_dataset("builtin:digits", resolution=16, split="val")
    batch = collate_images([ds[i] for i in range(4)])
    assert batch["x"].shape == (4, 1, 16, 16) and torch.equal(batch["y"], yv[:4])


def test_vae_recipe_trains_through_aetk_train_and_aetk_eval_reports_it(tmp_path):
    from aetk.cli import main
    from tokenizers_ae.classic.registry import load_classic
    from train.recipe import load_config
    from train.run import train

    run = tmp_path / "vae"
    cfg = load_config(REPO / "configs/classic/vae.yaml", [f"output_dir={run}", *FAST])
    train(cfg).close()
    assert (run / "config.yaml").is_file() and (run / "checkpoints/step-6").is_dir()
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "autoencoder/loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6] and all("reg/kl" in r and "vae/mse" in r for r in steps)
    assert [r["step"] for r in rows if "eval/mse" in r] == [3, 6]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["recon-0000003.png", "recon-0000006.png"]
    # model/ is aetk's native format and loads to the same network as the checkpoint.
    assert json.loads((run / "model/aetk_model.json").read_text())["config"]["variant"] == "vae"
    from_ckpt, from_model = load_classic(run), load_classic(run / "model")
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(from_ckpt(x).recon, from_model(x).recon)
    state = load_file(run / "checkpoints/step-6/model.safetensors")
    assert all(k.startswith("autoencoder.") for k in state)

    out = tmp_path / "eval"
    assert main(["eval", str(run), "--json", str(tmp_path / "eval.json"), "--out-dir", str(out)]) == 0
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["variant"] == "vae" and res["heldout_examples"] == 359 and res["elbo_nats"] < 0 < res["kl_nats"]
    assert res["pca_components"] == 8 and res["pca_mse"] > 0 and res["psnr"] > 0
    table = (out / "table.md").read_text().splitlines()
    assert table[0].startswith("| recipe |") and table[2].startswith("| vae | digits | 8 |") and "ELBO" in table[2]
    assert (out / "figure.png").stat().st_size > 0


def test_aae_trains_its_latent_discriminator_as_a_second_phase(tmp_path):
    from train.recipe import load_config
    from train.run import train

    run = tmp_path / "aae"
    train(load_config(REPO / "configs/classic/aae.yaml", [f"output_dir={run}", *FAST])).close()
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"autoencoder/loss"' in l]
    assert all("latent_discriminator/loss" in r and "aae/g_loss" in r and "aae/acc_prior" in r for r in rows)
    assert (run / "checkpoints/step-6/model_1.safetensors").is_file()  # the discriminator's weights


def test_stacked_recipe_pretrains_greedily_then_fine_tunes(tmp_path):
    from train.recipe import load_config
    from train.run import train

    run = tmp_path / "stacked"
    cfg = load_config(REPO / "configs/classic/stacked.yaml",
                      [f"output_dir={run}", *FAST, "train.max_steps=8", "train.checkpoint_every=8",
                       "model.pretrain_steps=2"])
    trainer = train(cfg)
    trainer.close()
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"autoencoder/loss"' in l]
    assert [r["stacked/stage"] for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3]  # 3 layers, then the whole stack


def test_sae_on_language_model_activations_through_train_and_eval(tmp_path):
    from aetk.cli import main
    from train.recipe import load_config
    from train.run import train

    run = tmp_path / "sae"
    cfg = load_config(REPO / "configs/classic/sae.yaml",
                      [f"output_dir={run}", *FAST, "model.lm_tokens=2048", "model.code_size=64",
                       "model.dead_steps=2", "train.batch_size=64"])
    train(cfg).close()
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"autoencoder/loss"' in l]
    assert all(r["sae/l0"] <= 8 for r in rows) and "reg/auxk" in rows[-1] and "sae/dead_fraction" in rows[-1]
    assert main(["eval", str(run), "--json", str(tmp_path / "sae.json"), "--out-dir", str(tmp_path / "e")]) == 0
    res = json.loads((tmp_path / "sae.json").read_text())
    assert res["l0"] <= 8 and 0 <= res["dead_latents_heldout"] <= 64 and 0 <= res["fvu"]
    top = res["top_activations"]
    assert len(top) == 8 and all(len(v) == 5 and "[" in v[0] for v in top.values())  # tokens shown in context


def test_bench_classic_writes_one_table_and_one_figure(tmp_path, capsys):
    from aetk.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "classic", "--only", "linear,cvae", "--steps", "3", "--out", str(out)]) == 0
    table = (out / "table.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| cvae |") and table[3].startswith("| linear |")
    assert "principal angle" in table[3] and "3 steps" in table[3]
    assert (out / "figure.png").stat().st_size > 0
    assert set(json.loads((out / "results.json").read_text())) == {"linear", "cvae"}
    with pytest.raises(SystemExit):
        main(["bench", "classic", "--help"])
    assert "configs/classic" in capsys.readouterr().out
