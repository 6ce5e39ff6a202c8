"""The real photographs that scripts/make_videos.py and scripts/make_photos.py build their sets from.

Sources: scikit-image's photos (`tokenizers_ae.data.images.SKIMAGE_PHOTOS`) and the photographs among the
pictures of the Debian packages plasma-workspace-wallpapers, lomiri-wallpapers and opencv-doc. About half of
the wallpapers are drawn or rendered (vector art, gradients, low-poly scenes): an allowlist per package keeps
the photographs only, so "real photos" means photographed. ukui-wallpapers is not read: its twelve pictures
are all illustrations. The packages in EXCLUDED (mate-backgrounds, gnome-backgrounds, ...) are never read:
they are kept for independent evaluation. `split_photos` splits by source photo, with one rule for every set
built here, so a photo held out of one set is held out of the others too.

Not a script: the scripts import it after putting this folder on sys.path.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:  # imported from a script run as a file: the repository is not on sys.path
    sys.path.insert(0, _REPO)

from tokenizers_ae.data.images import SKIMAGE_PHOTOS, to_rgb  # noqa: E402

PACKAGES = ("plasma-workspace-wallpapers", "lomiri-wallpapers", "opencv-doc")
# Held out for independent evaluation of the models trained on these sets: never read, whatever else changes.
EXCLUDED = ("mate-backgrounds", "gnome-backgrounds", "/usr/share/backgrounds/mate", "/usr/share/backgrounds/gnome",
            "oxygen-sounds", "ocean-sound-theme", "/usr/share/sounds/oxygen", "/usr/share/sounds/ocean")
# Where the packages put their pictures, for systems without dpkg-query (the same selection rules apply).
PACKAGE_DIRS = {"plasma-workspace-wallpapers": ["/usr/share/wallpapers"],
                "lomiri-wallpapers": ["/usr/share/backgrounds"],
                "opencv-doc": ["/usr/share/doc/opencv-doc/examples/data"]}
# opencv-doc's sample folder also holds charts, logos, cartoons, renders, text and calibration boards: only these
# are photographs (starry_night: a photo of the painting), one view of each stereo or before/after pair so that a
# scene cannot land in both splits.
OPENCV_PHOTOS = ("aero1.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "board.jpg", "building.jpg",
                 "butterfly.jpg", "ela_original.jpg", "fruits.jpg", "graf1.png", "home.jpg", "left.jpg", "leuvenA.jpg",
                 "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg", "pca_test1.jpg", "rubberwhale1.png",
                 "smarties.png", "squirrel_cls.jpg", "starry_night.jpg", "stuff.jpg", "box_in_scene.png")
# The wallpapers that are photographs, checked by eye (Plasma: wallpaper folder names; Lomiri: file stems), and
# those left out as drawn, rendered or composited. A wallpaper a newer package adds is in neither list: it is left
# out, and `unchecked_wallpapers` names it so that make_photos.py can say so, until someone looks and lists it.
PLASMA_PHOTOS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
                 "Kite", "OneStandsOut", "Path", "summer_1am")
PLASMA_DRAWN = ("Altai", "Autumn", "Canopee", "Cascade", "Cluster", "Elarun", "Flow", "FlyingKonqui", "Honeywave",
                "IceCold", "Kay", "Kokkini", "MilkyWay", "Opal", "PastelHills", "Patak", "SafeLanding", "Shell",
                "Volna")
LOMIRI_PHOTOS = ("Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Kleiber_by_Lukas_Baubkus",
                 "Picture_0B_by_freespace", "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede",
                 "aitzgorri_by_Aitzol_Berasategi", "analogpattern_by_Peter_Nerlich", "free_by_Peter_Nerlich",
                 "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich", "life_by_Aitzol_Berasategi",
                 "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt",
                 "sunset_by_Aitzol_Berasategi")
LOMIRI_DRAWN = ("Fossa_by_Jasper_Roks", "Infinite-Sea_by_Aury88", "Painting-Colors_by__herobrine7gamer",
                "umang_by_Abhishek_Mudgal", "lomiri-default-background", "warty-final-ubuntu")
# Per wallpaper package: the id prefix of its photos, the photographs, and the pictures checked and left out.
WALLPAPERS = {"plasma-workspace-wallpapers": ("plasma", PLASMA_PHOTOS, PLASMA_DRAWN),
              "lomiri-wallpapers": ("lomiri", LOMIRI_PHOTOS, LOMIRI_DRAWN)}
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
MIN_WINDOW = 0.4  # smallest crop window, as a fraction of the photo's shorter side
VAL_PERCENT = 10


@dataclass(frozen=True)
class Photo:
    id: str  # file-name safe: "<kind>_<name>", unique
    kind: str  # skimage, plasma, lomiri, opencv
    source: str  # a file path, or the skimage.data function name


def excluded(path: str) -> bool:
    return any(e in path for e in EXCLUDED)


def safe_id(kind: str, name: str) -> str:
    return f"{kind}_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}"


def installed(package: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return any(Path(d).is_dir() for d in PACKAGE_DIRS[package])
    out = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.startswith("ii")


def ensure_packages(no_install: bool, packages: tuple[str, ...] = PACKAGES, what: str = "photo") -> None:
    """apt-get install the missing packages when root (and allowed), else say which ones are missing."""
    missing = [p for p in packages if not installed(p)]
    if not missing:
        return
    if not no_install and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:  # stale package lists: refresh once
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(cmd, env=env, capture_output=True)
        missing = [p for p in packages if not installed(p)]
    if missing:
        print(f"note: {what} packages not installed: {' '.join(missing)} (more {what}s: "
              f"apt-get install -y {' '.join(missing)}); continuing with the {what}s that exist")


def package_files(package: str) -> list[str]:
    """The files of `package` and its versioned parts (lomiri-wallpapers-20.04, ...), via dpkg-query -L."""
    if shutil.which("dpkg-query") is None:
        return sorted(str(p) for d in PACKAGE_DIRS[package] if Path(d).is_dir() for p in Path(d).rglob("*"))
    listed = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", f"{package}*"],
                            capture_output=True, text=True).stdout.split("\n")
    names = [line.split()[0] for line in listed if line.split()[1:2] == ["ii"]]
    files = []
    for name in names:
        files += subprocess.run(["dpkg-query", "-L", name], capture_output=True, text=True).stdout.split("\n")
    return sorted({f for f in files if f})


def plasma_pick(files: list[str], min_side: int) -> dict[str, str]:
    """Plasma ships each wallpaper at several sizes (contents/images/WxH.jpg): one file per wallpaper, the
    smallest whose shorter side is at least `min_side` (decoding a 5120x2880 PNG costs a quarter second)."""
    variants: dict[str, list[tuple[int, int, str]]] = {}
    for f in files:
        m = re.search(r"/wallpapers/([^/]+)/contents/images/(\d+)x(\d+)\.\w+$", f)  # not images_dark: same scene
        if m:
            w, h = int(m[2]), int(m[3])
            variants.setdefault(m[1], []).append((min(w, h) < min_side, w * h, f))
    return {name: min(v)[2] for name, v in variants.items()}  # big enough first, then the fewest pixels


def _wallpaper_files(package: str) -> list[str]:
    return [f for f in package_files(package)
            if f.lower().endswith(PHOTO_SUFFIXES) and not excluded(f) and os.path.isfile(f)]


def _wallpapers(package: str, files: list[str], min_side: int) -> dict[str, str]:
    """{name: file} of a wallpaper package's pictures, named as PLASMA_PHOTOS / LOMIRI_PHOTOS name them."""
    if package == "plasma-workspace-wallpapers":
        return plasma_pick(files, min_side)
    return {Path(f).stem: f for f in files if "/backgrounds/" in f}


