"""`aetk export --push-to-hub REPO`: an export (directory with its model card, or an SD single file)
uploaded to a Hugging Face Hub model repository through `huggingface_hub`.

The upload needs network and a token (`hf auth login`, or HF_TOKEN). Whatever fails, the local
export is already complete, and the message says so along with the command that retries the upload.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id


class HubError(ValueError):
    """An upload that could not happen, with what to do (a user's error, not a bug: one line)."""


def check_repo_id(repo_id: str) -> None:
    """HubError unless `repo_id` is a valid OWNER/NAME (checked before exporting, to fail early)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        why = str(e).splitlines()[0]
        raise HubError(f"--push-to-hub {repo_id}: not a Hub repo id ({why}); use OWNER/NAME") from None
    if "/" not in repo_id:
        raise HubError(f"--push-to-hub {repo_id}: give the owner too, OWNER/NAME")


def push_export(out: str | Path, repo_id: str, *, private: bool = False, api: HfApi | None = None,
                commit_message: str = "Upload from aetk export") -> str:
    """Upload the export at `out` to the model repo `repo_id` (created if missing); its URL.

    A directory goes up whole (weights, config.json, README.md model card, latent_stats.json);
    a single file goes up under its own name. `api`: the client (default `HfApi()`)."""
    out = Path(out)
    retry = f"the export at {out} is complete; retry with `hf upload {repo_id} {out}`"
    check_repo_id(repo_id)
    if not out.exists():
        raise HubError(f"--push-to-hub: nothing at {out} to upload")
    api = api or HfApi()
    token = api.token or get_token()
    if not token:
        raise HubError(f"--push-to-hub {repo_id}: no Hugging Face token (run `hf auth login` or set HF_TOKEN); {retry}")
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True, token=token)
        if out.is_dir():
            api.upload_folder(repo_id=repo_id, folder_path=out, repo_type="model", token=token,
                              commit_message=commit_message)
        else:
            api.upload_file(path_or_fileobj=out, path_in_repo=out.name, repo_id=repo_id, repo_type="model",
                            token=token, commit_message=commit_message)
    except Exception as e:  # network, auth, permissions, quota: all reported as one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HubError(f"--push-to-hub {repo_id}: the upload failed ({type(e).__name__}: {first}); {retry}") from None
    return str(url)
