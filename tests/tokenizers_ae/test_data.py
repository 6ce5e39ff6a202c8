"""Image datasets: determinism, decoding of odd modes, corrupt-file handling and the three sources."""

import logging

import datasets
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from tokenizers_ae.data.images import ImageTransform, collate_images
from tokenizers_ae.data.sources import build_image_dataset

R = 32


def items(ds, idx=None):
    return [ds[i] for i in (range(len(ds)) if idx is None else idx)]


def stack(ds, idx=None):
    return torch.stack([it["x"] for it in items(ds, idx)])  # (N, 3, R, R)


@pytest.fixture
def photo_folder(tmp_path):
    """Six real photos as PNG/JPEG in nested folders; returns (root, sorted relative paths)."""
    root = tmp_path / "imgs"
    files = {
        "a/astronaut.png": skimage.data.astronaut()[::8, ::8],
        "a/b/coffee.jpg": skimage.data.coffee()[::8, ::8],
        "a/b/chelsea.JPEG": skimage.data.chelsea()[::8, ::8],
        "c/rocket.png": skimage.data.rocket()[::8, ::8],
        "top.bmp": skimage.data.immunohistochemistry()[::8, ::8],
        "z/noise.webp": np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8),
    }
    for rel, arr in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / rel)
    (root / "notes.txt").write_text("not an image")
    return root, sorted(files)


# ---------------------------------------------------------------- builtin


def test_builtin_shape_range_and_seed():
    ds = build_image_dataset("builtin:skimage", resolution=R, builtin_size=24, seed=0)
    x = stack(ds)
    assert x.shape == (24, 3, R, R) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.1
    same = stack(build_image_dataset("builtin:skimage", resolution=R, builtin_size=24, seed=0))
    other = stack(build_image_dataset("builtin:skimage", resolution=R, builtin_size=24, seed=1))
    assert torch.equal(x, same)
    assert not torch.equal(x, other)


def test_builtin_item_independent_of_access_order():
    ds = build_image_dataset("builtin:skimage", resolution=R, builtin_size=20, seed=3)
    forward = stack(ds)
    fresh = build_image_dataset("builtin:skimage", resolution=R, builtin_size=20, seed=3)
    backward = stack(fresh, reversed(range(20))).flip(0)
    assert torch.equal(forward, backward)


@pytest.mark.parametrize("random_flip", [True, False])
def test_builtin_set_epoch_only_changes_flips(random_flip):
    ds = build_image_dataset("builtin:skimage", resolution=R, builtin_size=32, random_flip=random_flip)
    e0 = stack(ds)
    ds.set_epoch(1)
    e1 = stack(ds)
    changed = [i for i in range(32) if not torch.equal(e0[i], e1[i])]
    if not random_flip:
        assert changed == []
        return
    assert 0 < len(changed) < 32  # each flip is a coin toss
    for i in changed:  # the crop is fixed per seed: an epoch can only mirror it
        assert torch.equal(e1[i], e0[i].flip(-1))


def test_builtin_val_split_differs_and_does_not_flip():
    train = stack(build_image_dataset("builtin:skimage", resolution=R, builtin_size=16))
    val = build_image_dataset("builtin:skimage", resolution=R, builtin_size=16, split="val")
    v0 = stack(val)
    val.set_epoch(5)
    assert torch.equal(v0, stack(val))
    assert all(not torch.equal(train[i], v0[i]) and not torch.equal(train[i].flip(-1), v0[i]) for i in range(16))


def test_builtin_uses_many_distinct_photos():
    ds = build_image_dataset("builtin:skimage", resolution=R, builtin_size=32)
    names = {ds.describe(i) for i in range(len(ds))}
    assert len(names) >= 10 and all(n.startswith("skimage:") for n in names)
    means = {round(float(ds[i]["x"].mean()), 3) for i in range(16)}
    assert len(means) >= 10  # different photos, not one photo under different names


# ---------------------------------------------------------------- transform


def test_center_crop_matches_hand_computation_on_gradient():
    # 64x32 horizontal ramp 4*col: resize to 32x16 halves it, centre crop keeps resized columns 8..23,
    # and bicubic reproduces a linear ramp exactly away from the borders.
    ramp = np.tile((4 * np.arange(64)).astype(np.uint8), (32, 1))  # (H=32, W=64)
    t = ImageTransform(16, random_crop=False, random_flip=False)
    x = t(Image.fromarray(ramp), np.random.default_rng(0))  # (3, 16, 16)
    cols = np.arange(16) + 8
    expected = 4 * (2 * cols + 0.5) / 127.5 - 1  # resized column c samples source x = 2c + 0.5
    want = torch.tensor(expected, dtype=torch.float32).expand(3, 16, 16)
    assert x.shape == (3, 16, 16)
    assert torch.allclose(x, want, atol=1.5 / 127.5)
    assert torch.equal(x, t(Image.fromarray(ramp), np.random.default_rng(1)))  # no randomness left


