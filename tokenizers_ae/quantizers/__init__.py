"""Quantizers shared by image tokenizers and audio codecs: VQ (EMA, restarts, k-means, cosine,
factorised codes), residual VQ, FSQ and LFQ. All take channels-first (B, D, *spatial) latents and
return a `QuantizerOutput`."""

from tokenizers_ae.quantizers.base import Quantizer, QuantizerOutput, codebook_stats
from tokenizers_ae.quantizers.fsq import FSQ
from tokenizers_ae.quantizers.lfq import LFQ
from tokenizers_ae.quantizers.rvq import ResidualVQ
from tokenizers_ae.quantizers.search import kmeans, nearest_codes
from tokenizers_ae.quantizers.vq import VectorQuantizer

QUANTIZERS: dict[str, type[Quantizer]] = {c.__name__: c for c in (VectorQuantizer, ResidualVQ, FSQ, LFQ)}
"""Class name (as saved in a model's config) -> quantizer class."""


def quantizer_config(q: Quantizer) -> dict:
    """{"class": name, **constructor arguments}: what a saved model records of its quantizer."""
    return {"class": type(q).__name__, **q.config}


def build_quantizer(config: dict) -> Quantizer:
    """A fresh quantizer from `quantizer_config`'s output."""
    config = dict(config)
    name = config.pop("class")
    if name not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {name!r}; known: {sorted(QUANTIZERS)}")
    return QUANTIZERS[name](**config)


__all__ = [
    "FSQ",
    "LFQ",
    "QUANTIZERS",
    "Quantizer",
    "QuantizerOutput",
    "ResidualVQ",
    "VectorQuantizer",
    "build_quantizer",
    "codebook_stats",
    "kmeans",
    "nearest_codes",
    "quantizer_config",
]
