"""The classic variants by name: which class builds each, and one loader for any saved variant."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tokenizers_ae.classic.aae import AdversarialAutoencoder
from tokenizers_ae.classic.base import Autoencoder, ClassicPretrained
from tokenizers_ae.classic.contractive import ContractiveAutoencoder
from tokenizers_ae.classic.conv import ConvAutoencoder
from tokenizers_ae.classic.denoising import DenoisingAutoencoder
from tokenizers_ae.classic.mae import MaskedAutoencoder
from tokenizers_ae.classic.recurrent import Seq2SeqAutoencoder
from tokenizers_ae.classic.sae import TopKSAE
from tokenizers_ae.classic.sparse import KLSparseAutoencoder, L1Autoencoder, TopKAutoencoder
from tokenizers_ae.classic.stacked import StackedAutoencoder
from tokenizers_ae.classic.vae import VAE, ConditionalVAE
from tokenizers_ae.classic.wae import WassersteinAutoencoder
from tokenizers_ae.pretrained import LoadError, Saved, locate

CLASSES: tuple[type[ClassicPretrained], ...] = (
    Autoencoder, L1Autoencoder, KLSparseAutoencoder, TopKAutoencoder, ConvAutoencoder, DenoisingAutoencoder,
    ContractiveAutoencoder, StackedAutoencoder, Seq2SeqAutoencoder, VAE, ConditionalVAE, AdversarialAutoencoder,
    WassersteinAutoencoder, MaskedAutoencoder, TopKSAE)
VARIANTS: dict[str, type[ClassicPretrained]] = {v: cls for cls in CLASSES for v in cls.variants}
"""variant name -> the class that builds it (`beta-VAE` is `vae` with beta > 1)."""


def build_classic(config: dict) -> nn.Module:
    """A fresh model: config = {"variant", "input_shape", **hyperparameters}. ValueError when the
    variant is unknown or the hyperparameters do not fit the input."""
    if config["variant"] not in VARIANTS:
        raise ValueError(f"unknown classic variant {config['variant']!r}; known: {sorted(VARIANTS)}")
    return VARIANTS[config["variant"]].from_config(config)


def classic_from_saved(saved: Saved) -> nn.Module:
    """Whichever variant `saved` holds, in eval mode."""
    config = saved.legacy["model"]["classic"] if saved.legacy else (saved.config or {})
    if saved.class_name != "classic" or config.get("variant") not in VARIANTS:
        raise LoadError(f"{saved.path} holds a {saved.class_name} model, not a classic autoencoder")
    return VARIANTS[config["variant"]].from_saved(saved)


def load_classic(path: str | Path, *, weights: str = "ema") -> nn.Module:
    """Any saved classic variant (export, checkpoint or run directory), in eval mode."""
    return classic_from_saved(locate(path, weights=weights))
