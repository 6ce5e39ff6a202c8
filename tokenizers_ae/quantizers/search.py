"""Exact nearest-code search and k-means, without an (N, K) distance matrix in the autograd graph.

The search runs under `no_grad` over blocks of rows, so its peak memory is one (rows, K) block
(`SEARCH_BLOCK_ELEMENTS` floats) whatever N is; callers then gather the chosen codes with
`F.embedding`, so gradients reach the codebook only through the codes actually used.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from tokenizers_ae.quantizers.base import _all_reduce_, sample_rows

SEARCH_BLOCK_ELEMENTS = 1 << 18
"""Distance-block budget in elements (1 MiB of float32): small enough to stay in a CPU's L2 cache
between the matmul that writes it and the argmin that reads it, large enough that per-block
overhead is negligible (at K = 16384 a block is 16 rows)."""


@torch.no_grad()
def nearest_codes(x: Tensor, codes: Tensor, *, block_rows: int | None = None) -> Tensor:
    """Index of the nearest code (Euclidean) for every row: x (N, d), codes (K, d) -> (N,) long.

    Per block of rows, ||e||^2 - 2 x.e is one `addmm` into a reused (rows, K) buffer and an argmin;
    ||x||^2 is the same for every code of a row, so it is left out (adding it only adds rounding).
    Ties go to the lowest index, as `torch.cdist(...).argmin` does.
    """
    x, codes = x.detach(), codes.detach().to(x.dtype)
    n, k = x.shape[0], codes.shape[0]
    rows = max(1, min(n, block_rows or SEARCH_BLOCK_ELEMENTS // k))
    codes_t = codes.t()  # (d, K)
    sq_norms = codes.pow(2).sum(1)  # (K,)
    out = torch.empty(n, dtype=torch.long, device=x.device)
    buf = torch.empty(rows, k, dtype=x.dtype, device=x.device)  # (rows, K)
    for start in range(0, n, rows):
        xb = x[start : start + rows]  # (r, d)
        dist = torch.addmm(sq_norms, xb, codes_t, alpha=-2.0, out=buf[: xb.shape[0]])  # (r, K)
        torch.argmin(dist, dim=1, out=out[start : start + xb.shape[0]])
    return out


@torch.no_grad()
def cluster_sums(x: Tensor, indices: Tensor, num_clusters: int) -> tuple[Tensor, Tensor]:
    """Per-cluster sums (K, d) and counts (K,) of rows x (N, d) assigned to `indices` (N,),
    summed over all processes in one all-reduce."""
    d = x.shape[1]
    packed = torch.zeros(num_clusters, d + 1, dtype=x.dtype, device=x.device)  # (K, d + 1)
    packed.index_add_(0, indices, torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1))
    _all_reduce_(packed)
    return packed[:, :d], packed[:, d]


@torch.no_grad()
def kmeans(x: Tensor, num_clusters: int, *, iters: int = 10, cosine: bool = False) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on rows x (N, d) -> centroids (K, d), counts (K,) of the last assignment.

    Starts from K random rows; an empty cluster keeps its centroid. With `cosine`, assignments use
    l2-normalised centroids (spherical k-means; pass normalised x). Over several processes the
    start rows and the per-iteration sums are global, so every rank gets the centroids one process
    would get on the concatenated batch.
    """
    centroids = sample_rows(x, num_clusters)  # (K, d)
    counts = torch.zeros(num_clusters, dtype=x.dtype, device=x.device)
    for _ in range(iters):
        search = F.normalize(centroids, dim=-1) if cosine else centroids
        sums, counts = cluster_sums(x, nearest_codes(x, search), num_clusters)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1.0)[:, None], centroids)
    return centroids, counts