def unchecked_wallpapers() -> list[str]:
    """The installed wallpapers that neither the photo lists nor the drawn lists name ("package: name"): a newer
    package's additions, left out of the corpus until someone looks at them."""
    return [f"{package}: {name}" for package, (_, photos, drawn) in WALLPAPERS.items() if installed(package)
            for name in sorted(_wallpapers(package, _wallpaper_files(package), 0)) if name not in {*photos, *drawn}]


def find_photos(min_side: int) -> list[Photo]:
    """Every source photo, sorted by id: scikit-image's, then the installed packages' (exclusions applied).

    `min_side` (pixels) only picks which of a Plasma wallpaper's sizes is used."""
    photos = [Photo(safe_id("skimage", n), "skimage", n) for n in SKIMAGE_PHOTOS]
    for package in PACKAGES:
        if not installed(package):
            continue
        files = _wallpaper_files(package)
        if package in WALLPAPERS:
            kind, listed, _ = WALLPAPERS[package]
            photos += [Photo(safe_id(kind, n), kind, f) for n, f in _wallpapers(package, files, min_side).items()
                       if n in listed]
        elif package == "opencv-doc":
            photos += [Photo(safe_id("opencv", Path(f).stem), "opencv", f) for f in files
                       if "/examples/data/" in f and os.path.basename(f) in OPENCV_PHOTOS]
    unique: dict[str, Photo] = {}
    seen: set[str] = set()
    for p in photos:  # the same picture shipped by two packages is one source (else it could be in both splits)
        if p.kind != "skimage":
            digest = hashlib.sha1(Path(p.source).read_bytes()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
        unique.setdefault(p.id, p)
    return sorted(unique.values(), key=lambda p: p.id)


def skimage_array(name: str) -> np.ndarray:
    """(H, W) or (H, W, C) uint8: scikit-image's photo `name` (stereo_motorcycle: its left view only)."""
    import skimage.data  # heavy: imported when a photo is actually read

    arr = getattr(skimage.data, name)()
    return arr[0] if name == "stereo_motorcycle" else arr


def open_photo(photo: Photo, min_side: int) -> tuple[Image.Image, tuple[int, int]]:
    """The photo as an RGB PIL image, upright (EXIF orientation applied), and its native (width, height).

    JPEGs are decoded at 1/2, 1/4 or 1/8 size when both sides stay at least `min_side` pixels (DCT scaling:
    several times faster); other files and scikit-image's photos come at native size. Raises what PIL raises
    for an unreadable file."""
    from PIL import ImageOps

    if photo.kind == "skimage":
        img = to_rgb(Image.fromarray(skimage_array(photo.source)))
        return img, img.size
    with Image.open(photo.source) as im:
        native = im.size
        im.draft("RGB", (min_side, min_side))  # JPEG: decode at 1/2, 1/4 or 1/8 size directly
        im.load()
        img = to_rgb(ImageOps.exif_transpose(im))
    return img, native


def load_photo(photo: Photo, min_side: int) -> tuple[torch.Tensor, float]:
    """(3, H, W) float32 in [0, 255] with shorter side `min_side` (upsampled if smaller), native megapixels."""
    img, (w, h) = open_photo(photo, min_side)
    scale = min_side / min(img.size)
    size = (max(min_side, round(img.width * scale)), max(min_side, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)  # (3, H, W)
    return x, w * h / 1e6


def split_photos(photos: list[Photo], seed: int) -> tuple[list[Photo], list[Photo]]:
    """(train, val) by source: a photo is val when a hash of (seed, id) is 0 mod 10, at least one when there
    are two or more; each list in hash order. Hashing (not a permutation) keeps a photo's split when
    packages are added or removed."""
    ranked = sorted(photos, key=lambda p: zlib.crc32(f"{seed}:{p.id}".encode()))
    val = [p for p in ranked if zlib.crc32(f"{seed}:{p.id}".encode()) % (100 // VAL_PERCENT) == 0]
    if not val and len(ranked) >= 2:
        val = ranked[:1]
    return [p for p in ranked if p not in val], val
