"""`aetk bench video` runs end to end on a tiny clip and aetk's outputs equal diffusers' untiled ones."""

import pytest

from aetk.cli import build_parser
from eval.bench.video import WAN21, bench_video

TINY = {**WAN21, "base_dim": 8}


def test_bench_video_reports_rows_ratios_and_equal_outputs():
    # In this process (fresh=False) to stay fast: each fresh process re-imports torch and diffusers.
    res = bench_video(frames=9, size=32, arch=TINY, threads=1, fresh=False, progress=False)
    assert res["arch"]["base_dim"] == 8 and (res["frames"], res["size"], res["batch"], res["threads"]) == (9, 32, 1, 1)
    assert {(r["op"], r["method"]) for r in res["rows"]} == {
        (op, m) for op in ("encode", "decode") for m in ("diffusers-untiled", "diffusers-tiled", "aetk")}
    for r in res["rows"]:
        assert r["seconds"] > 0 and r["peak_mib"] is not None
        if r["method"] == "diffusers-untiled":
            assert r["max_abs_err"] is None  # the reference
        else:
            assert r["max_abs_err"] <= 1e-5  # 32 px is below diffusers' tile: its tiled path is not tiled either
    shapes = {r["op"]: r["shape"] for r in res["rows"]}
    assert shapes == {"encode": [1, 16, 3, 4, 4], "decode": [1, 3, 9, 32, 32]}
    assert res["aetk_equal_to_untiled_within_1e-05"] == {"encode": True, "decode": True}
    assert set(res["aetk_vs_diffusers_tiled"]) == {"encode", "decode"}
    assert all(set(r) == {"time", "memory"} for r in res["aetk_vs_diffusers_tiled"].values())
    assert res["diffusers_tiling"]["engaged"] is False and set(res["target_met"]) == {"encode", "decode"}


def test_bench_video_diffusers_tiling_is_approximate_where_it_engages():
    res = bench_video(frames=5, size=64, arch=TINY, ops=("decode",), tile=32, threads=1, fresh=False, progress=False)
    by = {r["method"]: r for r in res["rows"]}
    assert res["diffusers_tiling"]["engaged"] is True
    assert by["aetk"]["max_abs_err"] <= 1e-5
    assert by["diffusers-tiled"]["max_abs_err"] > 1e-3  # blended seams


def test_bench_video_cli_parses():
    args = build_parser().parse_args(["bench", "video", "--frames", "9", "--size", "32", "--width", "8"])
    assert (args.frames, args.size, args.base_dim, args.threads) == (9, 32, 8, 2)
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["bench", "video", "--help"])
    assert e.value.code == 0
