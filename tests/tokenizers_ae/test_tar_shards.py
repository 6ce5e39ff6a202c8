"""WebDataset-style tar shards: same items as the folder, corrupt members skipped, exact resume,
and a 2-process encode that covers every item once."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, run_cli
from PIL import Image

from tokenizers_ae.data.sources import build_image_dataset
from tokenizers_ae.data.tar_shards import TarShardImages


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    folder = root / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(11):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / "sub" / f"im{i:02d}.png")
    (folder / "sub" / "zz_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = root / "shards"
    subprocess.run([sys.executable, str(REPO / "scripts/make_shards.py"), str(folder), str(out), "--shard-size", "5"],
                   check=True, capture_output=True)
    return folder, out


def test_shards_hold_the_folder_items_in_order(shards):
    folder, out = shards
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    tar = build_image_dataset(str(out), resolution=16, random_flip=False)
    ref = build_image_dataset(str(folder), resolution=16, random_flip=False)
    assert isinstance(tar, TarShardImages) and len(tar) == len(ref) == 12
    for i in range(11):
        assert torch.equal(tar[i]["x"], ref[i]["x"])
    item = tar[11]  # the broken member: skipped, reported, substituted
    assert item["bad"] == [11] and "zz_broken.jpg" in tar.describe(11)


def test_sharded_training_resumes_exactly(shards, tmp_path, tiny_config):
    from train.loop import Trainer

    _, out = shards
    extra = [f"data.path={out}", "train.mixed_precision=no", "loss.disc_start=2"]

    def weights(t):
        return {k: v.clone() for k, v in t.task.generator.state_dict().items()}

    a = Trainer(tiny_config(tmp_path / "a", *extra))
    for _ in range(4):
        a.step(a.next_micro_batches())
    wa = weights(a)
    a.close()
    b = Trainer(tiny_config(tmp_path / "b", *extra))
    for _ in range(2):
        b.step(b.next_micro_batches())
    b.save()
    b.close()
    c = Trainer(tiny_config(tmp_path / "b", *extra))
    assert c.maybe_resume() is not None and c.step_idx == 2
    for _ in range(2):
        c.step(c.next_micro_batches())
    wc = weights(c)
    c.close()
    for k in wa:
        assert torch.equal(wa[k], wc[k]), k


@pytest.mark.slow
def test_two_process_encode_of_shards_covers_every_item_once(shards, tmp_path):
    from latent_diffusion.shards import LatentShardDataset
    from tokenizers_ae.models.kl_vae import build_autoencoder_kl

    _, out = shards
    torch.manual_seed(0)
    build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2).save_pretrained(
        tmp_path / "vae")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "aetk"]
    run_cli(["encode", str(tmp_path / "vae"), "--data", str(out), "--out", str(tmp_path / "lat"),
             "--resolution", "16", "--shard-size", "3"], launcher=torchrun)
    m = json.loads((tmp_path / "lat/manifest.json").read_text())
    ds = LatentShardDataset(tmp_path / "lat")
    assert m["count"] == 11 and sorted(ds[i]["index"] for i in range(len(ds))) == list(range(11))
    assert [b["source"].split(":")[-1] for b in m["bad"]] == ["sub/zz_broken.jpg"]


def test_members_a_truncated_shard_lost_are_counted(shards, tmp_path, caplog):
    """A shard cut in half: with the index make_shards writes, every member it lost is an unreadable
    item (counted, warned, served around); without one, the truncation is warned about."""
    import shutil

    _, out = shards
    cut = tmp_path / "shards"
    shutil.copytree(out, cut)
    tar = cut / "shard-000000.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    ds = build_image_dataset(str(cut), resolution=16, random_flip=False)
    assert len(ds) == 12  # the index's members, not only those left in the file
    lost = [i for i in range(5) if ds.why_unreadable(i) or ds[i]["bad"]]
    assert lost and any("missing" in r.getMessage() or "truncated" in r.getMessage() for r in caplog.records)
    bad = {j for i in range(len(ds)) for j in ds[i]["bad"]}
    assert bad >= set(lost)  # each lost member is counted as an unreadable item
    (cut / "index.json").unlink()
    caplog.clear()
    TarShardImages(str(cut), transform=ds.transform)
    assert any("truncated" in r.getMessage() for r in caplog.records)


def test_a_file_that_is_not_a_tar_is_one_line_naming_it(tmp_path):
    from train.config import ConfigError
    from train.data.sources import image_datasets
    from train.recipe import config_from_dict

    (tmp_path / "x.tar").write_bytes(b"this is not a tar archive at all" * 40)
    cfg = config_from_dict({}, [f"data.path={tmp_path / 'x.tar'}"])
    with pytest.raises(ConfigError, match=r"data.path: .*x.tar: not a tar archive"):
        image_datasets(cfg)
