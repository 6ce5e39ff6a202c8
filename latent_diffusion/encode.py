"""`aetk encode`: a dataset -> latent shards (KL-VAE), token shards (VQ tokenizer), audio token
shards (codec) or video latent / token shards (video VAE) as safetensors + `manifest.json`,
resumable and split across processes.

Items are numbered 0..N-1 (then N..2N-1 for horizontal-flip copies) and cut into fixed shards of
`shard_size` items; process r encodes shards r, r+W, r+2W, ... Each shard is written to a
temporary name and renamed when complete, so a killed run restarted with the same command skips
the shards it finished and ends with every item exactly once; a finished run is a no-op. Each
shard carries its own statistics (sums per channel, bad items, content hashes) so the manifest is
merged from shard headers alone.

Shard format (version 1): tensors `latents` (n, c, h, w) (videos: (n, c, t, h, w)) with `stat_sum`,
`stat_sumsq` (c,) float64 — or `tokens` (n, h, w) (videos: (n, t, h, w)) int16/int32 with
`code_counts` (K,) —, `index` (n,) source item,
`flip` (n,), `label` (n,) int64 class indices when the source is labelled (class sub-folders, a
`label` column, builtin:digits; the manifest then lists `num_classes` and `class_names`); metadata
JSON `aetk` = {version, bad: [{index, source, error}], hashes: {index: sha256 of the decoded RGB
pixels}}.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from safetensors import safe_open
from tqdm.auto import tqdm

from audio_codec.container import state_dict_hash
from audio_codec.data import AudioFolder, AudioSegments
from audio_codec.model import SoundStream
from latent_diffusion.shards import FORMAT_VERSION, shard_meta, shard_path, shard_problem, write_shard
from tokenizers_ae.data import BUILTIN_DIGITS
from tokenizers_ae.data.sources import build_image_dataset
from tokenizers_ae.data.video import build_video_dataset
from tokenizers_ae.files import atomic_write, fault_point
from tokenizers_ae.models.kl_vae import KLVAE
from tokenizers_ae.models.video_vae import VideoVAE
from tokenizers_ae.models.vq_vae import VQVAE
from tokenizers_ae.precision import Compute, recorded_plan
from tokenizers_ae.pretrained import file_sha256
from tokenizers_ae.tiling import vae_moments

log = logging.getLogger("aetk.encode")


class Processes(Protocol):
    """Who encodes which shards: accelerate's `PartialState` under a launcher, `OneProcess` otherwise."""

    process_index: int
    num_processes: int
    is_main_process: bool
    is_local_main_process: bool
    device: torch.device

    def wait_for_everyone(self) -> None: ...


class OneProcess:
    """A single process, on the GPU when there is one."""

    process_index, num_processes, is_main_process, is_local_main_process = 0, 1, True, True
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def wait_for_everyone(self) -> None:
        pass


@dataclass
class EncodeOptions:
    """How `aetk encode` runs (the command line's flags)."""

    resolution: int = 256
    batch_size: int = 8
    shard_size: int = 1024
    sample: bool = False
    """Posterior samples (seeded per item) instead of posterior means."""
    flip: bool = False
    """Also encode a horizontally flipped copy of every image."""
    dtype: str = "float16"
    """Storage dtype of latents: float16, bfloat16 or float32."""
    seed: int = 0
    precision: str = "bf16"
    """Encoder compute: `bf16` autocast (fast on CPUs with AVX-512/AMX and on GPUs), `fp16` autocast,
    `auto` / `auto-fp16` / `auto-bf16` (reduced precision with the modules that overflow it kept in fp32:
    `tokenizers_ae.precision`; `auto` is fp16 on GPUs, bf16 on CPUs) or `no` (exact fp32). Non-finite
    latents are an error, never stored."""
    num_workers: int | None = None
    """Decoding worker processes (overlap decoding with encoding). None: one per core beyond the two
    the encoder's threads use, at most 4 (0 on a 2-core machine, where a worker only steals time)."""
    progress: bool = True
    tile: int | None = None
    """Run the encoder in exact tiles of this many pixels (bounded memory for large images)."""
    split: str = "train"
    """Split of a builtin source or a `datasets` DatasetDict (`val`: builtin held-out items)."""
    frames: int = 17
    """Videos: frames per clip (the first frames of each file, centre-cropped)."""
    frame_stride: int = 1
    """Videos: take every n-th frame."""
    builtin_size: int = 512
    """Items a built-in source makes (builtin:skimage crops, builtin:moving-digits clips)."""
    builtin_digits: int = BUILTIN_DIGITS
    """Videos: digits per clip of a built-in moving-digits source."""


