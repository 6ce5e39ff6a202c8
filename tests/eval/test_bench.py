"""Benchmarks stay runnable and keep their promises on a tiny config."""

import pytest

from aetk.cli import build_parser


def test_train_step_bench_reports_both_phases_and_equal_gradients(tmp_path, tiny_config):
    from eval.bench.train_step import bench_train_step

    cfg = tiny_config(tmp_path / "run", "data.resolution=32", "loss.disc_start=3", "train.mixed_precision=bf16")
    res = bench_train_step(cfg, steps=1, warmup=0, reference=True)
    assert set(res["aetk_images_per_s"]) == {"bf16", "no"}
    assert set(res["reference_fp32_images_per_s"]) == {"pre_disc", "gan"}
    for phases in res["speedup_vs_reference"].values():
        assert all(v > 0 for v in phases.values())
    # Same generator gradient as latent-diffusion's loss, before and after disc_start.
    assert all(err < 1e-4 for err in res["gradient_max_rel_error_vs_reference"].values())


@pytest.mark.parametrize("argv", [["--help"], *[[c, "--help"] for c in ("train", "export", "import", "encode", "eval",
                                                                        "sample", "bench", "codec", "config")],
                                  *[["bench", b, "--help"] for b in ("train-step", "precision", "encode", "quantizer",
                                                                     "classic", "tiling", "codec", "prior", "upcast",
                                                                     "quality")],
                                  *[["codec", c, "--help"] for c in ("compress", "decompress", "stream")]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 0
    assert "usage: aetk" in capsys.readouterr().out


def test_bench_prior_times_latent_and_pixel_priors_and_matches_diffusers_pipeline():
    from eval.bench.prior import bench_prior

    res = bench_prior(resolution=16, factor=4, widths=(32, 32), batch=2, n=2, sample_steps=3, train_steps=1,
                      repeats=1)
    assert res["values_per_item"] == {"latent": 4 * 4 * 4, "pixel": 3 * 16 * 16} and res["value_ratio"] == 12.0
    assert res["same_images_as_diffusers_max_abs"] < 1e-4  # aetk's sampler + decode is diffusers' pipeline
    assert min(res[k] for k in res if k.startswith(("train_step_s/", "sample_s/"))) > 0


def test_bench_upcast_auto_is_finite_where_plain_fp16_is_not():
    from eval.bench.upcast import OVERFLOWING, bench_upcast

    arch = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4)
    r = bench_upcast(size=32, repeats=1, device="cpu", arch=arch)
    assert r["fp32_upcast"]["finite"] and not r["fp16_plain"]["finite"]
    assert r["fp16_plain"]["rel_error_vs_fp32"] is None
    assert r["auto"]["finite"] and r["auto"]["rel_error_vs_fp32"] < 1e-2
    assert OVERFLOWING in r["auto"]["fp32_modules"] and r["auto"]["repairs"] >= 1
    assert r["auto_speedup_vs_fp32_upcast"] == r["fp32_upcast"]["seconds"] / r["auto"]["seconds"]


def test_bench_precision_reports_each_familys_eval_metrics(tmp_path, tiny_config):
    from eval.bench.precision import bench_precision

    cfg = tiny_config(tmp_path / "run", "data.resolution=16", "loss.disc_start=1000")
    r = bench_precision(cfg, steps=2, precisions=("no", "bf16"))
    assert set(r["eval"]) == {"no", "bf16"} and "psnr" in r["eval"]["bf16"]
    assert r["psnr_db"]["no"] == r["eval"]["no"]["psnr"] and "bf16" in r["psnr_delta_db_vs_fp32"]
