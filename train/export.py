"""Load a trained KL-VAE from wherever it lives and write it where the ecosystem reads it.

Sources (`load_vae`): a run directory (newest checkpoint), one checkpoint directory, a diffusers
`AutoencoderKL` directory, or a single-file `.safetensors` with latent-diffusion key names.
Targets (`export_vae`): a diffusers directory (`save_pretrained`) or an SD single file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from eval.latents import latent_statistics, set_scaling_factor
from tokenizers_ae.export import load_sd_single_file, save_sd_single_file
from train.checkpoint import latest_checkpoint
from train.config import ConfigError, load_config

log = logging.getLogger("aetk.export")

SD_DEFAULT_SCALING = 0.18215  # diffusers' AutoencoderKL default, Stable Diffusion's measured value


def _checkpoint_state(ckpt: Path, weights: str, sub: str = "") -> dict[str, torch.Tensor]:
    """The averaged (`ema`) or raw weights of the trained model in a checkpoint, keyed like the
    model itself (`sub` selects a submodule, e.g. "vae.")."""
    if weights == "ema":
        state, prefix = load_file(ckpt / "extra.safetensors"), "ema.module." + sub
        if not any(k.startswith(prefix) for k in state):
            raise ValueError(f"{ckpt} holds no EMA weights (train.ema_decay was off); use --weights raw")
    else:
        state, prefix = load_file(ckpt / "model.safetensors"), "autoencoder." + sub
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _vae_from_checkpoint(ckpt: Path, weights: str) -> AutoencoderKL:
    from train.registry import build_model

    cfg = load_config(ckpt / "config.yaml")
    if cfg.model.kind != "kl_vae":
        raise ConfigError(f"{ckpt}: model.kind={cfg.model.kind} is not a KL-VAE")
    vae = build_model(cfg).vae
    vae.load_state_dict(_checkpoint_state(ckpt, weights, "vae."), strict=True)
    meta = ckpt.parent.parent / "model" / "config.json"  # the scaling factor measured at the end of training
    if meta.is_file():
        set_scaling_factor(vae, json.loads(meta.read_text()).get("scaling_factor", vae.config.scaling_factor))
    return vae.eval()


def load_vae(path: str | Path, *, weights: str = "ema") -> AutoencoderKL:
    """An AutoencoderKL in eval mode from a run dir, checkpoint dir, diffusers dir or single file."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    p = Path(path)
    if p.is_file() and p.suffix == ".safetensors":
        return load_sd_single_file(p)
    if (p / "config.json").is_file() and not (p / "checkpoints").exists():
        return AutoencoderKL.from_pretrained(p).eval()
    if (p / "COMPLETE").is_file():
        return _vae_from_checkpoint(p, weights)
    ckpt = latest_checkpoint(p / "checkpoints")
    if ckpt is not None:
        return _vae_from_checkpoint(ckpt, weights)
    if (p / "model" / "config.json").is_file():
        return AutoencoderKL.from_pretrained(p / "model").eval()
    raise FileNotFoundError(f"{p}: not a run directory, checkpoint, diffusers AutoencoderKL directory or "
                            ".safetensors single file")


def _checkpoint_of(p: Path) -> Path | None:
    if (p / "COMPLETE").is_file():
        return p
    return latest_checkpoint(p / "checkpoints")


def _vq_from_checkpoint(ckpt: Path, weights: str):
    from train.registry import build_model

    model = build_model(load_config(ckpt / "config.yaml"))
    model.load_state_dict(_checkpoint_state(ckpt, weights), strict=True)
    return model.eval()


def _vq_from_diffusers(path: Path):
    from diffusers import VQModel

    from tokenizers_ae.models.vq_vae import VQVAE
    from tokenizers_ae.quantizers import VectorQuantizer

    vq = VQModel.from_pretrained(path)
    cb = vq.quantize.embedding.weight
    q = VectorQuantizer(codebook_size=cb.shape[0], dim=cb.shape[1])
    with torch.no_grad():
        q.codebook.copy_(cb)
    return VQVAE(vq, q).eval()


