"""The evaluation protocol card: what exactly an `aetk eval` number was measured on, and with what.

Reconstruction figures are only comparable under the same data, split, resolution, crop rule and
count, and with the same metric code and weights; the anchors' trackers are full of rFIDs that
differ tenfold for want of one of these. Every eval JSON carries a card:

- `data`: the source as given, the split read, the items, and `sha256`, a content hash of the exact
  evaluated tensors (quantized to 8 bits, so it names the pixels, not a float's last bit);
- `settings`: resolution, crop rule, count and every flag that changes the numbers;
- `libraries`: the versions of the metric implementations;
- `weights`: the sha256 of any metric weights used (LPIPS's VGG, rFID's Inception), or null.

`aetk eval --protocol FILE` reads the card back (from an eval JSON or a bare card), re-runs with its
settings, and refuses when the data hash or a metric weight differs.

Beside the card, an eval JSON names the weights it measured (`evaluated`: the source, and a sha256 of
the model's state dict), so `aetk export --eval FILE` can put the figures in a model card only when
they are the exported weights' own.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import torch

from audio_codec.container import state_dict_hash
from tokenizers_ae.pretrained import file_sha256

VERSION = 1
LIBRARIES = ("torch", "torchmetrics", "piq", "diffusers", "lpips", "torch-fidelity", "pesq", "pystoi")


def content_sha256(x: torch.Tensor, bits: int = 8, extra=None) -> str:
    """sha256 of x (in [-1, 1]) quantized to `bits` (8: pixels; 16: audio samples), with its shape
    and `extra` (JSON, e.g. audio clips' scored lengths): the evaluated set's identity."""
    if bits == 8:
        q = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).contiguous()
    elif bits == 16:
        q = (x.detach().float().cpu().clamp(-1, 1) * 32767).round().to(torch.int16).contiguous()
    else:
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    h = hashlib.sha256(json.dumps([bits, list(q.shape), extra]).encode())
    h.update(q.numpy().tobytes())
    return h.hexdigest()


def library_versions() -> dict[str, str | None]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def weight_hashes(paths: dict[str, str | None]) -> dict[str, str | None]:
    """flag name -> the sha256 of the weights file it names (None where none is given)."""
    return {k: file_sha256(Path(v)) if v else None for k, v in paths.items()}


def bits_of(kind: str) -> int:
    return 16 if kind == "audio" else 8


def card(*, kind: str, data: str, split: str, x: torch.Tensor, settings: dict,
         weights: dict[str, str | None] | None = None, extra=None) -> dict:
    """The protocol card of an evaluation of `x` (the exact evaluated tensors) from `data`; `kind`:
    image, video or audio (whose samples are hashed at 16 bits); `weights`: `weight_hashes` of the
    metric weights used."""
    digest = content_sha256(x, bits_of(kind), extra)
    return {"version": VERSION, "kind": kind,
            "data": {"source": data, "split": split, "items": int(x.shape[0]), "sha256": digest},
            "settings": settings, "libraries": library_versions(),
            "weights": dict(weights or {})}


class ProtocolError(ValueError):
    """A protocol that cannot be followed (one line: what differs and what to do)."""


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor of `model.state_dict()`: which weights
    an evaluation measured."""
    return state_dict_hash(model.state_dict(), length=64)


def evaluated(model: torch.nn.Module, source: str, weights: str) -> dict:
    """The `evaluated` entry of an eval JSON: `source` as given, `weights` (ema or raw) and the hash."""
    return {"source": source, "weights": weights, "sha256": weights_sha256(model)}


def load_evaluation(path: str | Path, sha256: str, source: str) -> dict:
    """The `aetk eval --json` output at `path`, refused (ProtocolError, one line) unless it holds a card
    and measured exactly the weights whose `weights_sha256` is `sha256` (`source`: what the user named
    them by)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise ProtocolError(f"--eval {path}: no such file (an `aetk eval ... --json FILE` output)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError(f"--eval {path}: not JSON ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("protocol"), dict):
        raise ProtocolError(f"--eval {path}: not an `aetk eval --json` output (it has no protocol card)")
    done = raw.get("evaluated")
    if not isinstance(done, dict) or "sha256" not in done:
        raise ProtocolError(f"--eval {path}: it does not say which weights it measured (written by an older aetk); "
                            f"run `aetk eval {source} --protocol {path} --json {path}` again")
    if done["sha256"] != sha256:
        raise ProtocolError(
            f"--eval {path}: it measured other weights ({done.get('source')}, {done.get('weights')} weights, sha256 "
            f"{done['sha256'][:12]}...) than {source} ({sha256[:12]}...); run `aetk eval {source} --protocol {path} "
            f"--json NEW.json` and pass that")
    return raw


def load(path: str | Path) -> dict:
    """The card in `path`: an `aetk eval` JSON (its "protocol") or a bare card."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProtocolError(f"--protocol {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ProtocolError(f"--protocol {path}: not JSON ({e})") from None
    c = raw.get("protocol", raw) if isinstance(raw, dict) else None
    if not isinstance(c, dict) or not {"version", "data", "settings"} <= c.keys():
        raise ProtocolError(f"--protocol {path}: no protocol card in it (an `aetk eval --json` output holds one)")
    if c["version"] != VERSION:
        raise ProtocolError(f"--protocol {path}: card version {c['version']}, this aetk reads {VERSION}")
    return c


def check_data(expected: dict | None, x: torch.Tensor, data: str, extra=None) -> None:
    """ProtocolError unless `x` (and `extra`) is the exact set the card `expected` was measured on."""
    if expected is None:
        return
    want, got = expected["data"]["sha256"], content_sha256(x, bits_of(expected.get("kind", "image")), extra)
    if got != want:
        raise ProtocolError(
            f"--protocol: the evaluated data differ from the protocol's ({expected['data']['items']} items of "
            f"{expected['data']['source']}, sha256 {want[:12]}...; {data} gives {x.shape[0]} items, sha256 "
            f"{got[:12]}...): the numbers would not be comparable. Restore the data, or drop --protocol")


def check_weights(expected: dict | None, given: dict[str, str | None]) -> None:
    """ProtocolError unless every metric weight the card used is given with the same hash (`given`:
    `weight_hashes` of this run's)."""
    if expected is None:
        return
    for name, want in (expected.get("weights") or {}).items():
        got = given.get(name)
        if want is not None and got != want:
            flag = "--" + name.replace("_", "-")
            raise ProtocolError(f"--protocol: the protocol's {name} had sha256 {want[:12]}...; "
                                + (f"{flag} gives {got[:12]}..." if got else f"pass them with {flag}"))


def check_fit(expected: dict | None, fit: torch.Tensor | None) -> None:
    """ProtocolError unless the baseline's fit set is the card's (its PCA numbers depend on it)."""
    want = ((expected or {}).get("settings") or {}).get("fit_sha256")
    if want is None:
        return
    got = content_sha256(fit) if fit is not None else None
    if got != want:
        now = got[:12] + "..." if got else "none"
        raise ProtocolError(f"--protocol: the PCA baseline's fit data differ from the protocol's (sha256 "
                            f"{want[:12]}...; now {now}). Restore them, or drop --protocol")