@pytest.mark.parametrize("random_crop", [True, False])
@pytest.mark.parametrize("random_flip", [True, False])
def test_transform_shape_and_determinism(random_crop, random_flip):
    img = Image.fromarray(skimage.data.coffee())  # 600x400, not square
    t = ImageTransform(R, random_crop=random_crop, random_flip=random_flip)
    outs = [t(img, np.random.default_rng([0, 0, i])) for i in range(8)]
    assert all(o.shape == (3, R, R) and o.dtype == torch.float32 for o in outs)
    assert torch.equal(outs[0], t(img, np.random.default_rng([0, 0, 0])))
    distinct = len({o.numpy().tobytes() for o in outs})
    assert (distinct > 1) == (random_crop or random_flip)


# ---------------------------------------------------------------- folders


def test_folder_recursive_sorted(photo_folder):
    root, rel = photo_folder
    ds = build_image_dataset(str(root), resolution=R, random_crop=False, random_flip=False)
    assert [ds.describe(i) for i in range(len(ds))] == [str(root / p) for p in rel]
    x = stack(ds)
    assert x.shape == (len(rel), 3, R, R) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, stack(ds))  # center crop, no flip: nothing random
    ds.set_epoch(3)
    assert torch.equal(x, stack(ds))


def test_folder_odd_modes_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "1_grey.png")
    rgba = np.zeros((20, 24, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    rgba[:, :12, 3] = 0  # left half transparent
    Image.fromarray(rgba).save(tmp_path / "2_rgba.png")
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).quantize(16).save(tmp_path / "3_pal.gif")
    Image.fromarray(np.full((20, 24), 32896, np.uint16)).save(tmp_path / "4_grey16.png")  # 32896 = 128 * 257
    Image.fromarray(grey).save(tmp_path / "5_grey.pgm")

    ds = build_image_dataset(str(tmp_path), resolution=16, random_crop=False, random_flip=False)
    assert len(ds) == 5
    x = stack(ds)
    assert x.shape == (5, 3, 16, 16)
    g = x[0]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])  # grey -> equal channels
    assert torch.equal(x[0], x[4])  # same pixels via PNG and PGM
    assert torch.allclose(x[1][:, :, -4:], torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1))  # opaque red
    assert torch.allclose(x[1][:, :, :4], torch.ones(3, 16, 4))  # transparent -> white
    assert torch.allclose(x[3], torch.full((3, 16, 16), 128 / 127.5 - 1), atol=1e-6)  # 16-bit scaled, not clipped


# ---------------------------------------------------------------- corrupt files


