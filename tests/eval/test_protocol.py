"""The protocol card in every image/video eval JSON, and `aetk eval --protocol` re-running it exactly
or refusing when the data or a metric weight differs."""

import json
import shutil

import pytest
import torch
from PIL import Image

from aetk.cli import main
from eval.protocol import content_sha256
from tokenizers_ae.data.sources import build_image_dataset


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    from tokenizers_ae.models.kl_vae import build_autoencoder_kl

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("proto") / "vae"
    build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Twelve real photo crops as PNG files: a user's own evaluation folder."""
    ds = build_image_dataset("builtin:skimage", resolution=48, random_crop=False, random_flip=False, split="val")
    out = tmp_path_factory.mktemp("images")
    for i in range(12):
        a = ((ds[i]["x"].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        Image.fromarray(a).save(out / f"img{i:02d}.png")
    return out


def evaluate(vae, tmp_path, name, *flags):
    out = tmp_path / f"{name}.json"
    code = main(["eval", str(vae), "--json", str(out), *flags])
    return code, (json.loads(out.read_text()) if code == 0 else None)


def test_card_names_the_exact_data_and_a_rerun_reproduces_the_numbers(vae, folder, tmp_path):
    code, first = evaluate(vae, tmp_path, "first", "--data", str(folder), "--resolution", "32", "--n", "8",
                           "--fit-n", "4", "--baseline", "pca")
    assert code == 0
    card = first["protocol"]
    assert card["kind"] == "image" and card["data"]["items"] == 8 and len(card["data"]["sha256"]) == 64
    assert card["settings"]["resolution"] == 32 and card["settings"]["baselines"] == ["pca"]
    assert card["libraries"]["torchmetrics"] and card["libraries"]["piq"]
    assert card["weights"] == {"lpips_weights": None, "inception_weights": None}
    # The hash is of the evaluated pixels themselves.
    ds = build_image_dataset(str(folder), resolution=32, random_crop=False, random_flip=False)
    assert card["data"]["sha256"] == content_sha256(torch.stack([ds[i]["x"] for i in range(8)]))

    # Other flags on the command line lose to the protocol's; the numbers repeat exactly.
    code, again = evaluate(vae, tmp_path, "again", "--protocol", str(tmp_path / "first.json"), "--data",
                           "builtin:skimage", "--resolution", "64", "--n", "3")
    assert code == 0 and again["protocol"]["data"] == card["data"]
    for k in ("psnr", "ssim", "ms_ssim", "haarpsi", "fsim"):
        assert again["model"][k] == first["model"][k]
    assert again["pca"]["psnr"] == first["pca"]["psnr"]


def test_changed_data_or_missing_metric_weights_are_refused(vae, folder, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    assert evaluate(vae, tmp_path, "card", "--data", str(data), "--resolution", "32", "--n", "6")[0] == 0
    card = tmp_path / "card.json"

    img = Image.open(data / "img03.png")
    img.putpixel((10, 10), (255, 0, 0))  # one pixel of one evaluated image
    img.save(data / "img03.png")
    capsys.readouterr()
    assert evaluate(vae, tmp_path, "x", "--protocol", str(card))[0] != 0
    err = capsys.readouterr().err
    assert "the evaluated data differ from the protocol's" in err and "Traceback" not in err

    c = json.loads(card.read_text())
    c["protocol"]["weights"]["lpips_weights"] = "0" * 64
    card.write_text(json.dumps(c))
    assert evaluate(vae, tmp_path, "y", "--protocol", str(card))[0] != 0
    assert "pass them with --lpips-weights" in capsys.readouterr().err

    (tmp_path / "no-card.json").write_text(json.dumps({"model": {}}))
    assert evaluate(vae, tmp_path, "z", "--protocol", str(tmp_path / "no-card.json"))[0] != 0
    assert "no protocol card in it" in capsys.readouterr().err


def test_pca_fit_data_is_explicit_and_a_starved_fit_is_called_out(vae, folder, tmp_path, caplog):
    import logging

    flags = ["--data", str(folder), "--resolution", "32", "--n", "8", "--baseline", "pca"]
    with caplog.at_level(logging.WARNING, logger="aetk.eval"):
        code, starved = evaluate(vae, tmp_path, "starved", *flags)
    assert code == 0 and starved["pca"]["fit_items"] == 4  # the 4 images after the first 8
    assert "only 4 items" in caplog.text and "--fit-data" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aetk.eval"):
        code, fair = evaluate(vae, tmp_path, "fair", *flags, "--fit-data", "builtin:skimage", "--fit-n", "48")
    assert code == 0 and fair["pca"]["fit_items"] == 48 and "PCA baseline" not in caplog.text
    s = fair["protocol"]["settings"]
    assert s["fit_data"] == "builtin:skimage" and len(s["fit_sha256"]) == 64
    assert fair["model"]["psnr"] == starved["model"]["psnr"] and fair["pca"]["psnr"] != starved["pca"]["psnr"]


def test_pca_is_fitted_on_items_spread_over_the_fit_folder_not_its_first_ones(vae, folder, tmp_path):
    from tokenizers_ae.data.spread import spread_items

    assert spread_items(0, 12, 4) == [0, 3, 6, 9] and spread_items(8, 12, 8) == [8, 9, 10, 11]
    assert spread_items(2, 12, 5) == [2, 4, 6, 8, 10] and spread_items(5, 3, 4) == []
    code, res = evaluate(vae, tmp_path, "spread", "--data", str(folder), "--resolution", "32", "--n", "4",
                         "--baseline", "pca", "--fit-data", str(folder), "--fit-n", "4")
    assert code == 0 and res["pca"]["fit_items"] == 4
    ds = build_image_dataset(str(folder), resolution=32, random_crop=False, random_flip=False, split="train")
    spread = torch.stack([ds[i]["x"] for i in (0, 3, 6, 9)])
    first = torch.stack([ds[i]["x"] for i in range(4)])
    s = res["protocol"]["settings"]
    assert s["fit_sha256"] == content_sha256(spread) != content_sha256(first)
    assert "evenly spaced" in s["pca_fit"]