class ImageItems(torch.utils.data.Dataset):
    """Item k of the encode order: source image k % N, flipped when k >= N. Unreadable -> x=None."""

    def __init__(self, ds, flip: bool) -> None:
        self.ds, self.n = ds, len(ds)
        self.total = self.n * (2 if flip else 1)

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, k: int) -> dict:
        i, flipped = k % self.n, k >= self.n
        if hasattr(self.ds, "load"):  # file-backed images: decode here so a bad file is listed, not fatal
            try:
                img = self.ds.load(i)
            except Exception as e:  # noqa: BLE001 - a bad file is listed in the manifest, never fatal
                return {"k": k, "i": i, "x": None, "error": f"{type(e).__name__}: {e}"}
            x = self.ds.transform(img, np.random.default_rng([0]))  # centre crop, no flip: rng unused
            digest = hashlib.sha256(img.convert("RGB").tobytes()).hexdigest()
        else:  # in-memory tensors (builtin:digits)
            x = self.ds[i]["x"]
            digest = hashlib.sha256(x.numpy().tobytes()).hexdigest()
        if flipped:
            x = torch.flip(x, dims=[-1])
        return {"k": k, "i": i, "x": x, "hash": digest, "label": self.ds.label(i)}

    def fingerprint(self, k: int) -> str | None:
        """Size and modification time of item k's source file (None for built-in data): what a re-run
        compares to find sources replaced since a shard was written, without decoding them."""
        return self.ds.source_stat(k % self.n) if hasattr(self.ds, "source_stat") else None


class VideoItems(ImageItems):
    """Item k: the clip of source video k % N (its first `frames` frames at the stride, centre crop),
    flipped when k >= N; the hash is over the decoded frames. Unreadable or too short -> x=None."""

    def __getitem__(self, k: int) -> dict:
        i, flipped = k % self.n, k >= self.n
        if hasattr(self.ds, "load"):  # video files: decode here so a bad file is listed, not fatal
            try:
                raw = self.ds.load(i)
            except Exception as e:  # noqa: BLE001 - a bad file is listed in the manifest, never fatal
                return {"k": k, "i": i, "x": None, "error": f"{type(e).__name__}: {e}"}
            x = self.ds.make(raw, np.random.default_rng([0]))  # no random crop or flip: rng unused
            digest = hashlib.sha256(raw.tobytes()).hexdigest()
        else:  # made in memory (builtin:moving-digits)
            x = self.ds[i]["x"]
            digest = hashlib.sha256(x.numpy().tobytes()).hexdigest()
        if flipped:
            x = torch.flip(x, dims=[-1])
        return {"k": k, "i": i, "x": x, "hash": digest, "label": self.ds.label(i)}


def _collate(items: list[dict]) -> list[dict]:
    return items


def _fast_input(model, xs: torch.Tensor, opts: EncodeOptions) -> torch.Tensor:
    # channels-last: oneDNN's fast (AMX) bf16 convolution path wants NHWC (~2x here). Not for fp32,
    # which stays bit-identical to a plain diffusers encode.
    fmt = torch.channels_last if opts.precision != "no" else torch.contiguous_format
    p = next(model.parameters())
    return xs.to(p.device, p.dtype).contiguous(memory_format=fmt)