def _vq_from_native(path: Path):
    from train.config import config_from_dict
    from train.registry import build_model

    meta = json.loads((path / "aetk_model.json").read_text())
    if meta.get("format") != "aetk-model" or meta.get("version") != 1:
        raise ValueError(f"{path}: unsupported aetk model format {meta.get('format')} v{meta.get('version')}")
    model = build_model(config_from_dict({"model": meta["recipe"], **({"data": meta["data"]} if "data" in meta else {})}))
    model.load_state_dict(load_file(path / "model.safetensors"), strict=True)
    return model.eval()


def load_classic(path: str | Path, *, weights: str = "ema"):
    """(model in eval mode, its Config) of a `model.kind: classic` run dir, checkpoint or exported
    model/ dir; None when `path` holds something else."""
    from train.config import config_from_dict
    from train.registry import build_model

    p = Path(path)
    if (p / "aetk_model.json").is_file():
        meta = json.loads((p / "aetk_model.json").read_text())
        if meta.get("recipe", {}).get("kind") != "classic":
            return None
        cfg = config_from_dict({"model": meta["recipe"], "data": meta.get("data", {})})
        return _vq_from_native(p), cfg
    ckpt = _checkpoint_of(p) if p.is_dir() else None
    if ckpt is None:
        return None
    cfg = load_config(ckpt / "config.yaml")
    if cfg.model.kind != "classic":
        return None
    model = build_model(cfg)
    if weights == "ema" and cfg.train.ema_decay is None:
        weights = "raw"  # trained without an average: the raw weights are the model
    model.load_state_dict(_checkpoint_state(ckpt, weights), strict=True)
    return model.eval(), cfg


def load_codec(path: str | Path, *, weights: str = "ema"):
    """A SoundStream audio codec in eval mode from a run dir, checkpoint or exported model/ dir.
    Raises FileNotFoundError / ValueError naming what the path holds instead."""
    from train.registry import build_model

    p = Path(path)
    # A run dir's model/ export holds the averaged weights; `raw` means its newest checkpoint's.
    skip_export = weights == "raw" and p.is_dir() and _checkpoint_of(p) is not None
    for d in (p,) if skip_export else (p, p / "model"):
        if (d / "aetk_model.json").is_file():
            kind = json.loads((d / "aetk_model.json").read_text()).get("recipe", {}).get("kind")
            if kind != "soundstream":
                raise ValueError(f"{d} holds a {kind!r} model, not an audio codec (model.kind: soundstream)")
            return _vq_from_native(d)
    ckpt = _checkpoint_of(p) if p.is_dir() else None
    if ckpt is None:
        raise FileNotFoundError(f"{p}: not an audio codec run directory, checkpoint or exported model/ directory")
    cfg = load_config(ckpt / "config.yaml")
    if cfg.model.kind != "soundstream":
        raise ValueError(f"{ckpt} is a {cfg.model.kind!r} run, not an audio codec (model.kind: soundstream)")
    model = build_model(cfg)
    if weights == "ema" and cfg.train.ema_decay is None:
        weights = "raw"
    model.load_state_dict(_checkpoint_state(ckpt, weights), strict=True)
    return model.eval()


def load_tokenizer(path: str | Path, *, weights: str = "ema"):
    """A KL-VAE (diffusers AutoencoderKL) or a VQ tokenizer (aetk VQVAE), in eval mode, from a run
    dir, checkpoint, diffusers directory (AutoencoderKL or VQModel), aetk native dir or single file."""
    p = Path(path)
    if (p / "aetk_model.json").is_file():
        return _vq_from_native(p)
    if (p / "config.json").is_file() and not (p / "checkpoints").exists():
        if json.loads((p / "config.json").read_text()).get("_class_name") == "VQModel":
            return _vq_from_diffusers(p)
        return load_vae(p, weights=weights)
    ckpt = _checkpoint_of(p) if p.is_dir() else None
    if ckpt is not None and load_config(ckpt / "config.yaml").model.kind == "vq_vae":
        return _vq_from_checkpoint(ckpt, weights)
    return load_vae(p, weights=weights)


