"""`aetk export --eval EVAL.json`: a held-out `aetk eval` result of the same weights goes into the model
card (figures, protocol card, the command that repeats it), and the card's command repeats it exactly;
results of other weights, of an older aetk, or not from `aetk eval` are refused before anything is written."""

import json

import pytest
import torch
from helpers import one_line

from aetk.cli import main
from tokenizers_ae.models.kl_vae import KLVAE, build_autoencoder_kl

EVAL = ["--data", "builtin:skimage", "--resolution", "32", "--n", "4"]


def tiny_vae(path, seed: int):
    torch.manual_seed(seed)
    vae = build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2)
    return KLVAE(vae).save_pretrained(path)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-eval")
    source, other = tiny_vae(root / "vae", 0), tiny_vae(root / "other", 1)
    result = root / "skimage-32.json"
    assert main(["eval", str(source), *EVAL, "--baseline", "jpeg", "--json", str(result)]) == 0
    return {"source": source, "other": other, "json": result}


def test_the_card_carries_the_held_out_figures_and_its_command_repeats_them(evaluated, tmp_path, capsys):
    r = json.loads(evaluated["json"].read_text())
    assert len(r["evaluated"]["sha256"]) == 64 and r["evaluated"]["source"] == str(evaluated["source"])
    out = tmp_path / "export"
    assert main(["export", str(evaluated["source"]), "--out", str(out), "--eval", str(evaluated["json"])]) == 0
    copied = out / "evaluations" / "skimage-32.json"
    assert json.loads(copied.read_text()) == r
    card = (out / "README.md").read_text()
    assert "## Held-out evaluation: skimage-32" in card
    assert "4 items of `builtin:skimage` (val)" in card and r["protocol"]["data"]["sha256"][:16] in card
    assert f"| psnr | {r['model']['psnr']:.4g} | {r['jpeg']['psnr']:.4g} |" in card
    assert "| metric | this model | JPEG |" in card and "resolution 32" in card
    assert "aetk eval export --protocol export/evaluations/skimage-32.json" in card
    # The card's command: the export (a diffusers directory) is the same weights, so the same figures.
    again = tmp_path / "again.json"
    capsys.readouterr()
    assert main(["eval", str(out), "--protocol", str(copied), "--json", str(again)]) == 0
    a = json.loads(again.read_text())
    assert a["evaluated"]["sha256"] == r["evaluated"]["sha256"]
    assert a["model"]["psnr"] == r["model"]["psnr"] and a["protocol"]["data"] == r["protocol"]["data"]


def refused(capsys, argv) -> str:
    rc, err = one_line(capsys, argv)
    assert rc != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_figures_of_other_weights_or_without_a_hash_are_refused_before_writing(evaluated, tmp_path, capsys):
    out = tmp_path / "export"

    def export(*evals, source=evaluated["source"], extra=()) -> str:
        argv = ["export", str(source), "--out", str(out), *extra]
        return refused(capsys, argv + [a for e in evals for a in ("--eval", str(e))])

    err = export(evaluated["json"], source=evaluated["other"])
    assert "measured other weights" in err and str(evaluated["source"]) in err and not out.exists()
    r = json.loads(evaluated["json"].read_text())
    del r["evaluated"]
    (tmp_path / "old.json").write_text(json.dumps(r))
    err = export(tmp_path / "old.json")
    assert "does not say which weights it measured" in err and "--protocol" in err and not out.exists()
    (tmp_path / "bare.json").write_text(json.dumps({"psnr": 40.0}))
    assert "not an `aetk eval --json` output" in export(tmp_path / "bare.json") and not out.exists()
    (tmp_path / "broken.json").write_text("{")
    assert "not JSON" in export(tmp_path / "broken.json")
    assert "no such file" in export(tmp_path / "none.json")
    assert "also named skimage-32.json" in export(evaluated["json"], evaluated["json"]) and not out.exists()
    single = tmp_path / "vae.safetensors"
    out = single
    assert "no model card" in export(evaluated["json"], extra=("--format", "sd-single-file")) and not single.exists()


def test_the_card_says_where_the_latent_factors_were_measured(evaluated, tmp_path, capsys):
    default = tmp_path / "default"
    assert main(["export", str(evaluated["source"]), "--out", str(default)]) == 0
    assert "Not measured by aetk for this export" in (default / "README.md").read_text()
    measured = tmp_path / "measured"
    assert main(["export", str(evaluated["source"]), "--out", str(measured), "--data", "builtin:skimage",
                 "--resolution", "32", "--n", "8"]) == 0
    stats = json.loads((measured / "latent_stats.json").read_text())
    config = json.loads((measured / "config.json").read_text())
    assert stats["n"] == 8 and stats["data"] == "builtin:skimage"
    assert config["scaling_factor"] == pytest.approx(stats["scaling_factor"])
    assert "Measured on 8 items of `builtin:skimage` (scale)" in (measured / "README.md").read_text()
    # Exported again from that directory, unchanged: the measurement travels with it.
    again = tmp_path / "again"
    assert main(["export", str(measured), "--out", str(again)]) == 0
    assert json.loads((again / "latent_stats.json").read_text()) == stats
    assert "Measured on 8 items of `builtin:skimage`" in (again / "README.md").read_text()


def test_an_eval_in_reduced_precision_names_the_stored_weights(evaluated, tmp_path, capsys):
    """--precision casts for the evaluation; the hash is of the weights as stored, so the export takes it."""
    bf16 = tmp_path / "bf16.json"
    assert main(["eval", str(evaluated["source"]), *EVAL, "--precision", "bf16", "--json", str(bf16)]) == 0
    r = json.loads(bf16.read_text())
    assert r["evaluated"]["sha256"] == json.loads(evaluated["json"].read_text())["evaluated"]["sha256"]
    assert main(["export", str(evaluated["source"]), "--out", str(tmp_path / "out"), "--eval", str(bf16)]) == 0
    assert "precision bf16" in (tmp_path / "out" / "README.md").read_text()
