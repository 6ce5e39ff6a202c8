"""`model.kind: classic`: the explicit table from `model.classic.variant` to a builder, and the
weight of every regulariser the classic models report. No import strings."""

from __future__ import annotations

import math
from typing import Callable

from torch import nn

from tokenizers_ae.classic import (
    CORRUPTIONS, VAE, AdversarialAutoencoder, Autoencoder, ConditionalVAE, ContractiveAutoencoder, ConvAutoencoder,
    DenoisingAutoencoder, KLSparseAutoencoder, L1Autoencoder, LatentDiscriminator, MaskedAutoencoder,
    Seq2SeqAutoencoder, StackedAutoencoder, TopKAutoencoder, TopKSAE, WassersteinAutoencoder, mlp, mlp_pair,
)
from train.config import ClassicConfig, Config, ConfigError

Shape = tuple[int, ...]


def input_shape(cfg: Config) -> Shape:
    """What one example looks like: (1, R, R) digits, (C, R, R) photos, (d_model,) LM activations."""
    path, r, c = cfg.data.path, cfg.data.resolution, cfg.model.in_channels
    if path == "builtin:lm-activations":
        from train.data.activations import lm_hidden_size

        return (lm_hidden_size(cfg.model.classic.lm),)
    if path == "builtin:digits" and c != 1:
        raise ConfigError(f"model.in_channels: builtin:digits is grayscale, set model.in_channels=1 (got {c})")
    return (c, r, r)


def _numel(shape: Shape) -> int:
    return math.prod(shape)


def _pair(c: ClassicConfig, shape: Shape, code_activation: nn.Module | None = None) -> dict:
    enc, dec = mlp_pair(input_size=_numel(shape), hidden_sizes=c.hidden_sizes, code_size=c.code_size,
                        activation=c.activation, code_activation=code_activation)
    return dict(encoder=enc, decoder=dec, input_shape=shape, code_size=c.code_size)


def _linear(c: ClassicConfig, shape: Shape) -> Autoencoder:
    if c.code_size >= _numel(shape):
        raise ConfigError(f"model.classic.code_size: a linear autoencoder needs a code smaller than the input "
                          f"({_numel(shape)} values), got {c.code_size}")
    d = _numel(shape)
    return Autoencoder(encoder=nn.Linear(d, c.code_size), decoder=nn.Linear(c.code_size, d), input_shape=shape,
                       code_size=c.code_size)


def _mlp(c: ClassicConfig, shape: Shape) -> Autoencoder:
    return Autoencoder(**_pair(c, shape))


def _deep(c: ClassicConfig, shape: Shape) -> Autoencoder:
    if len(c.hidden_sizes) < 2:
        raise ConfigError("model.classic.hidden_sizes: a deep autoencoder needs >= 2 hidden layers per side")
    return Autoencoder(**_pair(c, shape))


def _overcomplete(c: ClassicConfig, shape: Shape) -> L1Autoencoder:
    if c.code_size <= _numel(shape):
        raise ConfigError(f"model.classic.code_size: overcomplete means a code wider than the input "
                          f"({_numel(shape)} values), got {c.code_size}")
    return L1Autoencoder(**_pair(c, shape, nn.ReLU()))


