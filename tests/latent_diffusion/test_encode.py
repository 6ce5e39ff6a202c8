"""aetk encode: shards + manifest, resumable after a kill, bad files listed, reader round trip."""

import json
import sys

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

from latent_diffusion.shards import LatentShardDataset
from tokenizers_ae.models.kl_vae import build_autoencoder_kl


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("vae")
    build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(9):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def encode_cli(vae_dir, data, out, *extra, env=None, check=True):
    return run_cli(["encode", str(vae_dir), "--data", str(data), "--out", str(out), "--resolution", "16",
                    "--shard-size", "3", "--batch-size", "2", *extra], env=env, check=check)


def test_manifest_shards_and_reader(vae_dir, folder, tmp_path):
    from diffusers import AutoencoderKL

    out = tmp_path / "lat"
    encode_cli(vae_dir, folder, out, "--dtype", "float32", "--precision", "no")
    m = json.loads((out / "manifest.json").read_text())
    assert m["count"] == 9 and m["latent_shape"] == [2, 8, 8] and len(m["shards"]) == 4
    assert [b["source"].split("/")[-1] for b in m["bad"]] == ["broken.png"]
    assert len(m["sources"]) == 9 and all(len(s["sha256"]) == 64 for s in m["sources"])
    ds = LatentShardDataset(out)
    z = torch.stack([ds[i]["latent"] for i in range(len(ds))])
    assert m["scaling_factor"] == pytest.approx(1 / z.std(correction=0).item(), rel=1e-5)
    torch.testing.assert_close(torch.tensor(m["channel_mean"]), z.mean((0, 2, 3)), rtol=1e-4, atol=1e-6)
    # Posterior means of the same model on the same crops.
    vae = AutoencoderKL.from_pretrained(vae_dir)
    from tokenizers_ae.data.sources import build_image_dataset

    src = build_image_dataset(str(folder), resolution=16, random_crop=False, random_flip=False)
    item = ds[4]
    with torch.no_grad():
        ref = vae.encode(src[item["index"]]["x"][None]).latent_dist.mean[0]
    torch.testing.assert_close(item["latent"], ref, rtol=1e-4, atol=1e-5)
    scaled = LatentShardDataset(out, scale=True)
    torch.testing.assert_close(scaled.unscale(scaled[4]["latent"]), item["latent"])


