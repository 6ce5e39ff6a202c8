"""Images stored as tar shards in the WebDataset layout (`KEY.jpg`, `KEY.png`, ... members),
read by random access: the members' byte offsets are indexed once from the tar headers, so the
loader's deterministic, resumable, process-split sampler (train/data/loader.py) applies unchanged
— no streaming shuffle buffer, every item exactly once per epoch, resume at any step."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from PIL import Image

from tokenizers_ae.data.images import IMAGE_SUFFIXES, ImageDataset, ImageTransform, open_image_file


def tar_paths(path: str | Path) -> list[Path]:
    """A .tar file, or the sorted .tar files of a directory."""
    p = Path(path)
    if p.is_file() and p.suffix == ".tar":
        return [p]
    return sorted(p.glob("*.tar")) if p.is_dir() else []


class TarShardImages(ImageDataset):
    """Image members of tar shards, in shard then member order."""

    def __init__(self, path: str, *, transform: ImageTransform, seed: int = 0) -> None:
        super().__init__(path=path, transform=transform, seed=seed)
        self.members: list[tuple[str, int, int, str]] = []  # (shard, data offset, size, member name)
        for shard in tar_paths(path):
            with tarfile.open(shard) as tf:  # reads headers only
                for m in tf:
                    if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                        self.members.append((str(shard), m.offset_data, m.size, m.name))
        if not self.members:
            raise ValueError(f"no image members found in the tar shards at {path}")

    def __len__(self) -> int:
        return len(self.members)

    def load(self, i: int) -> Image.Image:
        shard, offset, size, _ = self.members[i]
        with open(shard, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        return open_image_file(io.BytesIO(data))

    def describe(self, i: int) -> str:
        shard, _, _, name = self.members[i]
        return f"{shard}:{name}"


def write_shards(folder: str | Path, out: str | Path, *, shard_size: int = 1000) -> list[Path]:
    """Pack the images of `folder` (recursive, sorted) into `out/shard-NNNNNN.tar` files of
    `shard_size` images, WebDataset-style (member `KEY.ext`, KEY = the relative path without suffix)."""
    folder, out = Path(folder), Path(out)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images found in {folder}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for s in range(0, len(files), shard_size):
        path = out / f"shard-{s // shard_size:06d}.tar"
        tmp = path.with_suffix(".tar.tmp")
        with tarfile.open(tmp, "w") as tf:
            for f in files[s:s + shard_size]:
                key = f.relative_to(folder).with_suffix("").as_posix().replace(".", "_")
                tf.add(f, arcname=key + f.suffix.lower())
        tmp.replace(path)
        written.append(path)
    return written