class LatentCodec:
    """KL-VAE: posterior means (or seeded samples), float shards, scaling factor from their std."""

    key, fmt = "latents", "aetk-latents"

    def __init__(self, model: KLVAE, opts: EncodeOptions) -> None:
        self.vae, self.opts = model.vae, opts
        self.compute = Compute(model.vae, opts.precision, plan=lambda dt: recorded_plan(model.vae, "encode", dt))

    @torch.no_grad()
    def encode(self, xs: torch.Tensor, keys: list[int]) -> torch.Tensor:
        vae, opts = self.vae, self.opts
        moments = self.compute(lambda t: vae_moments(vae, t, opts.tile), _fast_input(vae, xs, opts))
        post = DiagonalGaussianDistribution(moments.float())
        if not opts.sample:
            return post.mean.float().cpu()
        # Noise seeded per item: the same latents whatever the batch, shard or process split.
        eps = torch.stack([torch.randn(post.mean.shape[1:], generator=torch.Generator().manual_seed(
            opts.seed * 1_000_003 + k)) for k in keys])
        return post.mean.float().cpu() + post.std.float().cpu() * eps

    def store(self, z: torch.Tensor) -> torch.Tensor:
        return z.to(getattr(torch, self.opts.dtype))

    def shard_stats(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        dims = [0, *range(2, z.ndim)]
        return {"stat_sum": z.double().sum(dims), "stat_sumsq": z.double().pow(2).sum(dims)}

    def summarise(self, stats: dict[str, torch.Tensor], count: int, shape: list[int]) -> dict:
        out = {**self.channel_summary(stats, count, shape),
               "model_scaling_factor": float(self.vae.config.scaling_factor)}
        if getattr(self.vae.config, "shift_factor", None) is not None:
            # An SD3/FLUX-style VAE normalises (z - shift) * scale: so do its latents' readers, with the
            # shift measured here (the scale already is 1/std about the mean).
            out["shift_factor"] = out["mean"]
            out["model_shift_factor"] = float(self.vae.config.shift_factor)
        return out

    def channel_summary(self, stats: dict[str, torch.Tensor], count: int, shape: list[int]) -> dict:
        """Storage, per-channel mean and std, and the scaling factor 1/std of the encoded latents."""
        per_channel = int(np.prod(shape[1:]))
        mean = stats["stat_sum"] / (count * per_channel)
        var = stats["stat_sumsq"] / (count * per_channel) - mean.pow(2)
        global_mean = mean.mean()
        std = float(((var + mean.pow(2)).mean() - global_mean.pow(2)).sqrt())
        return {"dtype": self.opts.dtype, "posterior": "sample" if self.opts.sample else "mean",
                "channel_mean": mean.tolist(), "channel_std": var.clamp_min(0).sqrt().tolist(),
                "mean": float(global_mean), "std": std, "scaling_factor": 1.0 / std}


class TokenCodec:
    """VQ tokenizers: integer code grids (B, h, w) or (B, Q, h, w), with codebook usage statistics."""

    key, fmt = "tokens", "aetk-tokens"

    def __init__(self, model: VQVAE, opts: EncodeOptions) -> None:
        self.model, self.opts = model, opts
        self.codebook_size = int(model.quantizer.codebook_size)
        self.compute = Compute(model, opts.precision)

    @torch.no_grad()
    def encode(self, xs: torch.Tensor, keys: list[int]) -> torch.Tensor:
        # The encoder's output is checked finite (a NaN would quantize to some code, silently).
        out = self.compute(lambda t: self.model.encode(t, tile=self.opts.tile),
                           _fast_input(self.model, xs, self.opts))
        return out.indices.cpu()

    def store(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.int16 if self.codebook_size <= 32767 else torch.int32)

    def shard_stats(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        valid = t[t >= 0]  # residual VQ marks unused levels with -1
        return {"code_counts": torch.bincount(valid.flatten().long(), minlength=self.codebook_size)}

    def summarise(self, stats: dict[str, torch.Tensor], count: int, shape: list[int]) -> dict:
        counts = stats["code_counts"].double()
        p = counts / counts.sum()
        entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
        return {"dtype": str(self.store(torch.zeros(1)).dtype).removeprefix("torch."),
                "codebook_size": self.codebook_size, "codebook_usage": float((counts > 0).double().mean()),
                "perplexity": float(np.exp(entropy)), "dead_codes": int((counts == 0).sum()),
                "bits_per_token": float(np.log2(self.codebook_size))}


class VideoLatentCodec(LatentCodec):
    """Video VAE: latent means (or seeded samples) (c, t, h, w) per clip; the manifest adds the model's
    per-channel `latents_mean` / `latents_std` (Wan pipelines' normalisation) and its factors."""

    def __init__(self, model: VideoVAE, opts: EncodeOptions) -> None:
        self.model, self.opts = model, opts
        self.compute = Compute(model.vae, opts.precision, plan=lambda dt: recorded_plan(model.vae, "encode", dt))

    @torch.no_grad()
    def encode(self, xs: torch.Tensor, keys: list[int]) -> torch.Tensor:
        m, opts = self.model, self.opts
        p = next(m.parameters())
        mean, logvar = self.compute(m.encode_moments, xs.to(p.device, p.dtype))
        mean, std = mean.float().cpu(), torch.exp(0.5 * logvar.float()).cpu()
        if not opts.sample:
            return mean
        eps = torch.stack([torch.randn(mean.shape[1:], generator=torch.Generator().manual_seed(
            opts.seed * 1_000_003 + k)) for k in keys])
        return mean + std * eps

    def summarise(self, stats: dict[str, torch.Tensor], count: int, shape: list[int]) -> dict:
        m = self.model
        return {**self.channel_summary(stats, count, shape), "latents_mean": list(m.vae.config.latents_mean),
                "latents_std": list(m.vae.config.latents_std),
                "frames": self.opts.frames, "frame_stride": self.opts.frame_stride,
                "temporal_factor": m.temporal_factor, "spatial_factor": m.spatial_factor}


class VideoTokenCodec(TokenCodec):
    """Video VAE with FSQ: token grids (t, h, w) per clip, with codebook usage statistics."""

    def __init__(self, model: VideoVAE, opts: EncodeOptions) -> None:
        self.model, self.opts = model, opts
        self.codebook_size = int(model.quantizer.codebook_size)
        self.compute = Compute(model.vae, opts.precision)

    @torch.no_grad()
    def encode(self, xs: torch.Tensor, keys: list[int]) -> torch.Tensor:
        p = next(self.model.parameters())
        return self.compute(self.model.tokens, xs.to(p.device, p.dtype)).cpu()

    def summarise(self, stats: dict[str, torch.Tensor], count: int, shape: list[int]) -> dict:
        m = self.model
        return {**super().summarise(stats, count, shape), "frames": self.opts.frames,
                "frame_stride": self.opts.frame_stride, "temporal_factor": m.temporal_factor,
                "spatial_factor": m.spatial_factor}


class AudioTokenCodec(TokenCodec):
    """Codec tokens: each segment -> (n_q, frames) codes; `TokenCodec`'s storage and codebook statistics,
    plus the rates a prior needs to turn its samples back into audio."""

    def __init__(self, model: SoundStream, opts: EncodeOptions, *, n_quantizers: int,
                 segments: AudioSegments) -> None:
        self.model, self.opts = model, opts
        self.codebook_size = int(model.codebook_size)
        self.n_quantizers, self.segments = n_quantizers, segments

    @torch.no_grad()
    def encode(self, xs: torch.Tensor, keys: list[int]) -> torch.Tensor:
        """(B, 1, S) -> codes (B, n_q, F), fp32 compute: the codes `compress` would write."""
        return self.model.encode(xs, self.n_quantizers).cpu()

    def summarise(self, stats: dict[str, torch.Tensor], count: int, shape: list[int]) -> dict:
        m, seg = self.model, self.segments
        return {**super().summarise(stats, count, shape), "sample_rate": m.sample_rate,
                "hop_length": m.hop_length, "frame_rate": m.frame_rate, "n_quantizers": self.n_quantizers,
                "kbps": m.bitrate(self.n_quantizers) / 1000, "segment_samples": seg.segment_samples,
                "segment_seconds": seg.segment_samples / m.sample_rate,
                "files": [{"path": p, "segments": n} for p, n in zip(seg.files, seg.segments_per_file)],
                "too_short": seg.too_short}


def _encode_shard(codec, items: ImageItems | AudioSegments, s: int, out: Path, opts: EncodeOptions, bar) -> None:
    lo, hi = s * opts.shard_size, min((s + 1) * opts.shard_size, len(items))
    workers = opts.num_workers if opts.num_workers is not None else min(4, max(0, (os.cpu_count() or 2) - 2))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(items, range(lo, hi)), batch_size=opts.batch_size,
                                         collate_fn=_collate, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    latents, index, flip, labels, bad, hashes = [], [], [], [], [], {}
    sources = {str(k): items.fingerprint(k) for k in range(lo, hi)}
    for batch in loader:
        good = [b for b in batch if b["x"] is not None]
        for b in batch:
            if b["x"] is None:
                bad.append({"index": b["i"], "source": items.ds.describe(b["i"]), "error": b["error"]})
                log.warning("skipping unreadable item %s (%s)", items.ds.describe(b["i"]), b["error"])
        if good:
            latents.append(codec.encode(torch.stack([b["x"] for b in good]), [b["k"] for b in good]))
            index += [b["i"] for b in good]
            flip += [b["k"] >= items.n for b in good]
            labels += [b.get("label") for b in good]
            hashes.update({str(b["i"]): b["hash"] for b in good})
        bar.update(len(batch))
    tensors = {"index": torch.tensor(index, dtype=torch.long), "flip": torch.tensor(flip, dtype=torch.bool)}
    if getattr(items.ds, "class_names", None):  # labelled source: a class per item for conditional priors
        tensors["label"] = torch.tensor(labels, dtype=torch.long)
    if latents:  # a shard of only unreadable files holds no data tensor
        z = torch.cat(latents)
        tensors.update({codec.key: codec.store(z).contiguous(), **codec.shard_stats(z)})
    write_shard(shard_path(out, s), tensors, {"bad": bad, "hashes": hashes, "fingerprints": sources})


def _stale(items, s: int, out: Path, shard_size: int) -> str | None:
    """Why shard s must be encoded (again), or None when it is intact and its sources are the files
    it was encoded from (sizes and modification times; `shard_problem` checks the tensors)."""
    path = shard_path(out, s)
    problem = shard_problem(path)
    if problem is not None:
        return problem
    recorded = shard_meta(path).get("fingerprints")
    if recorded is None:  # written before fingerprints: trusted as complete
        return None
    lo, hi = s * shard_size, min((s + 1) * shard_size, len(items))
    changed = sum(recorded.get(str(k)) != items.fingerprint(k) for k in range(lo, hi))
    return f"{changed} of its {hi - lo} sources changed since it was encoded" if changed else None


def model_hash(model) -> str:
    """sha256 over the weights (names, shapes, bytes): which model made these latents."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _merge_manifest(out: Path, n_shards: int, items: ImageItems | AudioSegments, codec, model_digest: str,
                    opts: EncodeOptions,
                    data: str) -> dict:
    count, bad, sources, shards = 0, [], {}, []
    stats: dict[str, torch.Tensor] = {}
    shape = None
    for s in range(n_shards):
        path = shard_path(out, s)
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["aetk"])
            n = f.get_slice("index").get_shape()[0]
            if n:
                shape = f.get_slice(codec.key).get_shape()[1:]
                for k in f.keys():
                    if k.startswith(("stat_", "code_counts")):
                        stats[k] = stats[k] + f.get_tensor(k) if k in stats else f.get_tensor(k)
        count += n
        bad += meta["bad"]
        sources.update(meta["hashes"])
        shards.append({"file": path.name, "count": n, "sha256": file_sha256(path)})
    if count == 0:
        raise ValueError(f"no readable image or clip in {data}: nothing was encoded ({len(bad)} unreadable)")
    bad_unique = {b["index"]: b for b in bad}  # a bad image with --flip is listed once
    manifest = {
        "format": codec.fmt, "version": FORMAT_VERSION, "count": count, f"{codec.key[:-1]}_shape": list(shape),
        "flip_copies": opts.flip, "resolution": opts.resolution, "precision": opts.precision,
        **({"precision_plan": codec.compute.describe()} if opts.precision.startswith("auto") else {}),
        **codec.summarise(stats, count, list(shape)),
        **({"num_classes": len(items.ds.class_names), "class_names": list(items.ds.class_names)}
           if getattr(items.ds, "class_names", None) else {}),
        "model_hash": model_digest, "data": data, "shard_size": opts.shard_size, "shards": shards,
        "sources": [{"index": int(i), "source": items.ds.describe(int(i)), "sha256": h}
                    for i, h in sorted(sources.items(), key=lambda kv: int(kv[0]))],
        "bad": sorted(bad_unique.values(), key=lambda b: b["index"]),
    }
    atomic_write(out / "manifest.json", lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    return manifest


def _claim(out: Path, job: dict, state) -> None:
    """Record what this directory encodes; refuse to mix shards of another model or setting."""
    path = out / "encode_job.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != job:
            diff = [f"{k}: {old.get(k)!r} there, {job.get(k)!r} now" for k in sorted(set(old) | set(job))
                    if old.get(k) != job.get(k)]
            raise ValueError(f"{out} holds an encode of a different job ({'; '.join(diff)}); pass its options "
                             "to resume it, or use another --out")
    state.wait_for_everyone()
    if state.is_main_process and not path.is_file():
        path.write_text(json.dumps(job, indent=1))


def _run(codec, items, out: Path, opts: EncodeOptions, *, job: dict, digest: str, data: str, unit: str,
         state: Processes) -> dict:
    """Encode every shard of `items` this process owns that is not done yet, then (main process)
    merge the manifest. Collective: every process calls it."""
    _claim(out, job, state)
    n_shards = -(-len(items) // opts.shard_size)
    mine = range(state.process_index, n_shards, state.num_processes)
    todo = []
    for s in mine:
        why = _stale(items, s, out, opts.shard_size)
        if why is not None:
            todo.append(s)
            if why != "missing":
                log.warning("encoding %s again: %s", shard_path(out, s).name, why)
    total = sum(min(opts.shard_size, len(items) - s * opts.shard_size) for s in todo)
    bar = tqdm(total=total, desc=f"encode[{state.process_index}]", unit=unit,
               disable=not (opts.progress and state.is_local_main_process), mininterval=1.0)
    for s in todo:
        _encode_shard(codec, items, s, out, opts, bar)
        fault_point("kill_encode_after_shard", s)
    bar.close()
    state.wait_for_everyone()
    manifest = None
    if state.is_main_process:
        manifest = _merge_manifest(out, n_shards, items, codec, digest, opts, data)
    state.wait_for_everyone()
    return manifest if manifest is not None else json.loads((out / "manifest.json").read_text())


def _image_items(data: str, opts: EncodeOptions) -> ImageItems:
    try:
        ds = build_image_dataset(data, resolution=opts.resolution, seed=opts.seed, random_crop=False,
                                 random_flip=False, split=opts.split, builtin_size=opts.builtin_size)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"--data: {e}") from None
    return ImageItems(ds, opts.flip)


VIDEO_OPTIONS = ("frames", "frame_stride", "builtin_digits")


def _image_job(digest: str, data: str, items: ImageItems, opts: EncodeOptions, *, video: bool = False) -> dict:
    """What an encode directory holds: the model, the data and every option that changes the shards.
    Options added later are left out at their defaults, so older encode directories still resume."""
    later_defaults = {"split": "train", "builtin_size": 512, "builtin_digits": BUILTIN_DIGITS}
    return {"model_hash": digest, "data": data, "items": len(items),
            **{k: v for k, v in vars(opts).items() if k not in ("num_workers", "progress", "batch_size")
               and (video or k not in VIDEO_OPTIONS) and later_defaults.get(k, object()) != v}}


def _prepare(model: KLVAE | VQVAE, data: str, out: str | Path, opts: EncodeOptions, state: Processes):
    """(model on the device, the items, the output directory): every check before anything is written."""
    f = model.downsampling_factor
    if opts.resolution % f:
        lo, hi = opts.resolution // f * f, -(-opts.resolution // f) * f
        raise ValueError(f"--resolution {opts.resolution}: must be a multiple of the model's downsampling factor "
                         f"{f} (e.g. {lo or hi} or {hi}), or the latents would silently cover a cropped image")
    items = _image_items(data, opts)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; an encode is written as a directory")
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(state.device).eval()
    if opts.precision != "no":
        model = model.to(memory_format=torch.channels_last)
    return model, items, out


def encode_latents(vae: KLVAE, data: str, out: str | Path, opts: EncodeOptions, *,
                   state: Processes | None = None) -> dict:
    """The images at `data` -> KL latent shards in `out` (see the module docstring); the manifest.
    Collective under a launcher (pass accelerate's `PartialState`)."""
    state = state or OneProcess()
    vae, items, out = _prepare(vae, data, out, opts, state)
    digest = model_hash(vae.vae)  # the diffusers model's own keys, as aetk 0.1 hashed them
    return _run(LatentCodec(vae, opts), items, out, opts, job=_image_job(digest, data, items, opts), digest=digest,
                data=data, unit="img", state=state)


def encode_tokens(model: VQVAE, data: str, out: str | Path, opts: EncodeOptions, *,
                  state: Processes | None = None) -> dict:
    """The images at `data` -> token shards of the VQ tokenizer `model` in `out`; the manifest."""
    state = state or OneProcess()
    model, items, out = _prepare(model, data, out, opts, state)
    digest = model_hash(model)
    return _run(TokenCodec(model, opts), items, out, opts, job=_image_job(digest, data, items, opts), digest=digest,
                data=data, unit="img", state=state)


def encode_audio(model: SoundStream, data_dir: str | Path, out_dir: str | Path, *, segment_seconds: float = 5.0,
                 shard_size: int = 1024, kbps: float | None = None, batch_size: int = 8,
                 num_workers: int | None = None, progress: bool = True, state: Processes | None = None) -> dict:
    """Every audio file under `data_dir` -> consecutive `segment_seconds` segments (`AudioSegments`
    says what happens to the last one) -> (n_q, frames) int16 codes at `kbps` (None: all levels),
    written as token shards (`tokens` (n, n_q, frames), `index`, `flip`, `code_counts`) and a
    `manifest.json` (format `aetk-tokens`: count, token_shape, shards, codebook statistics, model_hash
    (as in `.aetk` files), sample_rate, hop_length, frame_rate, n_quantizers, files, sources, bad).
    `latent_diffusion.shards.LatentShardDataset` reads it. Resumable like `aetk encode`; unreadable
    files are listed in `bad`, never fatal. Collective under a launcher."""
    if segment_seconds <= 0 or shard_size < 1 or batch_size < 1:
        raise ValueError(f"need segment_seconds > 0, shard_size >= 1, batch_size >= 1; got {segment_seconds}, "
                         f"{shard_size}, {batch_size}")
    state = state or OneProcess()
    model = model.eval()
    n_q = model.num_quantizers if kbps is None else model.n_quantizers_for(kbps)
    segment_samples = max(1, round(segment_seconds * model.sample_rate))
    files = AudioFolder(str(data_dir), sample_rate=model.sample_rate, segment_samples=segment_samples).files
    items = AudioSegments(files, sample_rate=model.sample_rate, segment_samples=segment_samples)
    if all(err for _, _, err in items.items):
        raise ValueError(f"no readable audio segment in {data_dir} ({len(files)} files; unreadable or shorter "
                         f"than half a segment of {segment_seconds} s)")
    digest = state_dict_hash(model.state_dict())
    opts = EncodeOptions(resolution=None, batch_size=batch_size, shard_size=shard_size, precision="no",
                         num_workers=num_workers, progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    job = {"kind": "audio", "model_hash": digest, "data": str(data_dir), "items": len(items),
           "segment_samples": segment_samples, "n_quantizers": n_q, "shard_size": shard_size}
    codec = AudioTokenCodec(model, opts, n_quantizers=n_q, segments=items)
    return _run(codec, items, out, opts, job=job, digest=digest, data=str(data_dir), unit="seg", state=state)


def encode_video(model: VideoVAE, data: str, out: str | Path, opts: EncodeOptions, *,
                 state: Processes | None = None) -> dict:
    """The videos at `data` (a folder of video files or builtin:moving-digits) -> latent shards
    (c, t, h, w) of the video VAE `model`, or token shards (t, h, w) when it has an FSQ bottleneck;
    each clip is the first `opts.frames` frames of a file at `opts.frame_stride`, centre-cropped to
    `opts.resolution`. Resumable, multi-process and checked like `encode_latents`; the manifest."""
    state = state or OneProcess()
    f = model.spatial_factor
    if opts.resolution % f:
        raise ValueError(f"--resolution {opts.resolution}: must be a multiple of the model's spatial factor {f}")
    try:
        model.latent_frames(opts.frames)
    except ValueError as e:
        raise ValueError(f"--frames: {e}") from None
    try:
        ds = build_video_dataset(data, frames=opts.frames, frame_stride=opts.frame_stride,
                                 resolution=opts.resolution, seed=opts.seed, random_crop=False, random_flip=False,
                                 split=opts.split, builtin_size=opts.builtin_size,
                                 builtin_digits=opts.builtin_digits)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"--data: {e}") from None
    items = VideoItems(ds, opts.flip)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; an encode is written as a directory")
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(state.device).eval()
    digest = model_hash(model)
    codec = VideoTokenCodec(model, opts) if model.quantizer is not None else VideoLatentCodec(model, opts)
    return _run(codec, items, out, opts, job={"kind": "video", **_image_job(digest, data, items, opts, video=True)},
                digest=digest, data=data, unit="clip", state=state)
