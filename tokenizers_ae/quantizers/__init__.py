"""Quantizers shared by image tokenizers and audio codecs: VQ (EMA, restarts, k-means, cosine,
factorised codes), residual VQ, FSQ and LFQ. All take channels-first (B, D, *spatial) latents and
return a `QuantizerOutput`."""

from tokenizers_ae.quantizers.base import Quantizer, QuantizerOutput, codebook_stats
from tokenizers_ae.quantizers.fsq import FSQ
from tokenizers_ae.quantizers.lfq import LFQ
from tokenizers_ae.quantizers.rvq import ResidualVQ
from tokenizers_ae.quantizers.search import kmeans, nearest_codes
from tokenizers_ae.quantizers.vq import VectorQuantizer

__all__ = [
    "FSQ",
    "LFQ",
    "Quantizer",
    "QuantizerOutput",
    "ResidualVQ",
    "VectorQuantizer",
    "codebook_stats",
    "kmeans",
    "nearest_codes",
]
