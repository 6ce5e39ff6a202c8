"""Audio datasets for codec training: fixed-length mono segments from a folder of WAV / FLAC / OGG files.

The contract of `train.data.images`: every item is a dict {"x": (1, segment_samples) float32 in [-1, 1],
"index": int, "bad": list[int]}. Cropping draws only from `numpy.random.default_rng([seed, epoch, i])`, so
item i is the same whatever the number of workers or processes; `set_epoch(e)` gives a fresh draw per epoch.
A file that cannot be decoded never stops a run: it is logged once, reported in "bad", and the next index
(i + 1, i + 2, ... mod n) is served in its place. Batches collate with `collate_audio` (= `collate_images`).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from train.config import ConfigError
from train.data.images import collate_images
from train.data.skipping import SkippingDataset


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga")
collate_audio = collate_images  # stacks "x" of any shape: (B, 1, S) here


def load_audio(path: str, sample_rate: int) -> np.ndarray:
    """Decode a whole file -> (T,) float32 mono at `sample_rate`, in [-1, 1].

    Channels are averaged; other rates are resampled with scipy's polyphase filter (`resample_poly`).
    Raises on an unreadable file, an empty one, or non-finite samples.
    """
    import soundfile as sf
    from scipy.signal import resample_poly

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
            raise ConfigError(f"audio folder does not exist or is not a directory: {root}")
        if sample_rate < 1 or segment_samples < 1 or silence_tries < 1:
            raise ConfigError(f"sample_rate, segment_samples and silence_tries must be positive, got "
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
            raise ConfigError(f"no audio files found in {root} (looked for {', '.join(AUDIO_SUFFIXES)}, any case)")

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
