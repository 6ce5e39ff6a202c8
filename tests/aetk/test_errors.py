"""A mistake a user can fix is one line on stderr and a non-zero exit code, never a traceback, and it
writes nothing; a recipe error answers before torch loads."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO, one_line, run_cli, tiny_overrides

from aetk.cli import main

KL = str(REPO / "configs/kl-f4-tiny.yaml")


@pytest.fixture(scope="module")
def kl_run(tmp_path_factory):
    from train.recipe import config_from_dict
    from train.run import train

    out = tmp_path_factory.mktemp("kl") / "run"
    train(config_from_dict({}, tiny_overrides(out, "train.max_steps=2", "train.checkpoint_every=2",
                                              "train.eval_every=2"))).close()
    return out


def bad_cases(tmp, run):
    junk = tmp / "junk"
    junk.mkdir(exist_ok=True)
    (junk / "a.png").write_bytes(b"not a png")
    (tmp / "afile").write_text("x")
    return {
        "train: missing recipe": ["train", tmp / "nope.yaml"],
        "train: bad override": ["train", KL, "model.block_out_channels=[8,16"],
        "train: no readable image": ["train", KL, f"output_dir={tmp / 'r1'}", f"data.path={junk}",
                                     "loss.perceptual_backbone=random", "train.max_steps=1"],
        "train: resume path missing": ["train", KL, f"output_dir={tmp / 'r2'}", f"resume={tmp / 'gone'}",
                                       "loss.perceptual_backbone=random"],
        "train: vgg weights missing": ["train", str(REPO / "configs/kl-f8.yaml"), f"output_dir={tmp / 'r3'}",
                                       "data.path=builtin:skimage", "loss.perceptual_weights=/no/vgg16.pth"],
        "export: wrong path": ["export", tmp / "nope", "--out", tmp / "e1"],
        "export: single file to a directory": ["export", run, "--format", "sd-single-file", "--out", tmp / "e2"],
        "export: out is a file": ["export", run, "--out", tmp / "afile"],
        "eval: wrong path": ["eval", tmp / "nope", "--data", "builtin:skimage"],
        "eval: no data": ["eval", run],
        "eval: resolution 0": ["eval", run, "--data", "builtin:skimage", "--resolution", "0"],
        "encode: wrong path": ["encode", tmp / "nope", "--data", "builtin:skimage", "--out", tmp / "o1"],
        "encode: shard size 0": ["encode", run, "--data", "builtin:skimage", "--out", tmp / "o2", "--shard-size", "0"],
        "encode: batch size 0": ["encode", run, "--data", "builtin:skimage", "--out", tmp / "o3", "--batch-size", "0"],
        "encode: data missing": ["encode", run, "--data", tmp / "nodata", "--out", tmp / "o4", "--resolution", "16"],
        "encode: a video flag on an image model": ["encode", run, "--data", "builtin:skimage", "--out", tmp / "o5",
                                                   "--resolution", "16", "--frames", "9"],
        "encode: an audio flag on an image model": ["encode", run, "--data", "builtin:skimage", "--out", tmp / "o6",
                                                    "--resolution", "16", "--kbps", "6"],
        "eval: a video flag on an image model": ["eval", run, "--data", "builtin:skimage", "--resolution", "16",
                                                 "--builtin-digits", "1"],
        "sample: wrong path": ["sample", tmp / "nope", "--out", tmp / "s.png"],
        "sample: not a prior": ["sample", run, "--out", tmp / "s.png"],
        "codec: not a codec": ["codec", "compress", tmp / "afile", tmp / "x.aetk", "--model", run],
        "import: missing file": ["import", tmp / "nope.safetensors", "--out", tmp / "i1"],
        "config show: missing recipe": ["config", "show", tmp / "nope.yaml"],
    }


def test_every_verb_answers_a_bad_path_or_flag_with_one_line(kl_run, tmp_path, capsys):
    made_before = set(tmp_path.iterdir())
    for case, argv in bad_cases(tmp_path, kl_run).items():
        rc, err = one_line(capsys, argv)
        assert rc in (1, 2), f"{case}: exit code {rc}"
        last = err.splitlines()[-1] if err else ""
        assert last.startswith(("aetk: error:", "aetk: config error:", "aetk ")), f"{case}: {err[-400:]}"
        assert "Traceback" not in err, f"{case}: {err[-400:]}"
    made = {p.name for p in set(tmp_path.iterdir()) - made_before}
    assert made <= {"junk", "afile", "r1"}, made  # nothing written for a refused command (r1: its logs)


def test_the_line_names_the_problem(kl_run, tmp_path, capsys):
    cases = bad_cases(tmp_path, kl_run)
    expect = {
        "train: bad override": "model.block_out_channels: '[8,16' is not valid YAML",
        "train: no readable image": "no readable",
        "train: resume path missing": "gone: no such checkpoint directory",
        "train: vgg weights missing": "loss.perceptual_weights",
        "export: single file to a directory": "must end in .safetensors",
        "export: out is a file": "is an existing file",
        "eval: wrong path": "nope: no such file or directory",
        "eval: no data": "--data is required",
        "encode: data missing": "--data",
        "encode: a video flag on an image model": "--frames does nothing for",
        "encode: an audio flag on an image model": "--kbps does nothing for",
        "eval: a video flag on an image model": "--builtin-digits does nothing for",
        "sample: not a prior": "not a prior",
        "codec: not a codec": "not an audio codec",
        "import: missing file": "nope.safetensors: no such file",
    }
    for case, text in expect.items():
        _, err = one_line(capsys, cases[case])
        assert text in err, f"{case}: {err[-400:]}"


def test_in_a_fresh_process_stderr_is_one_line_and_debug_shows_the_traceback(tmp_path):
    proc = run_cli(["eval", str(tmp_path / "nope"), "--data", "builtin:skimage"], check=False)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0
    proc = run_cli(["--debug", "eval", str(tmp_path / "nope"), "--data", "builtin:skimage"], check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_a_recipe_error_answers_before_torch_loads():
    code = ("import sys; from aetk.cli import main; rc = main(['train', 'configs/kl-f4-tiny.yaml', 'model.bogus=1']); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown key model.bogus" in proc.stderr, proc.stderr


def test_train_without_arguments_asks_only_for_the_recipe(capsys):
    rc, err = one_line(capsys, ["train"])
    assert rc == 2 and "the following arguments are required: config" in err and "key=value" not in err.split(
        "required:")[-1]


def test_help_of_train_lists_the_sections_the_families_and_config_show(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "recipe sections: data, model, loss, train" in out and "aetk config show" in out
    assert all(kind in out for kind in ("kl_vae", "vq_vae", "soundstream", "diffusion_prior", "ar_prior", "classic"))


def test_config_show_prints_each_key_with_its_meaning(capsys):
    assert main(["config", "show", "configs/vq-f4-tiny.yaml", "model.quantizer.type=fsq"]) == 0
    out = capsys.readouterr().out
    assert "  quantizer:\n" in out and "    type: fsq" in out
    assert "# Codebook lookup, residual VQ, finite scalar quantization" in out
    assert "# Global batch per optimizer step" in out


def test_a_run_that_diverges_exits_non_zero_and_exports_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = one_line(capsys, ["train", KL, *tiny_overrides(out, "train.max_steps=2", "train.lr=1e30",
                                                             "train.warmup_steps=0")])
    assert rc == 1 and "diverged" in err and "Traceback" not in err
    assert not (out / "model").exists() or not any((out / "model").iterdir())


def test_the_progress_bar_prints_its_final_line_once(tmp_path):
    proc = run_cli(["train", KL, *tiny_overrides(tmp_path / "run", "train.max_steps=3", "train.progress=true",
                                                  "train.eval_every=3", "train.checkpoint_every=3")])
    lines = [seg for seg in proc.stderr.replace("\r", "\n").splitlines() if seg.startswith("train: 100%")]
    assert len(lines) == 1, lines


@pytest.mark.parametrize("verb", ["train", "export", "import", "encode", "eval", "sample", "codec", "config"])
def test_every_verb_help_has_an_example(verb, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    assert "example" in capsys.readouterr().out