def export_vae(vae: AutoencoderKL, fmt: str, out: str | Path) -> Path:
    out = Path(out)
    if fmt == "diffusers":
        vae.save_pretrained(out, safe_serialization=True)
    elif fmt == "sd-single-file":
        if out.suffix != ".safetensors":
            raise ValueError(f"--out for sd-single-file must end in .safetensors, got {out}")
        out.parent.mkdir(parents=True, exist_ok=True)
        save_sd_single_file(vae, out)
    else:
        raise ValueError(f"unknown export format {fmt!r}; expected diffusers or sd-single-file")
    return out


def export_codec_encodec(model, out: str | Path) -> Path:
    """An aetk audio codec as a transformers EncodecModel directory (`EncodecModel.from_pretrained(out)`
    encodes to and decodes aetk's codes); ValueError, before anything is written, when the
    architecture is not one EnCodec can express (see `audio_codec.encodec_export`)."""
    from audio_codec.encodec_export import to_encodec

    encodec = to_encodec(model)  # raises before any file exists
    out = Path(out)
    encodec.save_pretrained(out, safe_serialization=True)
    return out


def measure_scaling(vae: AutoencoderKL, data_path: str, *, resolution: int, n: int = 256, batch: int = 16,
                    seed: int = 0) -> dict:
    """Latent statistics on the first `n` images of a dataset (centre crops, no flips)."""
    from train.data import build_image_dataset

    ds = build_image_dataset(data_path, resolution=resolution, seed=seed, random_crop=False, random_flip=False)
    n = min(n, len(ds))
    batches = (torch.stack([ds[i]["x"] for i in range(s, min(s + batch, n))]) for s in range(0, n, batch))
    return latent_statistics(vae, batches, seed=seed)


def warn_if_unmeasured(vae: AutoencoderKL) -> None:
    if abs(vae.config.scaling_factor - SD_DEFAULT_SCALING) < 1e-9:
        log.warning("scaling_factor is diffusers' default %.5f (Stable Diffusion's), not measured on this "
                    "model; pass --data to measure it or --scaling-factor to set it", SD_DEFAULT_SCALING)


def vq_to_diffusers(model):
    """A diffusers VQModel holding a VQVAE with a plain codebook lookup (EMA-trained included).

    Raises ValueError saying why when the quantizer is not one VQModel can hold (FSQ, LFQ,
    cosine or factorised lookups, residual VQ): diffusers' VQModel quantizes by Euclidean nearest
    neighbour in `vq_embed_dim` dimensions against one codebook.
    """
    from diffusers import VQModel

    from tokenizers_ae.quantizers import VectorQuantizer

    from tokenizers_ae.quantizers import ResidualVQ

    q = model.quantizer
    if isinstance(q, ResidualVQ):
        raise ValueError("diffusers VQModel holds one codebook; residual VQ sums several levels, so it is "
                         "exported in aetk's native format")
    if not isinstance(q, VectorQuantizer):
        raise ValueError(f"diffusers VQModel quantizes by codebook lookup; a {type(q).__name__} has no codebook "
                         "(its codes are computed), so it is exported in aetk's native format")
    if q.cosine or q.codebook_dim != q.dim:
        raise ValueError("diffusers VQModel looks up raw latents by Euclidean distance; cosine or factorised "
                         "(codebook_dim) lookups cannot be expressed in it, so they are exported natively")
    vq = VQModel.from_config(model.backbone_config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("quantizer.")}
    state["quantize.embedding.weight"] = q.codebook.detach().clone()
    vq.load_state_dict(state, strict=True)
    return vq.eval()


def export_vq(model, out: str | Path) -> str:
    """A VQ tokenizer as a diffusers VQModel when it can be one, else in aetk's native format.
    Returns what was written (with the reason when native)."""
    try:
        vq_to_diffusers(model).save_pretrained(out, safe_serialization=True)
        return "a diffusers VQModel"
    except ValueError as why:
        save_native(model, out, model_config={"recipe": model.recipe})
        return f"aetk's native format ({why})"


def save_native(model, out: str | Path, *, model_config: dict) -> Path:
    """Any aetk model as `model.safetensors` + `aetk_model.json` (versioned)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, out / "model.safetensors")
    (out / "aetk_model.json").write_text(json.dumps({"format": "aetk-model", "version": 1, **model_config}, indent=1))
    return out
