"""Build a small real-audio set for codec smoke runs, offline: espeak-ng speech plus Tux Paint's spoken clips.

    .venv/bin/python scripts/make_audio.py [OUT_DIR] [--sample-rate 24000] [--no-tuxpaint] [--overwrite]

Writes mono 16-bit WAV files at the model rate into OUT_DIR/train and OUT_DIR/val (default
data/audio24k; a few minutes of audio, about 15 MB):
  * speech synthesised with espeak-ng: the sentences below (written for this script) in English, French,
    German, Spanish and Italian, each read by voices drawn from several accents and voice variants at
    varied speed and pitch. val holds sentences and voice variants that train never uses.
  * if the Debian package tuxpaint-stamps-default is installed, a fixed sample of its OGG clips under
    /usr/share/tuxpaint/stamps (recorded spoken descriptions in many languages, and sound effects);
    val holds the stamps whose name hashes to 0 mod 6, so no stamp is in both splits.
Needs the `espeak-ng` program (`apt-get install espeak-ng`). Everything is deterministic for a given --seed.

    .venv/bin/python scripts/make_audio.py --real [OUT_DIR] [--tuxpaint 1500] [--excerpts 3] [--excerpt-seconds 20]

`--real` builds a corpus of real recordings instead (default OUT_DIR data/audio-real, no espeak-ng):
recorded speech and music that Debian packages ship (scripts/audio_sources.py says which, and how each is
split by speaker, stamp or track), as OUT_DIR/{train,val}/{speech,music}/SOURCE/*.wav at the model rate.
Train on OUT_DIR/train (folders are read recursively); evaluate each held-out source apart
(OUT_DIR/val/speech/tuxpaint, .../hedgewars, .../klettres, OUT_DIR/val/music/wesnoth, ...): `aetk eval`
takes the first N files of a folder in name order. As root it installs the packages with apt-get unless
--no-install. OUT_DIR/manifest.json records every output file with its source file, span and the
source's sha256; unreadable sources are skipped, counted and listed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")

# Sentences per language; the last N_VAL_SENTENCES[lang] of each list are held out for val.
SENTENCES: dict[str, list[str]] = {
    "en": [
        "The morning train left the station ten minutes late.",
        "A small boat drifted slowly across the quiet lake.",
        "Please put the green cups on the top shelf.",
        "She counted seven birds sitting on the fence.",
        "Fresh bread smells best right out of the oven.",
        "The old clock in the hall stopped at midnight.",
        "We walked along the beach until the sun went down.",
        "Heavy rain is expected over the hills tomorrow.",
        "He fixed the broken chair with glue and two nails.",
        "The library opens at nine and closes at five.",
        "Bright lanterns lit the narrow street at night.",
        "My brother likes to read maps of distant places.",
        "The cat jumped onto the warm windowsill and fell asleep.",
        "Turn left at the bakery and follow the river.",
        "Thick fog covered the valley until noon.",
        "The children built a tall tower of wooden blocks.",
        "A gentle wind moved the tops of the pine trees.",
        "Six hundred people came to hear the concert.",
        "Could you bring me a glass of cold water?",
        "The farmer planted long rows of corn and beans.",
        "Snow fell quietly on the empty playground.",
        "Her violin lesson starts at half past four.",
        "The mountain path was steep, rocky and wet.",
        "Why does the kettle whistle when the water boils?",
        "The yellow kite climbed high above the field.",
        "Four quick knocks sounded at the kitchen door.",
        "Rivers carry sand and stones down to the sea.",
    ],
    "fr": [
        "Le chat dort sur le canapé depuis ce matin.",
        "Nous irons au marché demain avant midi.",
        "La pluie tombe doucement sur les toits de la ville.",
        "Mon frère joue du piano tous les soirs.",
        "Le soleil se lève derrière les collines.",
    ],
    "de": [
        "Der Zug fährt um acht Uhr vom Bahnhof ab.",
        "Im Garten blühen rote und gelbe Blumen.",
        "Wir trinken jeden Morgen eine Tasse Tee.",
        "Das Fenster in der Küche ist offen.",
        "Die Kinder spielen draußen im Schnee.",
    ],
    "es": [
        "El perro corre por el parque cada mañana.",
        "Mi abuela prepara una sopa muy rica.",
        "Las montañas están cubiertas de nieve.",
        "Vamos a la playa el próximo domingo.",
        "El río pasa cerca de la vieja casa.",
    ],
    "it": [
        "Il treno arriva alla stazione alle nove.",
        "La finestra della cucina è aperta.",
        "Domani andiamo al mare con gli amici.",
        "Il gatto dorme sotto il tavolo.",
    ],
}
N_VAL_SENTENCES = {"en": 3, "fr": 1, "de": 1, "es": 1, "it": 1}
ACCENTS = {"en": ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc"],
           "fr": ["fr-fr", "fr-be"], "de": ["de"], "es": ["es", "es-419"], "it": ["it"]}
TRAIN_VARIANTS = ["m1", "m2", "m3", "m5", "m7", "f1", "f2", "f3", "f5"]
VAL_VARIANTS = ["m4", "f4"]  # held out: val only


@dataclass(frozen=True)
class Clip:
    split: str
    name: str
    source: str  # "espeak" or a file path
    text: str = ""
    voice: str = ""
    speed: int = 0
    pitch: int = 0


def plan_speech(seed: int, renditions: int) -> list[Clip]:
    """Every (sentence, voice, speed, pitch) to synthesise, drawn from default_rng([seed, sentence index])."""
    clips = []
    for lang, sentences in SENTENCES.items():
        n_val = N_VAL_SENTENCES[lang]
        for k, text in enumerate(sentences):
            val = k >= len(sentences) - n_val
            rng = np.random.default_rng([seed, zlib.crc32(lang.encode()), k])
            # val: one train-style voice and one held-out variant; train: `renditions` train variants.
            variants = ([str(rng.choice(TRAIN_VARIANTS)), str(rng.choice(VAL_VARIANTS))] if val
                        else list(rng.choice(TRAIN_VARIANTS, size=renditions, replace=False)))
            for r, variant in enumerate(variants):
                accent = str(rng.choice(ACCENTS[lang]))
                speed, pitch = int(rng.integers(130, 200)), int(rng.integers(25, 76))
                voice = f"{accent}+{variant}"
                clips.append(Clip("val" if val else "train", f"espeak_{lang}_{k:02d}_{r}_{voice}_s{speed}_p{pitch}",
                                  "espeak", text, voice, speed, pitch))
    return clips


def plan_tuxpaint(seed: int, count: int) -> list[Clip]:
    """A fixed sample of Tux Paint's OGG clips: 3/4 spoken descriptions, 1/4 sound effects."""
    if count <= 0 or not TUXPAINT_STAMPS.is_dir():
        return []
    files = sorted(str(p) for p in TUXPAINT_STAMPS.rglob("*.ogg"))
    spoken = [f for f in files if "_desc" in os.path.basename(f)]
    effects = [f for f in files if "_desc" not in os.path.basename(f)]
    rng = np.random.default_rng([seed, 1])
    n_spoken = min(len(spoken), math.ceil(count * 3 / 4))
    n_effects = min(len(effects), count - n_spoken)
    chosen = list(rng.choice(spoken, size=n_spoken, replace=False)) if n_spoken else []
    chosen += list(rng.choice(effects, size=n_effects, replace=False)) if n_effects else []
    clips = []
    for path in sorted(chosen):
        stamp = os.path.basename(path).split("_desc")[0].removesuffix(".ogg")
        split = "val" if zlib.crc32(stamp.encode()) % 6 == 0 else "train"
        rel = os.path.relpath(path, TUXPAINT_STAMPS).removesuffix(".ogg").replace(os.sep, "-")
        clips.append(Clip(split, f"tuxpaint_{rel}", path))
    return clips


