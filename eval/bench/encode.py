"""`aetk bench encode`: `aetk encode` end to end (decode, encode, shard writing, manifest) against a
plain diffusers loop over the same folder (PIL decode, `AutoencoderKL.encode` in fp32, batch 8),
with the latent error against fp32 and each side's peak memory (max RSS of a fresh process)."""

from __future__ import annotations

import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import save_image

from eval.bench.machine import cpu_name
from eval.image import to_unit
from latent_diffusion.encode import EncodeOptions, encode_latents
from latent_diffusion.shards import LatentShardDataset
from tokenizers_ae.data.images import ImageTransform
from tokenizers_ae.data.sources import build_image_dataset
from tokenizers_ae.models.kl_vae import KLVAE


def _child(fn, args, queue) -> None:
    start = time.perf_counter()
    out = fn(*args).numpy()  # by value: torch would share memory with a process about to exit
    queue.put((time.perf_counter() - start, out, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def _in_fresh_process(fn, *args):
    """(seconds, result, peak RSS MiB) of fn(*args) in a spawned process, so peaks do not mix."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, q))
    p.start()
    seconds, out, peak = q.get()
    p.join()
    return seconds, torch.from_numpy(out), peak


def reference_loop(model: str, folder: str, resolution: int, batch: int = 8) -> torch.Tensor:
    """The plain way: sorted files, PIL decode, centre crop, AutoencoderKL.encode fp32, batch 8."""
    vae = KLVAE.from_pretrained(model).vae
    tf = ImageTransform(resolution, random_crop=False, random_flip=False)
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    out = []
    with torch.no_grad():
        for s in range(0, len(files), batch):
            x = torch.stack([tf(Image.open(f).convert("RGB"), np.random.default_rng(0)) for f in files[s:s + batch]])
            out.append(vae.encode(x).latent_dist.mean)
    return torch.cat(out)


def aetk_encode(model: str, folder: str, resolution: int, precision: str, out: str,
                batch_size: int = 8) -> torch.Tensor:
    encode_latents(KLVAE.from_pretrained(model), folder, out, EncodeOptions(
        resolution=resolution, batch_size=batch_size, precision=precision,
                                             dtype="float32", progress=False))
    ds = LatentShardDataset(out)
    z = [None] * len(ds)
    for i in range(len(ds)):
        item = ds[i]
        z[item["index"]] = item["latent"]
    return torch.stack(z)


def write_sample_folder(folder: str | Path, n: int = 128, resolution: int = 256) -> Path:
    """n PNG crops of the built-in photos (a reproducible folder for the benchmark)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ds = build_image_dataset("builtin:skimage", resolution=resolution, builtin_size=n, random_flip=False)
    for i in range(n):
        save_image(to_unit(ds[i]["x"]), folder / f"img{i:05d}.png")
    return folder


def bench_encode(model: str, folder: str | None = None, *, resolution: int = 256, n: int = 128) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if folder is None:
            folder = str(write_sample_folder(Path(tmp) / "imgs", n=n, resolution=resolution))
        files = sum(1 for p in Path(folder).rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
        t_ref, z_ref, mem_ref = _in_fresh_process(reference_loop, model, folder, resolution)
        t_32, z_32, mem_32 = _in_fresh_process(aetk_encode, model, folder, resolution, "no", f"{tmp}/fp32")
        t_bf, z_bf, mem_bf = _in_fresh_process(aetk_encode, model, folder, resolution, "bf16", f"{tmp}/bf16")

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    return {
        "images": files, "resolution": resolution, "threads": torch.get_num_threads(), "cpu": cpu_name(),
        "images_per_s": {"reference_fp32": files / t_ref, "aetk_fp32": files / t_32, "aetk_bf16": files / t_bf},
        "speedup_vs_reference": {"aetk_fp32": t_ref / t_32, "aetk_bf16": t_ref / t_bf},
        "latent_rel_error_vs_fp32": {"aetk_fp32": rel(z_32, z_ref), "aetk_bf16": rel(z_bf, z_ref)},
        "peak_rss_mib": {"reference_fp32": mem_ref, "aetk_fp32": mem_32, "aetk_bf16": mem_bf},
    }
