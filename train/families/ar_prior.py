"""`model.kind: ar_prior` -- a transformers causal LM (GPT-2 or Llama) over the token shards of
`aetk encode` (a VQ tokenizer's grids or an audio codec's streams; layout from the manifest), with an
optional class token. Exported with transformers' `save_pretrained`; `aetk sample` decodes its
samples through the tokenizer or codec.

Hooks import their parts when called (see `train/families/base.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from train.config import Config, ConfigError, ShardData, check
from train.families.base import EvalContext, Family, SampleRequest


@dataclass
class ARPriorModel:
    kind: Literal["ar_prior"] = "ar_prior"
    arch: Literal["gpt2", "llama"] = "gpt2"
    """`gpt2` (learned positions, GELU MLP) or `llama` (RoPE, SwiGLU, RMSNorm)."""
    width: int = 256
    """Hidden size."""
    layers: int = 6
    """Transformer blocks."""
    heads: int = 8
    """Attention heads (must divide width)."""
    dropout: float = 0.0
    """Dropout of attention (and, for gpt2, of embeddings and residuals)."""
    class_conditional: bool = True
    """Prepend a class token when the shards carry labels (manifest `num_classes`); false: unconditional."""
    top_k: int = 0
    """Sampling in eval steps and the default of `aetk sample --top-k`: keep the k likeliest codes (0: all)."""
    top_p: float = 1.0
    """Sampling: nucleus mass kept (1: all)."""
    temperature: float = 1.0
    """Sampling: logits divided by this (> 0)."""
    first_stage: str | None = None
    """The VQ tokenizer or audio codec that made the tokens: it decodes eval samples and `aetk sample`'s."""

    def __post_init__(self) -> None:
        check(self.width >= 1 and self.layers >= 1 and self.heads >= 1, "model.width", ">= 1 (and layers, heads)")
        check(self.width % self.heads == 0, "model.heads", f"a divisor of model.width={self.width}")
        check(0 <= self.dropout < 1, "model.dropout", "in [0, 1)")
        check(self.top_k >= 0, "model.top_k", ">= 0")
        check(0 < self.top_p <= 1, "model.top_p", "in (0, 1]")
        check(self.temperature > 0, "model.temperature", "> 0")


def build_model(cfg: Config):
    """The LM sized for the token shards at data.path (layout, classes and vocabulary from the manifest)."""
    from latent_diffusion.ar_prior import ARPrior, TokenLayout, build_lm
    from train.data.shards import TokenItems

    m: ARPriorModel = cfg.model
    manifest = TokenItems(cfg.data.path).manifest
    layout = TokenLayout.from_manifest(manifest, class_conditional=m.class_conditional)
    lm = build_lm(arch=m.arch, vocab_size=layout.vocab_size, n_positions=layout.seq_len, width=m.width,
                  layers=m.layers, heads=m.heads, dropout=m.dropout, bos_token_id=layout.bos)
    return ARPrior(lm, layout, sampling={"top_k": m.top_k, "top_p": m.top_p, "temperature": m.temperature},
                   first_stage=m.first_stage, class_names=manifest.get("class_names") if layout.num_classes else None)


def build_task(cfg: Config, model):
    from train.prior_task import ARPriorTask

    t = cfg.train
    return ARPriorTask(prior=model, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)


def datasets(cfg: Config):
    from train.data.sources import token_datasets

    return token_datasets(cfg)


def load_first_stage(path: str, layout):
    """The VQ tokenizer (images) or audio codec that decodes `layout`'s tokens, in eval mode;
    ConfigError naming the path when it holds something else."""
    from audio_codec.model import SoundStream
    from latent_diffusion.sampling import check_token_decoder
    from tokenizers_ae.models.vq_vae import VQVAE
    from tokenizers_ae.pretrained import LoadError

    cls = SoundStream if layout.modality == "audio" else VQVAE
    try:
        model = cls.from_pretrained(path)
        check_token_decoder(model, layout, path)
    except (LoadError, ValueError) as e:
        raise ConfigError(f"first stage: {e}") from None
    return model