def synthesize(text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """espeak-ng -> (T,) float32 mono and its sample rate (22050 Hz)."""
    import soundfile as sf

    out = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         capture_output=True, check=True).stdout
    x, sr = sf.read(io.BytesIO(out), dtype="float32", always_2d=True)
    return x.mean(axis=1), sr


def render(clip: Clip, out: Path, sample_rate: int) -> float:
    """Synthesise or decode one clip, mix to mono, resample, write 16-bit WAV; returns its duration (s)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    if clip.source == "espeak":
        x, sr = synthesize(clip.text, clip.voice, clip.speed, clip.pitch)
    else:
        data, sr = sf.read(clip.source, dtype="float32", always_2d=True)
        x = data.mean(axis=1)
    if sr != sample_rate:
        g = math.gcd(sr, sample_rate)
        x = resample_poly(x, sample_rate // g, sr // g)
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > 0.99:  # resampling can overshoot: scale down rather than clip
        x = x * (0.99 / peak)
    sf.write(out / clip.split / f"{clip.name}.wav", x.astype(np.float32), sample_rate, subtype="PCM_16")
    return x.size / sample_rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", help="output folder (gets train/ and val/; default data/audio24k, "
                    "with --real data/audio-real)")
    ap.add_argument("--real", action="store_true", help="real recordings (speech and music) instead of espeak-ng")
    ap.add_argument("--excerpts", type=int, default=3, help="--real: excerpts per music track")
    ap.add_argument("--excerpt-seconds", type=float, default=20.0, help="--real: seconds per music excerpt")
    ap.add_argument("--no-install", action="store_true", help="--real: never apt-get install the packages")
    ap.add_argument("--source-root", default="/", help="--real: read the packages' files below this folder "
                    "(packages unpacked with `dpkg -x PKG.deb DIR`, no root needed; default /)")
    ap.add_argument("--sample-rate", type=int, default=24000)
    ap.add_argument("--renditions", type=int, default=2, help="voices per training sentence")
    ap.add_argument("--tuxpaint", type=int, help="Tux Paint clips to include if installed (0: none; default 64, "
                    "with --real 1500 spoken descriptions)")
    ap.add_argument("--no-tuxpaint", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="replace the WAV files already in OUT/train, OUT/val")
    a = ap.parse_args(argv)
    if a.real:
        return main_real(a)
    a.out = a.out or "data/audio24k"
    a.tuxpaint = 64 if a.tuxpaint is None else a.tuxpaint
    if shutil.which("espeak-ng") is None:
        print("espeak-ng not found: install it with `apt-get install espeak-ng` (Debian/Ubuntu), then rerun.",
              file=sys.stderr)
        return 2
    from tqdm import tqdm

    out = Path(a.out)
    if not clear_outputs([out / "train", out / "val"], a.overwrite):
        return 1
    clips = plan_speech(a.seed, a.renditions) + plan_tuxpaint(a.seed, 0 if a.no_tuxpaint else a.tuxpaint)
    with ThreadPoolExecutor(max_workers=2) as pool:  # espeak-ng runs as a subprocess: threads suffice
        durations = list(tqdm(pool.map(lambda c: render(c, out, a.sample_rate), clips), total=len(clips),
                              desc="audio clips", unit="clip"))
    print(f"wrote {len(clips)} clips to {out} at {a.sample_rate} Hz mono 16-bit:")
    for split in ("train", "val"):
        for kind in ("espeak", "tuxpaint"):
            sel = [d for c, d in zip(clips, durations) if c.split == split and c.name.startswith(kind)]
            if sel:
                print(f"  {split:5s} {kind:8s} {len(sel):4d} clips {sum(sel) / 60:6.2f} min")
    size = sum(f.stat().st_size for f in out.glob("*/*.wav"))
    if not any(c.source != "espeak" for c in clips) and not a.no_tuxpaint:
        print("  (Tux Paint clips not included: apt-get install tuxpaint-stamps-default to add them)")
    print(f"  total {sum(durations) / 60:.2f} min, {size / 1e6:.1f} MB")
    return 0


def clear_outputs(dirs: list[Path], overwrite: bool) -> bool:
    """Make each folder, emptied of WAV files when `overwrite`; False (and a message) when one holds some."""
    for d in dirs:
        old = sorted(d.rglob("*.wav")) if d.is_dir() else []
        if old and not overwrite:
            print(f"{d} already holds {len(old)} WAV files; pass --overwrite to replace them", file=sys.stderr)
            return False
        for f in old:
            f.unlink()
        d.mkdir(parents=True, exist_ok=True)
    return True


def main_real(a: argparse.Namespace) -> int:
    """`--real`: the real-recordings corpus of scripts/audio_sources.py."""
    import soundfile as sf
    from tqdm import tqdm

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import audio_sources
    from photo_sources import ensure_packages

    out = Path(a.out or "data/audio-real")
    ensure_packages(a.no_install, audio_sources.PACKAGES, "recording")
    recs, unreadable = audio_sources.plan(audio_sources.Roots().under(a.source_root),
                              tuxpaint=0 if a.no_tuxpaint else 1500 if a.tuxpaint is None else a.tuxpaint,
                              excerpts=a.excerpts,
                              excerpt_seconds=a.excerpt_seconds, seed=a.seed)
    if not recs:
        print(f"no recordings found: apt-get install {' '.join(audio_sources.PACKAGES)}", file=sys.stderr)
        return 2
    dirs = [out / s / k for s in ("train", "val") for k in ("speech", "music")]
    if not clear_outputs(dirs, a.overwrite):
        return 1
    for split, kind, source in {(r.split, r.kind, r.source) for r in recs}:
        (out / split / kind / source).mkdir(exist_ok=True)

    def write(rec: audio_sources.Recording) -> float | str:
        try:
            x = audio_sources.read(rec, a.sample_rate)
        except (RuntimeError, OSError, ValueError) as e:  # libsndfile's errors are RuntimeErrors
            return f"{rec.path}: {e}"
        if x.size == 0 or not np.isfinite(x).all():
            return f"{rec.path}: {'empty' if x.size == 0 else 'non-finite samples'}"
        peak = float(np.abs(x).max())
        if peak > 0.99:  # resampling can overshoot: scale down rather than clip
            x = x * (0.99 / peak)
        sf.write(out / rec.split / rec.kind / rec.source / f"{rec.name}.wav", x, a.sample_rate, subtype="PCM_16")
        return x.size / a.sample_rate

    with ThreadPoolExecutor(max_workers=2) as pool:  # libsndfile and scipy release the GIL
        results = list(tqdm(pool.map(write, recs), total=len(recs), desc="recordings", unit="file"))
    skipped = unreadable + [r for r in results if isinstance(r, str)]
    kept = [(rec, d) for rec, d in zip(recs, results) if not isinstance(d, str)]
    digests = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in sorted({r.path for r, _ in kept})}
    manifest = {"sample_rate": a.sample_rate, "seed": a.seed, "skipped": skipped,
                "files": [{"file": f"{r.split}/{r.kind}/{r.source}/{r.name}.wav", "split": r.split, "kind": r.kind,
                           "source": r.source, "path": r.path, "start_s": r.start, "seconds": round(d, 3),
                           "source_sha256": digests[r.path]} for r, d in kept]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(kept)} recordings to {out} at {a.sample_rate} Hz mono 16-bit:")
    for split in ("train", "val"):
        for kind in ("speech", "music"):
            for source in sorted({r.source for r, _ in kept if r.kind == kind}):
                sel = [d for r, d in kept if (r.split, r.kind, r.source) == (split, kind, source)]
                if sel:
                    print(f"  {split:5s} {kind:6s} {source:9s} {len(sel):5d} files {sum(sel) / 60:7.2f} min")
    size = sum(f.stat().st_size for f in out.rglob("*.wav"))
    print(f"  total {sum(d for _, d in kept) / 3600:.2f} h, {size / 1e6:.0f} MB, from {len(digests)} source files")
    if skipped:
        print(f"  skipped {len(skipped)} unreadable sources (listed in manifest.json), e.g. {skipped[0]}")
    print(f"  train: data.path={out}/train  held out, per source: {out}/val/speech/* and {out}/val/music/*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