VARIANTS: dict[str, Callable[[ClassicConfig, Shape], nn.Module]] = {
    "linear": _linear,
    "mlp": _mlp,
    "deep": _deep,
    "conv": lambda c, s: ConvAutoencoder(input_shape=s, channels=c.channels, code_size=c.code_size,
                                         activation=c.activation),
    "overcomplete": _overcomplete,
    "denoising": lambda c, s: DenoisingAutoencoder(**_pair(c, s), corruption=CORRUPTIONS[c.corruption](c.corruption_level)),
    "sparse_kl": lambda c, s: KLSparseAutoencoder(rho=c.rho, **_pair(c, s, nn.Sigmoid())),
    "sparse_l1": lambda c, s: L1Autoencoder(**_pair(c, s, nn.ReLU())),
    "topk": lambda c, s: TopKAutoencoder(k=c.k, **_pair(c, s)),
    "contractive": lambda c, s: ContractiveAutoencoder(input_shape=s, code_size=c.code_size,
                                                       hidden_sizes=c.hidden_sizes, activation=c.activation),
    "stacked": lambda c, s: StackedAutoencoder(input_shape=s, hidden_sizes=c.hidden_sizes, code_size=c.code_size,
                                               activation=c.activation),
    "recurrent": lambda c, s: Seq2SeqAutoencoder(input_shape=s, hidden_size=c.hidden_sizes[0], code_size=c.code_size,
                                                 cell=c.rnn),
    "vae": lambda c, s: VAE(**_vae_parts(c, s)),
    "cvae": lambda c, s: ConditionalVAE(num_classes=c.num_classes, **_vae_parts(c, s, extra=c.num_classes)),
    "aae": lambda c, s: AdversarialAutoencoder(**_pair(c, s)),
    "wae": lambda c, s: WassersteinAutoencoder(**_pair(c, s)),
    "mae": lambda c, s: MaskedAutoencoder(input_shape=s, patch_size=c.patch_size, dim=c.vit_dim, depth=c.vit_depth,
                                          heads=c.vit_heads, mask_ratio=c.mask_ratio),
    "sae": lambda c, s: TopKSAE(d_model=_numel(s), n_latents=c.code_size, k=c.k, dead_steps=c.dead_steps),
}
"""model.classic.variant -> builder(ClassicConfig, input shape) -> nn.Module returning ClassicOutput."""

NEEDS_LABELS = {"cvae"}
NEEDS_IMAGES = {"conv", "mae", "recurrent"}


def _vae_parts(c: ClassicConfig, shape: Shape, extra: int = 0) -> dict:
    """Encoder D (+ label) -> hidden -> 2k (mean, logvar); decoder k (+ label) -> hidden -> D."""
    d, hid = _numel(shape), list(c.hidden_sizes)
    return dict(encoder=mlp([d + extra, *hid, 2 * c.code_size], c.activation),
                decoder=mlp([c.code_size + extra, *hid[::-1], d], c.activation),
                input_shape=shape, code_size=c.code_size, decoder_std=c.decoder_std)


def build_classic(cfg: Config) -> nn.Module:
    c = cfg.model.classic
    shape = input_shape(cfg)
    if c.variant in NEEDS_LABELS and cfg.data.path != "builtin:digits":
        raise ConfigError(f"model.classic.variant={c.variant} needs labels: use data.path=builtin:digits")
    if c.variant in NEEDS_IMAGES and len(shape) != 3:
        raise ConfigError(f"model.classic.variant={c.variant} needs images, not {cfg.data.path}")
    if c.variant == "sae" and cfg.data.path != "builtin:lm-activations":
        raise ConfigError("model.classic.variant=sae trains on a language model's activations: "
                          "use data.path=builtin:lm-activations")
    try:
        return VARIANTS[c.variant](c, shape)
    except ValueError as e:  # a shape the architecture cannot take
        raise ConfigError(f"model.classic: {e}") from e


def reg_weights(cfg: Config) -> dict[str, float]:
    """The weight of each regulariser a classic model may report."""
    c = cfg.model.classic
    return {"sparsity/kl": c.sparsity_weight, "sparsity/l1": c.sparsity_weight, "contractive": c.contractive_weight,
            "kl": c.beta, "mmd": c.mmd_weight, "auxk": c.auxk_weight}


def build_classic_task(cfg: Config, model: nn.Module | None = None):
    from train.classic_task import ClassicTask

    c, t = cfg.model.classic, cfg.train
    model = model if model is not None else build_classic(cfg)
    disc = LatentDiscriminator(code_size=c.code_size, hidden=c.disc_hidden) if c.variant == "aae" else None
    return ClassicTask(model=model, reg_weights=reg_weights(cfg), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay,
                       latent_discriminator=disc, disc_lr=t.disc_lr, adv_weight=c.adv_weight,
                       stage_steps=c.pretrain_steps if c.variant == "stacked" else None)
