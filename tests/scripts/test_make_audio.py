"""scripts/make_audio.py --real: real recordings split by speaker, stamp and track, resampled, with a manifest.

The sources are a small tree laid out like the Debian packages, written here as real OGG Vorbis files,
read through --source-root (the way a user reads packages unpacked with `dpkg -x`)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
STAMPS = [f"animals/s{i:02d}" for i in range(14)]


def ogg(path: Path, seconds: float, sr: int = 44100, channels: int = 2, freq: float = 220.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([x] * channels, axis=1), sr, format="OGG", subtype="VORBIS")


def package_tree(root: Path) -> None:
    share = root / "usr/share"
    for i, stamp in enumerate(STAMPS):
        for lang in ("", "_fr"):  # every reading of a stamp must land in one split
            ogg(share / f"tuxpaint/stamps/{stamp}_desc{lang}.ogg", 0.6, freq=200 + 10 * i)
        ogg(share / f"tuxpaint/stamps/{stamp}.ogg", 0.3)  # a sound effect, not speech: left out
    for pack in ("Default", "Pirate", "Singer"):
        for word in ("hello", "oops"):
            ogg(share / f"games/hedgewars/Data/Sounds/voices/{pack}/{word}.ogg", 0.5, sr=48000, channels=1)
    for lang in ("en", "it"):
        ogg(share / f"klettres/{lang}/alpha/a.ogg", 0.4, sr=22050, channels=1)
    for k in range(6):
        ogg(share / f"games/wesnoth/1.16/data/core/music/track{k}.ogg", 9.0)
    ogg(share / "games/hedgewars/Data/Music/theme.ogg", 2.0)  # shorter than an excerpt: excerpts are the track
    (share / "games/hedgewars/Data/Sounds/voices/Default/broken.ogg").write_bytes(b"OggS" + os.urandom(300))
    (share / "games/wesnoth/1.16/data/core/music/broken.ogg").write_bytes(b"OggS" + os.urandom(300))


def make_audio(out: Path, src: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "scripts/make_audio.py", "--real", str(out), "--source-root", str(src), "--no-install",
           "--excerpts", "2", "--excerpt-seconds", "3", "--tuxpaint", "100", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_real_recordings_corpus(tmp_path):
    src, out = tmp_path / "pkgs", tmp_path / "audio"
    package_tree(src)
    run = make_audio(out, src)
    assert run.returncode == 0, run.stderr

    files = {p.relative_to(out).as_posix() for p in out.rglob("*.wav")}
    manifest = json.loads((out / "manifest.json").read_text())
    assert {f["file"] for f in manifest["files"]} == files
    # The broken files (a voice clip, a music track) are skipped, said and listed, never written as audio.
    assert len(manifest["skipped"]) == 2 and all("broken.ogg" in s for s in manifest["skipped"])
    assert "skipped 2 unreadable" in run.stdout
    assert not any("broken" in f for f in files)

    # Counts printed are the files written.
    printed = {(m[1], m[2], m[3]): int(m[4]) for m in re.finditer(r"(train|val)\s+(speech|music)\s+(\w+)\s+(\d+) files",
                                                                  run.stdout)}
    for (split, kind, source), n in printed.items():
        assert n == sum(f["split"] == split and f["kind"] == kind and f["source"] == source
                        for f in manifest["files"]), (split, kind, source)
    assert sum(printed.values()) == len(files)

    # Speech: every stamp's readings in one split, both splits used; no sound effect; whole actors held out.
    tux = [f for f in manifest["files"] if f["source"] == "tuxpaint"]
    assert len(tux) == 2 * len(STAMPS)
    split_of = {}
    for f in tux:
        stamp = Path(f["path"]).name.split("_desc")[0]
        assert split_of.setdefault(stamp, f["split"]) == f["split"], stamp
    assert set(split_of.values()) == {"train", "val"}
    packs = {(Path(f["path"]).parent.name, f["split"]) for f in manifest["files"] if f["source"] == "hedgewars"
             and f["kind"] == "speech"}
    assert packs == {("Default", "train"), ("Pirate", "val"), ("Singer", "val")}
    langs = {(Path(f["path"]).parts[-3], f["split"]) for f in manifest["files"] if f["source"] == "klettres"}
    assert langs == {("en", "train"), ("it", "val")}
    assert all(f.startswith(f"{f_split}/speech/") for f_split, f in
               [(m["split"], m["file"]) for m in manifest["files"] if m["kind"] == "speech"])

    # Music: 2 excerpts of 3 s per track, one split per track, short tracks whole.
    music = [f for f in manifest["files"] if f["kind"] == "music"]
    assert len(music) == 2 * 7
    by_track = {}
    for f in music:
        by_track.setdefault(f["path"], set()).add(f["split"])
        expected = 2.0 if f["path"].endswith("theme.ogg") else 3.0
        assert abs(f["seconds"] - expected) < 0.01, f
    assert all(len(s) == 1 for s in by_track.values())
    assert {s for v in by_track.values() for s in v} == {"train", "val"}

    # 24 kHz mono 16-bit, the duration the manifest says, and the source's sha256 recorded.
    for f in manifest["files"][:5] + music[:2]:
        info = sf.info(out / f["file"])
        assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
        assert abs(info.duration - f["seconds"]) < 1e-3
        assert len(f["source_sha256"]) == 64

    # Deterministic, and an existing corpus is not silently replaced.
    again = make_audio(out, src)
    assert again.returncode == 1 and "--overwrite" in again.stderr
    out2 = tmp_path / "audio2"
    assert make_audio(out2, src).returncode == 0
    assert all((out / f).read_bytes() == (out2 / f).read_bytes() for f in files)


def test_real_recordings_none_found(tmp_path):
    run = make_audio(tmp_path / "audio", tmp_path / "empty")
    assert run.returncode == 2
    assert "no recordings found" in run.stderr and "apt-get install" in run.stderr
