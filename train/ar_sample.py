"""The AR prior outside the training step: export (`model/ar/` + `prior.json`), loading, and
samples -> first-stage decoder -> files, for eval steps and `aetk sample`.

`prior.json` (version 1): {"kind": "ar_prior", "version", "layout": TokenLayout fields,
"token_shape", "first_stage", "sampling": {top_k, top_p, temperature}, "class_names"?}.
The first stage is the model that made the tokens: a VQ tokenizer (images) or an audio codec.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from latent_diffusion.ar_prior import ARPrior, TokenLayout, sample
from train.config import ConfigError

PRIOR_VERSION = 1


def export_ar(prior: ARPrior, out_dir: Path, *, first_stage: str | None, sampling: dict,
              class_names: list[str] | None = None) -> Path:
    """`out_dir/ar/` (transformers `save_pretrained`, safetensors) and `out_dir/prior.json`."""
    out_dir = Path(out_dir)
    prior.lm.save_pretrained(out_dir / "ar", safe_serialization=True)
    meta = {"kind": "ar_prior", "version": PRIOR_VERSION, "layout": prior.layout.to_dict(),
            "token_shape": list(prior.layout.shape), "first_stage": first_stage, "sampling": sampling}
    if class_names:
        meta["class_names"] = class_names
    (out_dir / "prior.json").write_text(json.dumps(meta, indent=1))
    return out_dir


def load_ar(model_dir: str | Path) -> tuple[ARPrior, dict]:
    """(prior in eval mode, prior.json) from an exported `model/` directory."""
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "prior.json").read_text())
    if meta.get("kind") != "ar_prior" or meta.get("version") != PRIOR_VERSION:
        raise ConfigError(f"{model_dir}/prior.json: kind {meta.get('kind')} v{meta.get('version')} is not "
                          f"ar_prior v{PRIOR_VERSION}")
    lm = AutoModelForCausalLM.from_pretrained(model_dir / "ar")
    return ARPrior(lm, TokenLayout.from_dict(meta["layout"])).eval(), meta


def load_first_stage(path: str, layout: TokenLayout):
    """The VQ tokenizer (images) or audio codec that decodes this layout's tokens, in eval mode."""
    from train.export import load_codec, load_tokenizer

    if layout.modality == "audio":
        return load_codec(path)
    model = load_tokenizer(path)
    if not hasattr(model, "decode_indices"):
        raise ConfigError(f"{path} is a {type(model).__name__}, not a VQ tokenizer: it cannot decode tokens")
    return model


@torch.no_grad()
def decode(first_stage, layout: TokenLayout, tokens: torch.Tensor, tile: int | None = None) -> torch.Tensor:
    """tokens (n, *shape) -> images (n, C, H, W) or audio (n, 1, T), in [-1, 1]."""
    tokens = tokens.to(next(first_stage.parameters()).device)
    out = first_stage.decode(tokens) if layout.modality == "audio" else first_stage.decode_indices(tokens, tile)
    return out.float().clamp(-1, 1)


def write(decoded: torch.Tensor, layout: TokenLayout, out: str | Path, *, sample_rate: int | None = None) -> list[Path]:
    """Images -> one PNG grid at `out`; audio -> `out/sample-000.wav`, ... (16-bit)."""
    out = Path(out)
    if layout.modality == "image":
        from torchvision.utils import make_grid, save_image

        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(make_grid((decoded + 1) / 2, nrow=min(8, len(decoded)), padding=2, pad_value=1.0), out)
        return [out]
    from train.codec import _write_wav

    return [_write_wav(out / f"sample-{i:03d}.wav", clip, sample_rate) for i, clip in enumerate(decoded)]


def labels_for(n: int, layout: TokenLayout, label: int | str | None, class_names: list[str] | None = None):
    """`train.labels.sample_labels` for this layout's classes."""
    from train.labels import sample_labels

    return sample_labels(n, layout.num_classes, label, class_names)


@torch.no_grad()
def evaluate_ar(trainer, step: int) -> dict[str, float]:
    """Validation NLL (nats and bits per token) of the averaged prior; samples (seeded) decoded by
    `model.first_stage` into samples/ (a PNG grid, or WAVs for audio tokens)."""
    cfg, prior = trainer.cfg, trainer.averaged_model()
    was_training = prior.training
    prior.eval()
    device = trainer.accelerator.device
    batch = trainer.loaders.val_batch()
    y = batch["y"].to(device) if "y" in batch else None
    nll = float(prior(batch["x"].to(device), y).mean())
    a, layout, n = cfg.model.ar, prior.layout, cfg.data.val_size
    tokens = sample(prior, n=n, seed=cfg.seed, top_k=a.top_k, top_p=a.top_p, temperature=a.temperature,
                    labels=labels_for(n, layout, None))
    prior.train(was_training)
    out = {"eval/nll": nll, "eval/bits_per_token": nll / float(torch.log(torch.tensor(2.0))),
           "eval/sample_code_usage": tokens.unique().numel() / (layout.codebook_size * layout.levels)}
    if cfg.model.first_stage:
        if not hasattr(trainer, "_ar_first_stage"):
            trainer._ar_first_stage = load_first_stage(cfg.model.first_stage, layout).to(device)
        fs = trainer._ar_first_stage
        samples = trainer.run_dir / "samples"
        name = f"sample-{step:07d}.png" if layout.modality == "image" else f"audio-{step:07d}"
        write(decode(fs, layout, tokens), layout, samples / name, sample_rate=getattr(fs, "sample_rate", None))
    return out


def sample_command(model_dir: Path, args) -> int:
    """`aetk sample` of an AR prior: tokens -> first stage -> PNG grid or WAVs."""
    prior, meta = load_ar(model_dir)
    s = meta["sampling"]
    top_k = s["top_k"] if args.top_k is None else args.top_k
    top_p = s["top_p"] if args.top_p is None else args.top_p
    temperature = s["temperature"] if args.temperature is None else args.temperature
    if temperature <= 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ConfigError(f"need --temperature > 0, --top-k >= 0, 0 < --top-p <= 1; got {temperature}, {top_k}, "
                          f"{top_p}")
    layout = prior.layout
    labels = labels_for(args.n, layout, args.label, meta.get("class_names"))
    path = args.vae or meta.get("first_stage")
    if not path:
        raise ConfigError("no first stage to decode with: pass --vae PATH (the VQ tokenizer or codec of the tokens)")
    first_stage = load_first_stage(path, layout)  # before sampling: a wrong path fails fast
    tokens = sample(prior, n=args.n, seed=args.seed, top_k=top_k, top_p=top_p, temperature=temperature, labels=labels)
    written = write(decode(first_stage, layout, tokens, args.tile), layout, args.out,
                    sample_rate=getattr(first_stage, "sample_rate", None))
    what = "a grid" if layout.modality == "image" else f"{len(written)} WAVs"
    print(f"wrote {args.n} samples ({what}) to {args.out}")
    return 0
