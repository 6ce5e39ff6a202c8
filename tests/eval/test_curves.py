"""Learning curves (eval/curves.py): panels grouped as documented, and drawn by a real training run."""

import json

from helpers import REPO, run_cli, tiny_overrides
from PIL import Image

from eval.curves import curve_panels, read_metrics, save_curves


def test_rate_tagged_metrics_share_a_panel_without_the_untagged_copy():
    rows = [
        {"step": 1, "generator/loss": 3.0, "discriminator/loss": 1.0, "lr": 1e-3},
        {"step": 2, "eval/si_snr@1.5kbps": -3.0, "eval/si_snr@6kbps": -1.0, "eval/si_snr": -1.0,
         "eval/psnr": 20.0, "eval/note": "text", "eval/bad": float("nan")},
        {"step": 4, "eval/si_snr@1.5kbps": -2.0, "eval/si_snr@6kbps": 0.5, "eval/si_snr": 0.5, "eval/psnr": 21.0},
    ]
    panels = curve_panels(rows)
    assert list(panels) == ["training losses", "eval: si_snr", "eval: psnr"]
    assert set(panels["training losses"]) == {"generator/loss", "discriminator/loss"}  # lr is not a loss
    assert panels["eval: si_snr"] == {"1.5 kbps": [(2, -3.0), (4, -2.0)], "6 kbps": [(2, -1.0), (4, 0.5)]}
    assert panels["eval: psnr"] == {"": [(2, 20.0), (4, 21.0)]}


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "eval/psnr": 20.0}) + "\n" + '{"step": 2, "eval/ps')
    assert read_metrics(path) == [{"step": 1, "eval/psnr": 20.0}]
    assert save_curves(path, tmp_path / "c.png") == ["eval: psnr"]
    with Image.open(tmp_path / "c.png") as im:
        assert im.format == "PNG"


def test_nothing_to_draw_writes_nothing(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "lr": 1e-3}) + "\n")
    assert save_curves(path, tmp_path / "c.png") == []
    assert not (tmp_path / "c.png").exists()


def test_a_training_run_redraws_its_curves(tmp_path):
    out = tmp_path / "run"
    run_cli(["train", str(REPO / "configs/kl-f4-tiny.yaml"), *tiny_overrides(out, "train.curves=true")])
    png = out / "curves.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 200
    panels = curve_panels(read_metrics(out / "metrics.jsonl"))
    assert "training losses" in panels and "eval: psnr" in panels
    assert [s for s, _ in panels["eval: psnr"][""]] == [3, 6]  # both evaluations of the 6-step run
