"""Audio datasets for codec training: fixed-length mono segments from a folder of WAV / FLAC / OGG files.

The contract of `tokenizers_ae.data.images`: every item is a dict {"x": (1, segment_samples) float32 in [-1, 1],
"index": int, "bad": list[int]}. Cropping draws only from `numpy.random.default_rng([seed, epoch, i])`, so
item i is the same whatever the number of workers or processes; `set_epoch(e)` gives a fresh draw per epoch.
A file that cannot be decoded never stops a run: it is logged once, reported in "bad", and the next index
(i + 1, i + 2, ... mod n) is served in its place. Batches collate with `collate_audio` (= `collate_images`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from tokenizers_ae.data.images import collate_images
from tokenizers_ae.data.skipping import SkippingDataset
from tokenizers_ae.files import file_stat

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga")
collate_audio = collate_images  # stacks "x" of any shape: (B, 1, S) here


def load_audio(path: str, sample_rate: int) -> np.ndarray:
    """Decode a whole file -> (T,) float32 mono at `sample_rate`, in [-1, 1].

    Channels are averaged; other rates are resampled with scipy's polyphase filter (`resample_poly`).
    Raises on an unreadable file, an empty one, or non-finite samples.
    """
    data, sr = sf.read(path, dtype="float32", always_2d=True)  # (T, C)
    if data.shape[0] == 0:
        raise ValueError("no samples")
    x = data.mean(axis=1)  # (T,)
    if not np.isfinite(x).all():
        raise ValueError("non-finite samples")
    if sr != sample_rate:
        g = math.gcd(int(sr), int(sample_rate))
        x = resample_poly(x, sample_rate // g, sr // g).astype(np.float32)
    return np.clip(x, -1.0, 1.0)


def rms_db(x: np.ndarray) -> float:
    """Root-mean-square level in dBFS (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    return 20 * math.log10(rms) if rms > 0 else -math.inf


class AudioFolder(SkippingDataset):
    """Every audio file (WAV, FLAC, OGG; any case) under `root`, recursively in sorted order; hidden files and
    directories skipped. Item i is a `segment_samples` crop of file i, mono at `sample_rate`.

    With `random_crop`, the crop start is drawn uniformly; a crop quieter than `silence_db` dBFS is redrawn,
    up to `silence_tries` draws in all, keeping the loudest (so a silent file still serves, as silence).
    Without it, the centre crop. Files shorter than a segment are zero-padded at the end. With
    `silence_prob`, that share of crops is zeroed from a uniform cut point on (an utterance ending in
    digital silence). Files are decoded whole at every access: split long recordings into clips of
    seconds to minutes.
    """

    what = "audio file"

    def __init__(self, root: str, *, sample_rate: int, segment_samples: int, seed: int = 0,
                 random_crop: bool = True, silence_db: float = -40.0, silence_tries: int = 5,
                 silence_prob: float = 0.0) -> None:
        if not os.path.isdir(root):
            raise ValueError(f"audio folder does not exist or is not a directory: {root}")
        if sample_rate < 1 or segment_samples < 1 or silence_tries < 1:
            raise ValueError(f"sample_rate, segment_samples and silence_tries must be positive, got "
                              f"{sample_rate}, {segment_samples}, {silence_tries}")
        super().__init__(path=root, seed=seed)
        self.sample_rate, self.segment_samples = sample_rate, segment_samples
        self.random_crop, self.silence_db, self.silence_tries = random_crop, silence_db, silence_tries
        self.silence_prob = silence_prob
        files = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            files += [os.path.join(dirpath, f) for f in filenames
                      if not f.startswith(".") and os.path.splitext(f)[1].lower() in AUDIO_SUFFIXES]
        self.files: list[str] = sorted(files)  # os.walk order depends on the filesystem
        if not self.files:
            raise ValueError(f"no audio files found in {root} (looked for {', '.join(AUDIO_SUFFIXES)}, any case)")

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> np.ndarray:
        """Decode file i fully -> (T,) float32 at the model rate (raises on any problem)."""
        return load_audio(self.files[i], self.sample_rate)

    def describe(self, i: int) -> str:
        return self.files[i]

    def crop(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(T,) -> (segment_samples,): silence-aware random crop (or centre crop), zero-padded if short."""
        s = self.segment_samples
        if x.shape[0] <= s:
            return np.pad(x, (0, s - x.shape[0]))
        if not self.random_crop:
            start = (x.shape[0] - s) // 2
            return x[start:start + s]
        best, best_db = None, -math.inf
        for _ in range(self.silence_tries):
            start = int(rng.integers(0, x.shape[0] - s + 1))
            seg = x[start:start + s]
            level = rms_db(seg)
            if best is None or level > best_db:
                best, best_db = seg, level
            if level >= self.silence_db:
                break
        return best

    def make(self, raw: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        x = self.crop(raw, rng)
        if self.silence_prob and rng.random() < self.silence_prob:  # the same draws on every resume
            x = x.copy()
            x[int(rng.integers(0, x.shape[0])):] = 0.0
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]  # (1, S)


class AudioSegments(torch.utils.data.Dataset):
    """The items `aetk encode` writes to token shards (`latent_diffusion.encode`): consecutive
    `segment_samples` segments of every file in order. The last, partial segment is zero-padded when
    it holds at least half a segment and dropped otherwise (so a file under half a segment gives
    none: listed as `too_short`).
    A file whose header cannot be read becomes one unreadable item, so it is listed in the
    manifest's `bad` like any item that fails to decode.

    Item k -> {"k", "i": k, "x": (1, segment_samples) float32, "hash": sha256 of its samples}, or
    x=None with the error. Files are decoded whole; the last one is cached, as consecutive items
    share it.
    """

    def __init__(self, files: Sequence[str], *, sample_rate: int, segment_samples: int) -> None:
        self.files, self.sample_rate, self.segment_samples = list(files), sample_rate, segment_samples
        self.items: list[tuple[int, int, str | None]] = []  # (file, start sample, probe error)
        self.segments_per_file: list[int] = []
        self.too_short: list[str] = []
        for f, path in enumerate(self.files):
            try:
                info = sf.info(path)
                if info.frames <= 0:
                    raise ValueError("no samples")
                length = math.ceil(info.frames * sample_rate / info.samplerate)  # resample_poly's output length
            except Exception as e:  # noqa: BLE001 - an unreadable file is listed, never fatal
                self.items.append((f, 0, f"{type(e).__name__}: {e}"))
                self.segments_per_file.append(0)
                continue
            n = length // segment_samples + (length % segment_samples >= segment_samples / 2)
            self.items += [(f, j * segment_samples, None) for j in range(n)]
            self.segments_per_file.append(n)
            if n == 0:
                self.too_short.append(path)
        self.ds = self  # the writer asks `items.ds.describe(i)`
        self.n = self.total = len(self.items)  # no flipped copies
        self._cache: tuple[int, np.ndarray | str] | None = None

    def __len__(self) -> int:
        return self.total

    def fingerprint(self, k: int) -> str:
        """Size and modification time of segment k's file (see `latent_diffusion.encode`)."""
        return file_stat(self.files[self.items[k][0]])

    def describe(self, k: int) -> str:
        f, start, err = self.items[k]
        return self.files[f] if err else f"{self.files[f]}[{start}:{start + self.segment_samples}]"

    def _decode(self, f: int) -> np.ndarray | str:
        if self._cache is None or self._cache[0] != f:
            try:
                audio: np.ndarray | str = load_audio(self.files[f], self.sample_rate)
            except Exception as e:  # noqa: BLE001
                audio = f"{type(e).__name__}: {e}"
            self._cache = (f, audio)
        return self._cache[1]

    def __getitem__(self, k: int) -> dict:
        f, start, err = self.items[k]
        audio = err or self._decode(f)
        if isinstance(audio, str):
            return {"k": k, "i": k, "x": None, "error": audio}
        seg = audio[start:start + self.segment_samples]
        seg = np.pad(seg, (0, self.segment_samples - seg.shape[0])).astype(np.float32)  # (S,)
        return {"k": k, "i": k, "x": torch.from_numpy(seg)[None], "hash": hashlib.sha256(seg.tobytes()).hexdigest()}
