"""Images stored as tar shards in the WebDataset layout (`KEY.jpg`, `KEY.png`, ... members),
read by random access: the members' byte offsets are indexed once from the tar headers, so the
loader's deterministic, resumable, process-split sampler (train/data/loader.py) applies unchanged
— no streaming shuffle buffer, every item exactly once per epoch, resume at any step."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

from PIL import Image

from tokenizers_ae.files import file_stat
from tokenizers_ae.data.images import IMAGE_SUFFIXES, ImageDataset, ImageTransform, open_image_file


INDEX = "index.json"
"""Written beside the shards by `write_shards`: each shard's member names, so members a damaged
shard lost are counted as unreadable instead of silently missing."""
log = logging.getLogger("aetk.data")


def tar_paths(path: str | Path) -> list[Path]:
    """A .tar file, or the sorted .tar files of a directory."""
    p = Path(path)
    if p.is_file() and p.suffix == ".tar":
        return [p]
    return sorted(p.glob("*.tar")) if p.is_dir() else []


def scan_tar(shard: Path) -> tuple[list[tuple[str, int, int, str]], str]:
    """The image members of one shard as (shard, data offset, size, name), read from the headers, and
    "" or why the shard ends early (truncated: its end-of-archive blocks, or a member's data, are
    missing). ValueError naming the file when it is not a tar archive."""
    members, size = [], shard.stat().st_size
    try:
        with tarfile.open(shard) as tf:  # reads headers only
            for m in tf:
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                    members.append((str(shard), m.offset_data, m.size, m.name))
            end = tf.offset  # where the next header would start: the end-of-archive blocks
    except tarfile.ReadError as e:
        if not members:
            raise ValueError(f"{shard}: not a tar archive ({e})") from None
        return members, f"truncated after {len(members)} image members ({e})"
    if members and members[-1][1] + members[-1][2] > size:
        return members, f"truncated inside member {members[-1][3]}"
    if size < end + 2 * tarfile.BLOCKSIZE:
        return members, f"truncated: it ends after {len(members)} image members without the end-of-archive blocks"
    return members, ""


class TarShardImages(ImageDataset):
    """Image members of tar shards, in shard then member order.

    With the `index.json` that `write_shards` writes, the items are the members the index lists:
    one a damaged shard lost fails to load and is counted and warned like any unreadable image.
    Without one, a shard found truncated is warned about (the members it lost cannot be counted).
    """

    def __init__(self, path: str, *, transform: ImageTransform, seed: int = 0) -> None:
        super().__init__(path=path, transform=transform, seed=seed)
        self.members: list[tuple[str, int, int, str]] = []  # (shard, data offset, size, member name)
        shards = tar_paths(path)
        index_path = (Path(path) if Path(path).is_dir() else Path(path).parent) / INDEX
        index = json.loads(index_path.read_text())["shards"] if index_path.is_file() else None
        for shard in shards:
            found, problem = scan_tar(shard)
            if index is not None and shard.name in index:
                located = {name: (s, off, n, name) for s, off, n, name in found}
                self.members += [located.get(name, (str(shard), -1, 0, name)) for name in index[shard.name]]
                lost = sum(name not in located for name in index[shard.name])
                if lost:
                    log.warning("%s: %s; %d of its %d indexed images are missing and will be skipped as "
                                "unreadable", shard, problem or "members missing", lost, len(index[shard.name]))
            else:
                self.members += found
                if problem:
                    log.warning("%s: %s; the images it lost are not counted (scripts/make_shards.py writes an "
                                "%s that lets them be)", shard, problem, INDEX)
        if not self.members:
            raise ValueError(f"no image members found in the tar shards at {path}")

    def __len__(self) -> int:
        return len(self.members)

    def load(self, i: int) -> Image.Image:
        shard, offset, size, name = self.members[i]
        if offset < 0:
            raise OSError(f"member {name} is missing from {shard} (truncated or damaged shard)")
        with open(shard, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) < size:
            raise OSError(f"member {name} of {shard} is cut off ({len(data)} of {size} bytes)")
        return open_image_file(io.BytesIO(data))

    def describe(self, i: int) -> str:
        shard, _, _, name = self.members[i]
        return f"{shard}:{name}"

    def source_stat(self, i: int) -> str:
        shard, offset, size, name = self.members[i]
        return f"{file_stat(shard)}:{name}:{offset}:{size}"


def write_shards(folder: str | Path, out: str | Path, *, shard_size: int = 1000) -> list[Path]:
    """Pack the images of `folder` (recursive, sorted) into `out/shard-NNNNNN.tar` files of
    `shard_size` images, WebDataset-style (member `KEY.ext`, KEY = the relative path without suffix),
    and `out/index.json` listing each shard's members."""
    folder, out = Path(folder), Path(out)
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images found in {folder}")
    out.mkdir(parents=True, exist_ok=True)
    written, index = [], {}
    for s in range(0, len(files), shard_size):
        path = out / f"shard-{s // shard_size:06d}.tar"
        tmp = path.with_suffix(".tar.tmp")
        names = []
        with tarfile.open(tmp, "w") as tf:
            for f in files[s:s + shard_size]:
                key = f.relative_to(folder).with_suffix("").as_posix().replace(".", "_")
                names.append(key + f.suffix.lower())
                tf.add(f, arcname=names[-1])
        tmp.replace(path)
        written.append(path)
        index[path.name] = names
    (out / INDEX).write_text(json.dumps({"format": "aetk-tar-index", "version": 1, "shards": index}, indent=1))
    return written
