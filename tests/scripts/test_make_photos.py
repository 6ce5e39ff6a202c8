"""scripts/make_photos.py: real-photo crops that are deterministic, split by source photo and loadable."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tokenizers_ae.data.sources import build_image_dataset

REPO = Path(__file__).resolve().parents[2]
# Kept for independent evaluation: listed here, not imported, so the test does not trust the script's own list.
HELD_OUT = ("mate-backgrounds", "gnome-backgrounds", "oxygen-sounds", "ocean-sound-theme",
            "/usr/share/backgrounds/mate", "/usr/share/backgrounds/gnome", "/usr/share/sounds/oxygen",
            "/usr/share/sounds/ocean")


def make_photos(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "scripts/make_photos.py", "--limit-photos", "6", "--sizes", "32", "--crops-per-photo", "2",
           "--no-install", "--tar", "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def tree(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_make_photos_script(tmp_path):
    out = tmp_path / "photos"
    run = make_photos(out)
    assert run.returncode == 0, run.stderr
    assert f"data.path={out}/32/train data.val_path={out}/32/val" in run.stdout
    names = {s: sorted(os.listdir(out / "32" / s)) for s in ("train", "val")}
    assert names["train"] and names["val"]
    assert all(n.endswith(".png") for s in names for n in names[s])

    # The counts printed are the files written, and those the manifest records: 6 photos x 2 crops.
    m = re.search(r"32 px:\s+(\d+) train,\s+(\d+) val crops", run.stdout)
    assert m, run.stdout
    assert (int(m[1]), int(m[2])) == (len(names["train"]), len(names["val"]))
    assert len(names["train"]) + len(names["val"]) == 12
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["32"]["train"] == len(names["train"])
    assert manifest["counts"]["32"]["val"] == len(names["val"])
    assert manifest["source_photos"] == 6 and manifest["skipped"] == []
    assert sum(manifest["photos_per_kind"].values()) == 6
    assert f"source photos: 6 ({', '.join(f'{k} {n}' for k, n in manifest['photos_per_kind'].items())})" \
        in run.stdout

    # Split by source photo: no photo in both, and every crop lies in its photo's split.
    splits = {s: set(manifest["splits"][s]) for s in ("train", "val")}
    assert splits["val"] and not splits["train"] & splits["val"], splits
    assert {p["id"] for p in manifest["photos"]} == splits["train"] | splits["val"]
    for s in ("train", "val"):
        assert {n.rsplit("-", 1)[0] for n in names[s]} == splits[s]
    for p in manifest["photos"]:
        assert re.fullmatch(r"[0-9a-f]{64}", p["sha256"]) and p["width"] > 0 and p["height"] > 0
    text = (out / "manifest.json").read_text()
    assert not any(h in text for h in HELD_OUT)  # the evaluation-only packages were never read

    for s in ("train", "val"):
        for n in names[s]:
            with Image.open(out / "32" / s / n) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)
    ds = build_image_dataset(str(out / "32" / "train"), resolution=32)  # what a recipe would load
    assert len(ds) == len(names["train"])
    item = ds[0]
    assert item["x"].shape == (3, 32, 32) and item["bad"] == []
    assert float(item["x"].std()) > 0.01  # a photo, not a blank canvas
    shards = build_image_dataset(str(out / "train-32-00000.tar"), resolution=32)  # the --tar shards read too
    assert len(shards) == len(names["train"])

    # Deterministic for a given seed, to the byte: crops, shards and manifest.
    out2 = tmp_path / "again"
    rerun = make_photos(out2)
    assert rerun.returncode == 0, rerun.stderr
    first, second = tree(out), tree(out2)
    assert sorted(first) == sorted(second)
    assert all(first[k] == second[k] for k in first), [k for k in first if first[k] != second[k]]
    again = make_photos(out)
    assert again.returncode == 1 and "--overwrite" in again.stderr  # never mixes two builds silently


def test_unreadable_photo_is_skipped_and_counted(tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_photos", REPO / "scripts" / "make_photos.py")
    mp = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_photos", mp)  # dataclasses look their module up there
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script prepends scripts/: undone after the test
    spec.loader.exec_module(mp)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    photos = [mp.Photo("skimage_camera", "skimage", "camera"), mp.Photo("lomiri_broken", "lomiri", str(bad)),
              mp.Photo("skimage_coins", "skimage", "coins")]
    monkeypatch.setattr(mp, "find_photos", lambda min_side: photos)
    out = tmp_path / "photos"
    assert mp.main(["--out", str(out), "--sizes", "16", "--crops-per-photo", "1", "--no-install"]) == 0
    captured = capsys.readouterr()
    assert "warning: skipped unreadable photo lomiri_broken" in captured.err
    assert "1 skipped as unreadable" in captured.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["id"] for s in manifest["skipped"]] == ["lomiri_broken"] and manifest["source_photos"] == 2
    assert manifest["unchecked_wallpapers"] == mp.unchecked_wallpapers()  # this machine's, recorded as found
    written = sorted(p.name for p in (out / "16").rglob("*.png"))
    assert written == ["skimage_camera-000.png", "skimage_coins-000.png"]  # nothing of the broken photo


def test_only_photographed_wallpapers_are_sources(tmp_path, monkeypatch):
    """Drawn or rendered wallpapers (Plasma's Flow, Lomiri's Fossa) and unknown new ones are not sources."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("photo_sources", REPO / "scripts" / "photo_sources.py")
    ps = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "photo_sources", ps)  # dataclasses look their module up there
    spec.loader.exec_module(ps)
    files = {"plasma-workspace-wallpapers": ["wallpapers/Path/contents/images/2560x1440.jpg",
                                             "wallpapers/Flow/contents/images/5120x2880.jpg",
                                             "wallpapers/BrandNew2027/contents/images/3840x2160.jpg"],
             "lomiri-wallpapers": ["backgrounds/Dragonfly_by_Bolly.jpg", "backgrounds/Fossa_by_Jasper_Roks.jpg",
                                   "backgrounds/lomiri-default-background.png"],
             "opencv-doc": ["doc/opencv-doc/examples/data/baboon.jpg", "doc/opencv-doc/examples/data/logo.png"]}
    paths = {pkg: [str(tmp_path / f) for f in fs] for pkg, fs in files.items()}
    for i, p in enumerate(p for fs in paths.values() for p in fs):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        Path(p).write_bytes(f"picture {i}".encode())  # distinct bytes: no two files are deduplicated
    monkeypatch.setattr(ps, "installed", lambda package: package in paths)
    monkeypatch.setattr(ps, "package_files", lambda package: paths[package])
    ids = [p.id for p in ps.find_photos(64) if p.kind != "skimage"]
    assert ids == ["lomiri_Dragonfly_by_Bolly", "opencv_baboon", "plasma_Path"]
    # the one nobody has looked at is named, so make_photos.py can say it was left out; the known drawn ones are not
    assert ps.unchecked_wallpapers() == ["plasma-workspace-wallpapers: BrandNew2027"]
    assert "ukui-wallpapers" not in ps.PACKAGES  # all twelve of its pictures are illustrations
