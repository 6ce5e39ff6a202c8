"""Real recordings that Debian packages ship, planned into train and validation by source.

Speech:
  * tuxpaint-stamps-default: spoken descriptions of Tux Paint's stamps, recorded by volunteers in many
    languages (`*_desc*.ogg`). Split by stamp: every language's reading of a stamp is in one split.
  * hedgewars-data: voice packs, one actor per pack (exclamations, taunts). Split by pack.
  * klettres-data: letters and syllables read aloud, one speaker per language. Split by language.
Music:
  * wesnoth-1.16-music and hedgewars-data: orchestral and game soundtracks, excerpts of a few seconds
    from fixed points in each track. Split by track.
`mate-backgrounds`, `gnome-backgrounds`, `oxygen-sounds` and `ocean-sound-theme` are kept for independent
evaluation: no root below points into them.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACKAGES = ("tuxpaint-stamps-default", "hedgewars-data", "klettres-data", "wesnoth-1.16-music")


@dataclass(frozen=True)
class Roots:
    """Where each package keeps its recordings."""

    tuxpaint: Path = Path("/usr/share/tuxpaint/stamps")
    hedgewars_voices: Path = Path("/usr/share/games/hedgewars/Data/Sounds/voices")
    klettres: Path = Path("/usr/share/klettres")
    music: tuple[tuple[str, Path], ...] = (("wesnoth", Path("/usr/share/games/wesnoth/1.16/data/core/music")),
                                           ("hedgewars", Path("/usr/share/games/hedgewars/Data/Music")))

    def under(self, prefix: str | Path) -> Roots:
        """The same places below `prefix` (packages extracted with `dpkg -x`, or a chroot)."""
        def move(p: Path) -> Path:
            return Path(prefix) / p.relative_to(p.anchor)

        return Roots(move(self.tuxpaint), move(self.hedgewars_voices), move(self.klettres),
                     tuple((tag, move(p)) for tag, p in self.music))


HEDGEWARS_VAL_PACKS = ("Pirate", "Singer")  # two whole actors no training clip hears
KLETTRES_VAL_LANGS = ("it", "da")  # two whole speakers


@dataclass(frozen=True)
class Recording:
    """One output file: `seconds` of `path` from `start` (whole file when seconds is 0)."""

    split: str  # train | val
    kind: str  # speech | music
    source: str  # tuxpaint | hedgewars | klettres | wesnoth (music) | hedgewars (music)
    name: str
    path: str
    start: float = 0.0
    seconds: float = 0.0


def _by_hash(key: str, modulo: int = 6) -> str:
    return "val" if zlib.crc32(key.encode()) % modulo == 0 else "train"


def _oggs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.ogg")) if root.is_dir() else []


def plan_tuxpaint(roots: Roots, count: int, seed: int) -> list[Recording]:
    """`count` spoken descriptions drawn at random (fixed by seed); split by stamp."""
    spoken = [p for p in _oggs(roots.tuxpaint) if "_desc" in p.name]
    if not spoken or count <= 0:
        return []
    rng = np.random.default_rng([seed, 2])
    chosen = sorted(rng.choice(len(spoken), size=min(count, len(spoken)), replace=False))
    out = []
    for i in chosen:
        p = spoken[i]
        stamp = os.path.relpath(p, roots.tuxpaint).split("_desc")[0]
        rel = os.path.relpath(p, roots.tuxpaint).removesuffix(".ogg").replace(os.sep, "-")
        out.append(Recording(_by_hash(stamp), "speech", "tuxpaint", f"tuxpaint_{rel}", str(p)))
    return out


def plan_hedgewars(roots: Roots) -> list[Recording]:
    out = []
    for p in _oggs(roots.hedgewars_voices):
        pack = p.parent.name
        split = "val" if pack in HEDGEWARS_VAL_PACKS else "train"
        out.append(Recording(split, "speech", "hedgewars", f"hedgewars_{pack}_{p.stem}", str(p)))
    return out


def plan_klettres(roots: Roots) -> list[Recording]:
    out = []
    for p in _oggs(roots.klettres):
        lang = p.relative_to(roots.klettres).parts[0]
        split = "val" if lang in KLETTRES_VAL_LANGS else "train"
        rel = os.path.relpath(p, roots.klettres).removesuffix(".ogg").replace(os.sep, "-")
        out.append(Recording(split, "speech", "klettres", f"klettres_{rel}", str(p)))
    return out


def plan_music(roots: Roots, excerpts: int, seconds: float, durations: dict[str, float]) -> list[Recording]:
    """`excerpts` pieces of `seconds` per track, centred at (k + 1) / (excerpts + 1) of its length;
    split by track. `durations`: seconds of each track path (read from the files' headers)."""
    out = []
    for tag, root in roots.music:
        for p in _oggs(root):
            if str(p) not in durations:
                continue
            total = durations[str(p)]
            split = _by_hash(p.name)
            for k in range(excerpts):
                length = min(seconds, total)
                start = max(0.0, min(total - length, total * (k + 1) / (excerpts + 1) - length / 2))
                out.append(Recording(split, "music", tag, f"music_{tag}_{p.stem}_{k}", str(p), round(start, 3), length))
    return out


def plan(roots: Roots, *, tuxpaint: int, excerpts: int, excerpt_seconds: float,
         seed: int) -> tuple[list[Recording], list[str]]:
    """Every recording of the real corpus in a fixed order, and the music tracks whose header could not be
    read ("path: why"; left out)."""
    import soundfile as sf

    durations, unreadable = {}, []
    for _, root in roots.music:
        for p in _oggs(root):
            try:
                durations[str(p)] = sf.info(str(p)).duration
            except (RuntimeError, OSError) as e:  # libsndfile's errors are RuntimeErrors
                unreadable.append(f"{p}: {e}")
    music = plan_music(roots, excerpts, excerpt_seconds, durations)
    return plan_tuxpaint(roots, tuxpaint, seed) + plan_hedgewars(roots) + plan_klettres(roots) + music, unreadable


def read(rec: Recording, sample_rate: int) -> np.ndarray:
    """(T,) float32 mono at `sample_rate`: the recording's span, channels averaged, resampled (polyphase)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    with sf.SoundFile(rec.path) as f:
        sr = f.samplerate
        if rec.seconds:
            f.seek(int(rec.start * sr))
            data = f.read(int(rec.seconds * sr), dtype="float32", always_2d=True)
        else:
            data = f.read(dtype="float32", always_2d=True)
    x = data.mean(axis=1)
    if sr != sample_rate:
        g = math.gcd(sr, sample_rate)
        x = resample_poly(x, sample_rate // g, sr // g).astype(np.float32)
    return x
