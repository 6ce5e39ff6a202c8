"""`model.kind: classic` -- the classic autoencoder family (`tokenizers_ae/classic/`): linear, MLP and
deep autoencoders, convolutional, denoising, sparse (KL, L1, top-k), contractive, stacked,
sequence-to-sequence, VAE / beta-VAE / conditional VAE, adversarial, Wasserstein and masked
autoencoders, and the top-k sparse autoencoder of a language model's activations. Each model returns
its own reconstruction loss and unweighted regularisers; the task weighs them. Saved in aetk's
native format with the data it trained on, which `aetk eval` evaluates it on by default.

Hooks import their parts when called (see `train/families/base.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from train.config import Config, ConfigError, ImageData, check
from train.families.base import EvalContext, Family, ReportRequest

NEEDS_LABELS = {"cvae"}
NEEDS_IMAGES = {"conv", "mae", "recurrent"}


@dataclass
class ClassicModel:
    """Each variant reads only the keys it needs; `tokenizers_ae.classic.registry` maps variants to
    the classes that build them."""

    kind: Literal["classic"] = "classic"
    in_channels: int = 3
    """Channels of image inputs (1 for builtin:digits)."""
    variant: Literal["linear", "mlp", "deep", "conv", "overcomplete", "denoising", "sparse_kl", "sparse_l1",
                     "topk", "contractive", "stacked", "recurrent", "vae", "cvae", "aae", "wae", "mae",
                     "sae"] = "mlp"
    """Which autoencoder (`beta-VAE` is `vae` with beta > 1)."""
    hidden_sizes: list[int] = field(default_factory=lambda: [128])
    """MLP widths between the input and the code (mirrored in the decoder); `stacked`: one layer each,
    the last is the code; `recurrent`: the first is the RNN's hidden size."""
    code_size: int = 16
    """Units in the code (latent dimensions; SAE: dictionary size)."""
    activation: Literal["relu", "sigmoid", "tanh", "gelu"] = "relu"
    """Hidden nonlinearity of the MLPs."""
    channels: list[int] = field(default_factory=lambda: [16, 32])
    """`conv`: channels per stride-2 level."""
    sparsity_weight: float = 0.1
    """`sparse_kl`, `sparse_l1`, `overcomplete`: weight of the sparsity penalty (Ng's beta for KL)."""
    rho: float = 0.05
    """`sparse_kl`: target mean activation of each (sigmoid) code unit."""
    k: int = 4
    """`topk`, `sae`: active code units per input."""
    auxk_weight: float = 0.03125
    """`sae`: weight of the auxiliary top-k loss that revives dead latents (Gao et al.: 1/32)."""
    dead_steps: int = 200
    """`sae`: a latent that has not fired for this many training batches counts as dead."""
    corruption: Literal["gaussian", "masking", "salt_pepper"] = "gaussian"
    """`denoising`: additive Gaussian noise, masking (values set to 0, mid-range) or salt-and-pepper."""
    corruption_level: float = 0.5
    """`denoising`: noise std (on the [-1, 1] scale) or the fraction of values corrupted."""
    contractive_weight: float = 0.1
    """`contractive`: weight of the squared Frobenius norm of the encoder Jacobian."""
    pretrain_steps: int = 100
    """`stacked`: greedy steps per layer before fine-tuning the whole stack."""
    rnn: Literal["gru", "lstm"] = "gru"
    """`recurrent`: the cell of the encoder and decoder."""
    beta: float = 1.0
    """`vae`, `cvae`: weight of the KL term (beta-VAE when > 1)."""
    decoder_std: float = 0.2
    """`vae`, `cvae`: std of the Gaussian decoder p(x|z) on the [-1, 1] pixel scale (sets the ELBO)."""
    num_classes: int = 10
    """`cvae`: classes of the label the model is conditioned on."""
    adv_weight: float = 1.0
    """`aae`: weight of the generator's term from the latent discriminator."""
    disc_hidden: int = 64
    """`aae`: width of the latent discriminator's two hidden layers."""
    mmd_weight: float = 10.0
    """`wae`: weight of the MMD between the code distribution and the N(0, I) prior."""
    mask_ratio: float = 0.75
    """`mae`: fraction of patches hidden from the encoder."""
    patch_size: int = 4
    """`mae`: side of a square patch, pixels."""
    vit_dim: int = 64
    """`mae`: encoder width (the decoder is half as wide)."""
    vit_depth: int = 2
    """`mae`: encoder layers (the decoder has one)."""
    vit_heads: int = 4
    """`mae`: attention heads."""
    lm: str | None = None
    """`sae` on `builtin:lm-activations`: a local transformers causal-LM directory; null: a tiny
    randomly initialised GPT-2 over bytes (nothing downloaded)."""
    lm_layer: int = 1
    """`sae`: residual stream after this many transformer blocks (0: the embeddings)."""
    lm_tokens: int = 16384
    """`sae`: tokens of offline text (Python's stdlib docstrings) whose activations are collected."""

    def __post_init__(self) -> None:
        check(self.code_size >= 1, "model.code_size", ">= 1")
        check(all(h >= 1 for h in self.hidden_sizes), "model.hidden_sizes", "positive widths")
        check(len(self.channels) >= 1, "model.channels", "a non-empty list")
        check(0 < self.rho < 1, "model.rho", "in (0, 1)")
        check(1 <= self.k <= self.code_size, "model.k", f"in [1, code_size={self.code_size}]")
        check(0 <= self.corruption_level, "model.corruption_level", ">= 0")
        check(self.corruption == "gaussian" or self.corruption_level <= 1, "model.corruption_level",
               "<= 1 for masking and salt_pepper (a fraction)")
        check(0 <= self.mask_ratio < 1, "model.mask_ratio", "in [0, 1)")
        check(self.decoder_std > 0, "model.decoder_std", "> 0")
        for key in ("sparsity_weight", "auxk_weight", "contractive_weight", "beta", "adv_weight", "mmd_weight"):
            check(getattr(self, key) >= 0, f"model.{key}", ">= 0")
        check(self.pretrain_steps >= 1 and self.dead_steps >= 1, "model.pretrain_steps", ">= 1 (and dead_steps)")
        check(self.lm_layer >= 0 and self.lm_tokens >= 64, "model.lm_layer", ">= 0 (and lm_tokens >= 64)")


