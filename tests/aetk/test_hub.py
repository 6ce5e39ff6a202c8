"""`aetk export --push-to-hub`: everything up to the upload call, and one-line failures after which
the local export is complete."""

import pytest
import torch
from huggingface_hub import HfApi

import aetk.hub
from aetk.cli import main
from tests.helpers import run_cli
from tokenizers_ae.models.kl_vae import KLVAE, build_autoencoder_kl


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    torch.manual_seed(0)
    vae = build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2)
    return KLVAE(vae).save_pretrained(tmp_path_factory.mktemp("hub") / "vae")


class RecordingApi(HfApi):
    """The real client with its two network calls replaced by a record of what they were given."""

    calls: list = []

    def create_repo(self, repo_id, **kw):
        RecordingApi.calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kw):
        files = sorted(p.name for p in folder_path.iterdir())
        RecordingApi.calls.append(("upload_folder", repo_id, {"files": files, **kw}))


def test_push_uploads_the_export_with_its_model_card(source, tmp_path, monkeypatch, capsys):
    RecordingApi.calls = []
    monkeypatch.setattr(aetk.hub, "HfApi", lambda: RecordingApi(token="hf_test"))
    out = tmp_path / "export"
    assert main(["export", str(source), "--out", str(out), "--push-to-hub", "me/tiny-vae", "--private"]) == 0
    (c, repo, kw), (u, repo2, up) = RecordingApi.calls
    assert (c, repo, u, repo2) == ("create_repo", "me/tiny-vae", "upload_folder", "me/tiny-vae")
    assert kw["private"] is True and kw["exist_ok"] is True and kw["repo_type"] == "model"
    assert {"README.md", "config.json", "diffusion_pytorch_model.safetensors"} <= set(up["files"])
    assert "uploaded to https://huggingface.co/me/tiny-vae" in capsys.readouterr().out


def test_bad_repo_id_is_refused_before_exporting(source, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["export", str(source), "--out", str(out), "--push-to-hub", "no owner here"]) != 0
    assert "not a Hub repo id" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("token", [None, "hf_not_a_real_token"])
def test_offline_push_fails_in_one_line_and_keeps_the_export(source, tmp_path, token):
    out = tmp_path / "export"
    # run_cli lays these over the caller's environment: an empty HF_TOKEN hides one set there.
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": token or ""}
    proc = run_cli(["export", str(source), "--out", str(out), "--push-to-hub", "me/tiny-vae"], env=env, check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert ("no Hugging Face token" if token is None else "the upload failed") in err[-1]
    assert f"the export at {out} is complete" in err[-1]
    assert (out / "config.json").is_file() and (out / "README.md").is_file()