@pytest.fixture
def corrupt_folder(photo_folder):
    root, _ = photo_folder
    jpg = root / "a" / "b" / "coffee.jpg"
    full = jpg.read_bytes()
    (root / "a" / "b" / "cut.jpg").write_bytes(full[: len(full) // 2])  # truncated JPEG
    (root / "c" / "random.png").write_bytes(np.random.default_rng(0).bytes(2000))
    (root / "empty.jpg").write_bytes(b"")
    return root, {str(root / p) for p in ("a/b/cut.jpg", "c/random.png", "empty.jpg")}


def test_corrupt_files_are_skipped_and_reported(corrupt_folder, caplog):
    root, bad_paths = corrupt_folder
    caplog.set_level(logging.DEBUG, logger="aetk.data")
    ds = build_image_dataset(str(root), resolution=R, seed=0)
    bad_idx = {i for i in range(len(ds)) if ds.describe(i) in bad_paths}
    assert len(ds) == 9 and len(bad_idx) == 3

    out = items(ds)  # never raises
    assert [o["index"] for o in out] == list(range(9))
    assert all(o["x"].shape == (3, R, R) and o["x"].abs().max() <= 1 for o in out)
    reported = {b for o in out for b in o["bad"]}
    assert reported == bad_idx
    assert all(o["bad"] and o["bad"][0] == o["index"] for o in out if o["index"] in bad_idx)
    for p in bad_paths:  # once per path, although the next bad index is tried again by its neighbour
        assert sum(p in r.getMessage() for r in caplog.records) == 1

    batch = collate_images(out)
    assert batch["x"].shape == (9, 3, R, R) and batch["index"].dtype == torch.long
    assert sorted(batch["bad"]) == sorted(b for o in out for b in o["bad"])


def test_corrupt_item_is_deterministic_substitute_and_warns_once(corrupt_folder, caplog):
    root, bad_paths = corrupt_folder
    caplog.set_level(logging.DEBUG, logger="aetk.data")
    ds = build_image_dataset(str(root), resolution=R, random_crop=False, random_flip=False)
    b = next(i for i in range(len(ds)) if ds.describe(i) == str(root / "empty.jpg"))
    first, second = ds[b], ds[b]
    assert first["bad"] == second["bad"] == [b] and first["index"] == b
    assert torch.equal(first["x"], second["x"])
    assert torch.equal(first["x"], ds[(b + 1) % len(ds)]["x"])  # next readable image stands in
    warnings = [r for r in caplog.records if r.name == "aetk.data" and r.levelno == logging.DEBUG]
    assert len(warnings) == 1 and "empty.jpg" in warnings[0].getMessage()


def test_all_corrupt_empty_and_missing(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    (bad / "y.jpg").write_bytes(b"")
    ds = build_image_dataset(str(bad), resolution=R)
    with pytest.raises(ValueError, match="no readable image") as e:
        ds[0]
    assert str(bad) in str(e.value)

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match="no images found") as e:
        build_image_dataset(str(empty), resolution=R)
    assert str(empty) in str(e.value) and ".png" in str(e.value)

    with pytest.raises(FileNotFoundError, match="nope"):
        build_image_dataset(str(tmp_path / "nope"), resolution=R)


# ---------------------------------------------------------------- HF datasets


def _hf_images():
    return [Image.fromarray(skimage.data.astronaut()[::8, ::8]),
            Image.fromarray(skimage.data.camera()[::8, ::8]),  # greyscale "L"
            Image.fromarray(skimage.data.chelsea()[::4, ::4])]


def test_hf_dataset_roundtrip(tmp_path):
    imgs = _hf_images()
    ds = datasets.Dataset.from_dict({"image": imgs, "label": [0, 1, 2]}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "ds"))
    hf = build_image_dataset(str(tmp_path / "ds"), resolution=R, seed=4)
    assert len(hf) == 3 and hf.describe(2) == f"{tmp_path / 'ds'}[2]"
    t = ImageTransform(R)
    for i, img in enumerate(imgs):  # PNG in the arrow file is lossless: same as transforming the source
        want = t(img, np.random.default_rng([4, 0, i]))
        assert torch.equal(hf[i]["x"], want)
    with pytest.raises(ValueError, match="label") as e:
        build_image_dataset(str(tmp_path / "ds"), resolution=R, image_column="img")
    assert "image" in str(e.value)


def test_hf_dataset_dict_split_and_raw_columns(tmp_path):
    imgs = _hf_images()
    arrays = [np.asarray(im.convert("RGB")) for im in imgs]
    feats = datasets.Features({"image": datasets.Image()})
    train = datasets.Dataset.from_dict({"image": imgs}, features=feats)
    val = datasets.Dataset.from_dict({"image": imgs[:1]}, features=feats)
    datasets.DatasetDict({"train": train, "validation": val}).save_to_disk(str(tmp_path / "dd"))
    kw = dict(resolution=R, random_crop=False, random_flip=False)
    assert len(build_image_dataset(str(tmp_path / "dd"), **kw)) == 3
    assert len(build_image_dataset(str(tmp_path / "dd"), split="validation", **kw)) == 1
    assert len(build_image_dataset(str(tmp_path / "dd"), split="test", **kw)) == 3  # missing split: first one

    # Undecoded {"bytes", "path"} dicts, and plain nested lists of pixels, must give the same tensors.
    raw = train.cast_column("image", datasets.Image(decode=False))
    raw = raw.add_column("pixels", [a.tolist() for a in arrays])
    raw.save_to_disk(str(tmp_path / "raw"))
    ref = stack(build_image_dataset(str(tmp_path / "dd"), **kw))
    by_bytes = stack(build_image_dataset(str(tmp_path / "raw"), **kw))
    by_array = stack(build_image_dataset(str(tmp_path / "raw"), image_column="pixels", **kw))
    assert torch.equal(ref, by_bytes) and torch.equal(ref, by_array)


# ---------------------------------------------------------------- DataLoader


def test_dataloader_workers_match_single_process():
    ds = build_image_dataset("builtin:skimage", resolution=16, builtin_size=12, seed=7)
    ds.set_epoch(2)

    def run(workers):
        dl = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate_images)
        batches = list(dl)
        return torch.cat([b["x"] for b in batches]), torch.cat([b["index"] for b in batches])

    x0, i0 = run(0)
    x2, i2 = run(2)
    assert torch.equal(i0, torch.arange(12)) and torch.equal(i0, i2)
    assert torch.equal(x0, x2)
