"""`--precision auto` in `aetk eval` and `aetk encode` on a VAE built to overflow fp16 in one decoder
block, the plan that export records, and the one-line refusals of plain fp16."""

import json

import pytest
import torch

from aetk.cli import main
from eval.precision import fp16_plan
from tokenizers_ae.data.sources import build_image_dataset
from tokenizers_ae.models.kl_vae import KLVAE, build_autoencoder_kl
from tokenizers_ae.precision import PLAN_KEY
from train.model_card import write_model_card

OVERFLOWING = "decoder.up_blocks.0.resnets.0.conv1"


def overflowing_vae():
    torch.manual_seed(0)
    vae = build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2).eval()
    with torch.no_grad():
        vae.get_submodule(OVERFLOWING).weight.mul_(3e5)  # past fp16's 65504; the GroupNorm after it recovers
    return vae


def images(n=4):
    ds = build_image_dataset("builtin:skimage", resolution=32, random_crop=False, random_flip=False, split="val")
    return torch.stack([ds[i]["x"] for i in range(n)])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The overflowing VAE as a diffusers directory, without and with the plan an export records."""
    root = tmp_path_factory.mktemp("prec")
    bare = KLVAE(overflowing_vae()).save_pretrained(root / "bare")
    vae = overflowing_vae()
    plan = fp16_plan(vae, images())
    vae.register_to_config(force_upcast=True, **{PLAN_KEY: plan})
    planned = KLVAE(vae).save_pretrained(root / "planned")
    return bare, planned, plan


def run_eval(model, tmp_path, precision, capsys):
    out = tmp_path / f"{precision}.json"
    code = main(["eval", str(model), "--data", "builtin:skimage", "--resolution", "32", "--n", "4",
                 "--precision", precision, "--json", str(out)])
    return code, (json.loads(out.read_text()) if code == 0 else capsys.readouterr().err)


def test_fp16_plan_names_the_overflowing_decoder_block(saved):
    _, _, plan = saved
    assert plan["fp16"]["encode"] == []
    assert OVERFLOWING in plan["fp16"]["decode"]


def test_eval_auto_is_finite_and_close_to_fp32_where_fp16_fails(saved, tmp_path, capsys):
    bare, planned, _ = saved
    code, err = run_eval(bare, tmp_path, "fp16", capsys)
    assert code != 0
    assert "--precision fp16: the output is not finite" in err and OVERFLOWING in err and "--precision auto" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

    _, ref = run_eval(bare, tmp_path, "no", capsys)
    code, auto = run_eval(bare, tmp_path, "auto-fp16", capsys)
    assert code == 0
    assert OVERFLOWING in auto["precision"]["fp32_modules"] and auto["precision"]["repairs"] >= 1
    assert abs(auto["model"]["psnr"] - ref["model"]["psnr"]) < 0.05
    # With the plan recorded at export it runs without a single repair.
    _, planned_auto = run_eval(planned, tmp_path, "auto-fp16", capsys)
    assert planned_auto["precision"]["repairs"] == 0
    assert OVERFLOWING in planned_auto["precision"]["fp32_modules"]


def test_encode_auto_writes_the_plan_and_fp32_close_latents(saved, tmp_path, capsys):
    bare, _, _ = saved
    outs = {}
    for precision in ("no", "auto-fp16"):
        out = tmp_path / precision
        assert main(["encode", str(bare), "--data", "builtin:skimage", "--split", "val", "--resolution", "32",
                     "--out", str(out), "--precision", precision, "--builtin-size", "8"]) == 0
        outs[precision] = json.loads((out / "manifest.json").read_text())
    plan = outs["auto-fp16"]["precision_plan"]
    assert plan["dtype"] == "fp16" and plan["mode"] == "auto-fp16"
    # The encoder does not overflow: nothing kept in fp32, latents equal fp32's to fp16 precision.
    assert plan["fp32_modules"] == []
    assert outs["auto-fp16"]["std"] == pytest.approx(outs["no"]["std"], rel=1e-2)


def test_plain_auto_is_bf16_on_a_cpu(saved, tmp_path, capsys):
    """fp16 on this CPU is hundreds of times slower than fp32: `auto` picks bf16 here (fp16 on CUDA)."""
    bare, _, _ = saved
    code, r = run_eval(bare, tmp_path, "auto", capsys)
    assert code == 0 and r["precision"]["dtype"] == "bf16" and r["precision"]["fp32_modules"] == []


@pytest.mark.parametrize("flags, default", [("avx2", "no"), ("avx512f amx_bf16", "bf16")])
def test_encode_defaults_to_bf16_only_where_the_cpu_has_it(saved, tmp_path, capsys, monkeypatch, flags, default):
    """Emulated bf16 (an AVX2 CPU) encodes about 6.5x slower than fp32: the default is fp32 there, and asking
    for bf16 anyway says so in one line."""
    from tokenizers_ae import precision

    monkeypatch.setattr(precision, "cpuinfo", lambda: f"model name\t: CPU\nflags\t\t: fpu {flags}\n")
    bare, _, _ = saved
    args = ["encode", str(bare), "--data", "builtin:skimage", "--split", "val", "--resolution", "32",
            "--builtin-size", "4"]
    assert main([*args, "--out", str(tmp_path / "default")]) == 0
    assert json.loads((tmp_path / "default" / "manifest.json").read_text())["precision"] == default
    assert "emulates" not in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "bf16"), "--precision", "bf16"]) == 0
    assert json.loads((tmp_path / "bf16" / "manifest.json").read_text())["precision"] == "bf16"
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "emulates" in ln]
    assert len(notes) == (default == "no")
    if notes:
        assert "--precision no" in notes[0]


def test_eval_says_when_bf16_is_emulated(saved, tmp_path, capsys, monkeypatch):
    """`aetk eval --precision auto` (bf16 on a CPU) on a CPU without AMX or AVX512-BF16: one line saying so."""
    from tokenizers_ae import precision

    monkeypatch.setattr(precision, "cpuinfo", lambda: "model name\t: CPU\nflags\t\t: fpu avx2\n")
    bare, _, _ = saved
    capsys.readouterr()
    code, _ = run_eval(bare, tmp_path, "auto", capsys)
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "emulates" in ln]
    assert code == 0 and len(notes) == 1 and "--precision auto" in notes[0] and "--precision no" in notes[0]


def test_training_export_records_the_plan_of_a_model_that_overflows(tmp_path, tiny_config):
    from train.families.kl_vae import export

    cfg = tiny_config(tmp_path / "run", "data.resolution=32")
    export(cfg, KLVAE(overflowing_vae()), [{"x": t} for t in images(8)], tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["force_upcast"] is True and OVERFLOWING in config[PLAN_KEY]["fp16"]["decode"]
    assert KLVAE.from_pretrained(tmp_path / "model").vae.config[PLAN_KEY] == config[PLAN_KEY]


def test_model_card_names_the_fp32_modules(saved):
    _, planned, _ = saved
    card = write_model_card(planned).read_text()
    assert "Not fp16-safe" in card and "--precision auto" in card and OVERFLOWING in card


def test_precision_for_a_video_model_is_refused(tmp_path, capsys):
    from tokenizers_ae.models.video_vae import VideoVAE, build_autoencoder_kl_wan

    vae = build_autoencoder_kl_wan(in_channels=3, base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                                   temporal_downsample=[True])
    model = VideoVAE(vae).save_pretrained(tmp_path / "v")
    code = main(["eval", str(model), "--data", "builtin:moving-digits", "--precision", "auto"])
    assert code != 0 and "image tokenizers only" in capsys.readouterr().err