class Evaluator:
    """Validation NLL (nats and bits per token) of the averaged prior; samples (seeded) decoded by
    `model.first_stage` (loaded once) into samples/ (a PNG grid, or WAVs for audio tokens)."""

    def __init__(self) -> None:
        self.first_stage = None

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        from latent_diffusion.ar_prior import sample as sample_tokens
        from latent_diffusion.sampling import decode_tokens, sample_labels, save_samples

        prior, cfg = ctx.model, ctx.cfg
        was_training = prior.training
        prior.eval()
        nll = float(prior(ctx.val_batch["x"], ctx.val_batch.get("y")).mean())
        layout, n, s = prior.layout, cfg.data.val_size, prior.sampling
        tokens = sample_tokens(prior, n=n, seed=cfg.seed, top_k=s["top_k"], top_p=s["top_p"],
                               temperature=s["temperature"], labels=sample_labels(n, layout.num_classes, None))
        prior.train(was_training)
        out = {"eval/nll": nll, "eval/bits_per_token": nll / math.log(2),
               "eval/sample_code_usage": tokens.unique().numel() / (layout.codebook_size * layout.levels)}
        if cfg.model.first_stage:
            if self.first_stage is None:
                self.first_stage = load_first_stage(cfg.model.first_stage, layout).to(ctx.device)
            name = f"sample-{ctx.step:07d}.png" if layout.modality == "image" else f"audio-{ctx.step:07d}"
            save_samples(decode_tokens(self.first_stage, layout, tokens), layout.modality, ctx.samples / name,
                         sample_rate=getattr(self.first_stage, "sample_rate", None), nrow=min(8, n))
        return out


def export(cfg: Config, model, train_dataset, out: Path) -> None:
    """`model/ar/` (transformers `save_pretrained`) and `model/prior.json`."""
    model.save_pretrained(out)


def sample(prior, req: SampleRequest) -> str:
    """Tokens (seeded; temperature, top-k, top-p: the flags, else the recipe's) -> the first stage ->
    a PNG grid or one WAV per sample in the --out directory."""
    from latent_diffusion.ar_prior import sample as sample_tokens
    from latent_diffusion.sampling import decode_tokens, sample_labels, save_samples

    s = prior.sampling
    top_k = s["top_k"] if req.top_k is None else req.top_k
    top_p = s["top_p"] if req.top_p is None else req.top_p
    temperature = s["temperature"] if req.temperature is None else req.temperature
    if temperature <= 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ConfigError(f"need --temperature > 0, --top-k >= 0, 0 < --top-p <= 1; got {temperature}, {top_k}, "
                          f"{top_p}")
    layout = prior.layout
    try:
        labels = sample_labels(req.n, layout.num_classes, req.label, prior.class_names)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    path = req.first_stage or prior.first_stage
    if not path:
        raise ConfigError("no first stage to decode with: pass --vae PATH (the VQ tokenizer or codec of the tokens)")
    first_stage = load_first_stage(path, layout)  # before sampling: a wrong path fails fast
    tokens = sample_tokens(prior, n=req.n, seed=req.seed, top_k=top_k, top_p=top_p, temperature=temperature,
                           labels=labels)
    written = save_samples(decode_tokens(first_stage, layout, tokens, req.tile), layout.modality, req.out,
                           sample_rate=getattr(first_stage, "sample_rate", None), nrow=min(8, req.n))
    what = "a grid" if layout.modality == "image" else f"{len(written)} WAVs"
    return f"wrote {req.n} samples ({what}) to {req.out}"


# The request options each verb's hook reads: a flag outside them is refused (Family.reads).
READS = {
    "sample": frozenset({"out", "n", "seed", "temperature", "top_k", "top_p", "label", "first_stage", "tile"}),
}

FAMILY = Family(
    kind="ar_prior", summary="autoregressive prior (GPT-2 / Llama) over VQ tokens or codec streams",
    model=ARPriorModel, data=ShardData, loss=None, saved_names=("ARPrior",),
    build_model=build_model, build_task=build_task, datasets=datasets, evaluator=Evaluator, export=export,
    sample=sample,
    reads=READS)