def input_shape(cfg: Config) -> tuple[int, ...]:
    """What one example looks like: (1, R, R) digits, (C, R, R) photos, (d_model,) LM activations."""
    from tokenizers_ae.data.activations import lm_hidden_size

    path, r, c = cfg.data.path, cfg.data.resolution, cfg.model.in_channels
    if path == "builtin:lm-activations":
        return (lm_hidden_size(cfg.model.lm),)
    if path == "builtin:digits" and c != 1:
        raise ConfigError(f"model.in_channels: builtin:digits is grayscale, set model.in_channels=1 (got {c})")
    return (c, r, r)


def model_config(cfg: Config) -> dict:
    """The classic model's saved config: variant, input shape, hyperparameters and the data it trains on."""
    m, d = cfg.model, cfg.data
    hparams = {k: v for k, v in dataclasses.asdict(m).items() if k not in ("kind", "in_channels")}
    data = {"path": d.path, "val_path": d.val_path, "resolution": d.resolution, "builtin_size": d.builtin_size,
            "holdout_class": d.holdout_class}
    return {**hparams, "input_shape": list(input_shape(cfg)), "data": data}


def build_model(cfg: Config):
    from tokenizers_ae.classic.registry import build_classic

    v, path = cfg.model.variant, cfg.data.path
    if v in NEEDS_LABELS and path != "builtin:digits":
        raise ConfigError(f"model.variant={v} needs labels: use data.path=builtin:digits")
    if v in NEEDS_IMAGES and path == "builtin:lm-activations":
        raise ConfigError(f"model.variant={v} needs images, not {path}")
    if v == "sae" and path != "builtin:lm-activations":
        raise ConfigError("model.variant=sae trains on a language model's activations: "
                          "use data.path=builtin:lm-activations")
    try:
        return build_classic(model_config(cfg))
    except ValueError as e:  # a shape the architecture cannot take
        raise ConfigError(f"model.{e}") from None


def reg_weights(cfg: Config) -> dict[str, float]:
    """The weight of each regulariser a classic model may report."""
    m = cfg.model
    return {"sparsity/kl": m.sparsity_weight, "sparsity/l1": m.sparsity_weight, "contractive": m.contractive_weight,
            "kl": m.beta, "mmd": m.mmd_weight, "auxk": m.auxk_weight}


def build_task(cfg: Config, model):
    from tokenizers_ae.classic.aae import LatentDiscriminator
    from train.classic_task import ClassicTask

    m, t = cfg.model, cfg.train
    disc = LatentDiscriminator(code_size=m.code_size, hidden=m.disc_hidden) if m.variant == "aae" else None
    return ClassicTask(model=model, reg_weights=reg_weights(cfg), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay,
                       latent_discriminator=disc, disc_lr=t.disc_lr, adv_weight=m.adv_weight,
                       stage_steps=m.pretrain_steps if m.variant == "stacked" else None)


def datasets(cfg: Config):
    from train.data.sources import activation_datasets, image_datasets

    if cfg.data.path == "builtin:lm-activations":  # a sparse autoencoder trains on a language model's activations
        m = cfg.model
        return activation_datasets(m.lm, m.lm_layer, m.lm_tokens)
    return image_datasets(cfg)


def evaluate(ctx: EvalContext) -> dict[str, float]:
    from eval.classic import evaluate_batch

    return evaluate_batch(ctx.model, ctx.val_batch, grid=ctx.samples / f"recon-{ctx.step:07d}.png")


def export(cfg: Config, model, train_dataset, out: Path) -> None:
    model.save_pretrained(out)


def report(model, req: ReportRequest) -> dict:
    """Its metrics (a table row), and the reconstructions / samples / interpolations figure."""
    from eval.classic import TABLE_HEADER, evaluate_classic, save_rows_figure, table_row

    data = {"path": req.data} if req.data else None  # same input shape required; the model decides
    result = evaluate_classic(model, data=data, n=req.n or 512)
    out_dir = Path(req.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = Path(req.name).resolve().name
    (out_dir / "table.md").write_text(TABLE_HEADER + "\n" + table_row(name, result["metrics"]) + "\n")
    files = {"table": str(out_dir / "table.md")}
    if result["rows"]:
        files["figure"] = str(save_rows_figure([(name, result["rows"])], out_dir / "figure.png"))
    return {**result["metrics"], "files": files}


# The request options each verb's hook reads: a flag outside them is refused (Family.reads).
READS = {
    "eval": frozenset({"name", "data", "n", "out_dir"}),
}

FAMILY = Family(
    kind="classic", summary="classic autoencoder baselines (18 variants, from linear to top-k SAE)",
    model=ClassicModel, data=ImageData, loss=None, saved_names=("classic",),
    build_model=build_model, build_task=build_task, datasets=datasets, evaluator=lambda: evaluate, export=export,
    report=report, reads=READS)