def test_killed_encode_resumes_with_every_item_once_and_rerun_is_a_noop(vae_dir, folder, tmp_path):
    out = tmp_path / "lat"
    proc = encode_cli(vae_dir, folder, out, "--flip", env={"AETK_FAULT": "kill_encode_after_shard:2"}, check=False)
    assert proc.returncode == -9 and not (out / "manifest.json").exists()
    done = sorted(p.name for p in out.glob("shard-*.safetensors"))
    assert done == ["shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")}
    encode_cli(vae_dir, folder, out, "--flip")
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items()), "finished shards are not redone"
    m = json.loads((out / "manifest.json").read_text())
    ds = LatentShardDataset(out)
    keys = sorted((ds[i]["index"], ds[i]["flip"]) for i in range(len(ds)))
    assert m["count"] == 18 and len(set(keys)) == 18  # 9 images x (plain, flipped), each once
    before = {p: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")}
    encode_cli(vae_dir, folder, out, "--flip")
    assert before == {p: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")}
    # Another setting in the same directory is refused instead of mixing shards.
    proc = encode_cli(vae_dir, folder, out, check=False)
    assert proc.returncode != 0 and "different job" in proc.stderr


@pytest.mark.slow
def test_two_process_encode_covers_every_item_once(vae_dir, folder, tmp_path):
    out = tmp_path / "lat"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "aetk"]
    run_cli(["encode", str(vae_dir), "--data", str(folder), "--out", str(out), "--resolution", "16",
             "--shard-size", "2", "--dtype", "float32", "--precision", "no"], launcher=torchrun)
    one = tmp_path / "one"
    encode_cli(vae_dir, folder, one, "--dtype", "float32", "--precision", "no")
    a, b = LatentShardDataset(out), LatentShardDataset(one)
    assert len(a) == len(b) == 9 and len(a.manifest["shards"]) == 5
    za = {a[i]["index"]: a[i]["latent"] for i in range(len(a))}
    zb = {b[i]["index"]: b[i]["latent"] for i in range(len(b))}
    assert za.keys() == zb.keys()
    for k in za:
        torch.testing.assert_close(za[k], zb[k])
    assert a.manifest["scaling_factor"] == pytest.approx(b.manifest["scaling_factor"], rel=1e-6)


def test_tiled_encode_and_eval_match_untiled(vae_dir, folder, tmp_path):
    """--tile runs the exact tiled encoder: the same latents (and eval metrics) as untiled."""
    from aetk.cli import main

    common = ["--data", str(folder), "--resolution", "16"]
    plain, tiled = tmp_path / "plain", tmp_path / "tiled"
    for out, extra in ((plain, []), (tiled, ["--tile", "8"])):
        assert main(["encode", str(vae_dir), *common, "--out", str(out), "--dtype", "float32", "--precision", "no",
                     "--num-workers", "0", *extra]) == 0
    a, b = LatentShardDataset(plain), LatentShardDataset(tiled)
    for i in range(len(a)):
        torch.testing.assert_close(a[i]["latent"], b[i]["latent"], rtol=0, atol=1e-5)
    results = []
    for extra in ([], ["--tile", "8"]):
        out = tmp_path / f"eval{len(extra)}.json"
        assert main(["eval", str(vae_dir), *common, "--n", "4", "--json", str(out), *extra]) == 0
        results.append(json.loads(out.read_text())["model"]["psnr"])
    assert results[0] == pytest.approx(results[1], abs=1e-3)


def test_a_rerun_re_encodes_sources_replaced_since(vae_dir, tmp_path):
    """Images replaced by others of the same names and count: the re-run notices (sizes and
    modification times) and encodes them again; the manifest then describes the new images."""
    data = tmp_path / "imgs"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "lat"
    encode_cli(vae_dir, data, out, "--precision", "no")
    before = json.loads((out / "manifest.json").read_text())
    for i in range(4):  # other pixels, other sizes: what a user swapping a folder's content does
        Image.fromarray(rng.integers(0, 255, (18, 18, 3), dtype=np.uint8)).save(data / f"{i}.png")
    proc = encode_cli(vae_dir, data, out, "--precision", "no")
    after = json.loads((out / "manifest.json").read_text())
    assert "encoding shard-00000.safetensors again: 3 of its 3 sources changed" in proc.stderr
    old = {s["index"]: s["sha256"] for s in before["sources"]}
    assert all(s["sha256"] != old[s["index"]] for s in after["sources"])  # none stale
    ds = LatentShardDataset(out)
    assert len(ds) == 4 and torch.isfinite(torch.stack([ds[i]["latent"] for i in range(4)])).all()


def test_a_damaged_shard_is_refused_by_the_reader_and_encoded_again(vae_dir, folder, tmp_path):
    out = tmp_path / "lat"
    encode_cli(vae_dir, folder, out, "--precision", "no", "--dtype", "float32")
    good = json.loads((out / "manifest.json").read_text())
    shard = out / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # safetensors: header length, header, then the tensors
    data[start:] = bytes(b ^ 0xFF for b in data[start:])  # every byte of tensor data flipped
    shard.write_bytes(bytes(data))
    ds = LatentShardDataset(out)
    ds[0]  # shard 0 is intact
    with pytest.raises(ValueError, match="shard-00001.safetensors: damaged"):
        ds[4]
    proc = encode_cli(vae_dir, folder, out, "--precision", "no", "--dtype", "float32")
    assert "encoding shard-00001.safetensors again: damaged" in proc.stderr
    again = json.loads((out / "manifest.json").read_text())
    assert again["scaling_factor"] == pytest.approx(good["scaling_factor"], rel=1e-6)
    fresh = LatentShardDataset(out)
    assert all(torch.isfinite(fresh[i]["latent"]).all() for i in range(len(fresh)))


def test_a_resolution_the_model_cannot_cover_is_refused(vae_dir, folder, tmp_path):
    """f2 model: 15 px would give latents of a cropped image without a word."""
    proc = run_cli(["encode", str(vae_dir), "--data", str(folder), "--out", str(tmp_path / "lat"), "--resolution",
                    "15"], check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("aetk: error: --resolution 15: must be a multiple of "
                                                           "the model's downsampling factor 2")
    assert "Traceback" not in proc.stderr and not (tmp_path / "lat").exists()


def test_another_job_is_refused_naming_the_values_that_resume_it(tmp_path):
    """An encode begun with other options (say bf16, the old CPU default) says which, so the user can resume
    it with them instead of deleting finished shards."""
    from latent_diffusion.encode import OneProcess, _claim

    _claim(tmp_path, {"model_hash": "abc", "precision": "bf16", "items": 9}, OneProcess())
    with pytest.raises(ValueError) as err:
        _claim(tmp_path, {"model_hash": "abc", "precision": "no", "items": 9}, OneProcess())
    assert "precision: 'bf16' there, 'no' now" in str(err.value) and "model_hash" not in str(err.value)
    _claim(tmp_path, {"model_hash": "abc", "precision": "bf16", "items": 9}, OneProcess())  # the same job resumes
