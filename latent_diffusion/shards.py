"""The shard format of `aetk encode`: writing one shard, and reading a whole encode
(memory-mapped; no whole-dataset load). `latent_diffusion.encode` documents the layout.

Integrity: each shard's metadata carries the sha256 of its tensors (`tensors_sha256`) and the
manifest the sha256 of each shard file. A re-run of `aetk encode` re-encodes a shard whose tensors
do not match; the reader refuses a shard whose file does not match the manifest, naming it.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tokenizers_ae.pretrained import file_sha256

FORMAT_VERSION = 1
SUPPORTED_VERSION = FORMAT_VERSION
FORMATS = {"aetk-latents": ("latents", "latent"), "aetk-tokens": ("tokens", "tokens")}
"""manifest format -> (tensor name in the shards, key in the returned items)"""


def shard_path(out: Path, s: int) -> Path:
    return Path(out) / f"shard-{s:05d}.safetensors"


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


def shard_meta(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["aetk"])


def shard_problem(path: Path) -> str | None:
    """Why `path` is not a complete, intact shard of this format version (None when it is): missing,
    unreadable, another version, or tensors that do not match the checksum written with them."""
    if not path.is_file():
        return "missing"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["aetk"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any unreadable shard is reported (and encoded again)
        return f"unreadable ({type(e).__name__}: {e})"
    if meta.get("version") != FORMAT_VERSION:
        return f"format version {meta.get('version')}, not {FORMAT_VERSION}"
    if "sha256" in meta and tensors_sha256(tensors) != meta["sha256"]:
        return "damaged (its tensors do not match the checksum written with them)"
    return None


def write_shard(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """One shard, with the checksum of its tensors, written to a temporary name and renamed: a kill
    leaves no partial shard."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    meta = {"version": FORMAT_VERSION, "sha256": tensors_sha256(tensors), **meta}
    save_file(tensors, tmp, metadata={"aetk": json.dumps(meta)})
    os.replace(tmp, path)


class LatentShardDataset(torch.utils.data.Dataset):
    """Item i -> {"latent": (c, h, w) float32, "index": source item, "flip": bool} for KL latents,
    or {"tokens": (h, w) long, ...} for VQ tokens (`aetk-tokens` manifests); plus "label": int
    when the manifest has `num_classes` (a labelled source).

    `scale=True` multiplies latents by the manifest's scaling factor (1/std, as Stable
    Diffusion's 0.18215), the normalisation a diffusion prior trains in; `unscale` inverts it.
    Shards are opened lazily per process (DataLoader workers each open their own).
    """

    def __init__(self, root: str | Path, *, scale: bool = False) -> None:
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{self.root}: no manifest.json (not an `aetk encode` output, or unfinished)")
        self.manifest = json.loads(path.read_text())
        fmt = self.manifest.get("format")
        if fmt not in FORMATS or self.manifest.get("version") != SUPPORTED_VERSION:
            raise ValueError(f"{path}: format {fmt} v{self.manifest.get('version')} is not one of "
                             f"{sorted(FORMATS)} v{SUPPORTED_VERSION}")
        self.tensor_key, self.item_key = FORMATS[fmt]
        if scale and fmt != "aetk-latents":
            raise ValueError("scale=True applies to KL latents, not to tokens")
        self.scaling_factor = float(self.manifest.get("scaling_factor", 1.0))
        self.shift_factor = float(self.manifest.get("shift_factor", 0.0))
        self.scale = scale
        self.num_classes = int(self.manifest.get("num_classes", 0))
        """Classes of a labelled source (0: unlabelled); items then carry "label"."""
        self.class_names = list(self.manifest.get("class_names", []))
        counts = [s["count"] for s in self.manifest["shards"]]
        self._starts = [0]
        for c in counts:
            self._starts.append(self._starts[-1] + c)
        self._handles: dict[int, object] = {}

    def __len__(self) -> int:
        return self._starts[-1]

    def _shard(self, s: int):
        """Shard s, opened once per process; its file is checked against the manifest's checksum first."""
        if s not in self._handles:
            entry = self.manifest["shards"][s]
            path = self.root / entry["file"]
            if "sha256" in entry and file_sha256(path) != entry["sha256"]:
                raise ValueError(f"{path}: damaged (its checksum differs from manifest.json's); re-run the "
                                 "`aetk encode` command that wrote it to encode it again")
            self._handles[s] = safe_open(str(path), framework="pt")
        return self._handles[s]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} latents")
        s = bisect.bisect_right(self._starts, i) - 1
        f, j = self._shard(s), i - self._starts[s]
        z = f.get_slice(self.tensor_key)[j:j + 1][0]
        z = z.long() if self.tensor_key == "tokens" else z.float()
        if self.scale:
            z = (z - self.shift_factor) * self.scaling_factor
        item = {self.item_key: z, "index": int(f.get_slice("index")[j:j + 1][0]),
                "flip": bool(f.get_slice("flip")[j:j + 1][0])}
        if self.num_classes:
            item["label"] = int(f.get_slice("label")[j:j + 1][0])
        return item

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents back to the decoder's units."""
        return z / self.scaling_factor + self.shift_factor

    def __getstate__(self):  # file handles do not cross process boundaries
        return {**self.__dict__, "_handles": {}}
