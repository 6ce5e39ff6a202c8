"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made
Simple"): bound each of d channels to L_i values and round; the implicit codebook is the grid of
prod(L_i) points, so there is nothing to learn, no auxiliary loss and no dead code."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tokenizers_ae.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    codebook_stats,
    flatten_channels,
    full_precision,
    lead_shape,
    straight_through,
    unflatten_channels,
)


class FSQ(Quantizer):
    """(B, D, *spatial) -> per-channel rounding onto a grid of `levels`, straight-through gradient.

    Args:
        levels: L_i per quantized channel, e.g. [8, 5, 5, 5] (1000 codes) as in the paper.
        dim: D, channels of the input; when it differs from len(levels) a linear layer projects
            in to len(levels) channels and another projects back. None means D = len(levels).

    Channel i is bounded as in the paper's reference code, tanh(x + s) * h - o with
    h = (L - 1)(1 + 1e-3) / 2 and, for even L, o = 1/2 and s = atanh(o / h) so that the L integers
    {-L/2, ..., L/2 - 1} are reachable; rounded and divided by L // 2, codes lie in [-1, 1].
    Indices are mixed-radix integers: sum_i (digit_i) * prod_{j<i} L_j with digit_i in [0, L_i).
    """

    bound_eps: float = 1e-3

    def __init__(self, *, levels: Sequence[int], dim: int | None = None) -> None:
        super().__init__()
        levels = [int(l) for l in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"levels must be a non-empty list of integers >= 2, got {levels}")
        self.config = dict(levels=levels, dim=dim)
        self.codebook_size = math.prod(levels)
        n = len(levels)
        self.dim = dim or n
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        self.register_buffer("basis", torch.tensor([math.prod(levels[:i]) for i in range(n)]), persistent=False)
        self.project_in = nn.Linear(self.dim, n) if self.dim != n else nn.Identity()
        self.project_out = nn.Linear(n, self.dim) if self.dim != n else nn.Identity()

    def bound(self, x: Tensor) -> Tensor:
        """(N, d) -> (N, d), rounding to exactly the L_i integers {-(L_i // 2), ..., (L_i - 1) // 2}."""
        levels = self.levels.to(x.dtype)
        half_l = (levels - 1) * (1 + self.bound_eps) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0).to(x.dtype)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(x + shift) * half_l - offset

    def forward(self, z: Tensor) -> QuantizerOutput:
        lead = lead_shape(z)
        with torch.autocast(z.device.type, enabled=False):
            bounded = self.bound(self.project_in(full_precision(flatten_channels(z))))  # (N, d)
            digits = straight_through(bounded.round(), bounded)  # (N, d) integers, centred
            half_width = (self.levels // 2).to(digits.dtype)
            indices = ((digits.detach() + half_width).long() * self.basis).sum(-1)  # (N,)
            quantized = self.project_out(digits / half_width)  # (N, D)
        indices = indices.reshape(lead)  # (B, *spatial)
        return QuantizerOutput(
            quantized=unflatten_channels(quantized, lead).to(z.dtype),  # (B, D, *spatial)
            indices=indices,
            stats=codebook_stats(indices, self.codebook_size, prefix="fsq", global_batch=self.training),
        )

    def digits(self, indices: Tensor) -> Tensor:
        """Mixed-radix digits: (...) long -> (..., d) long with digit i in [0, L_i)."""
        return (indices.unsqueeze(-1) // self.basis) % self.levels

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """(B, *spatial) -> (B, D, *spatial), the values `forward` returned for them."""
        half_width = self.levels // 2
        centred = (self.digits(indices.reshape(-1)) - half_width).float()  # (N, d)
        with torch.autocast(indices.device.type, enabled=False):
            codes = self.project_out(centred / half_width.float())  # (N, D)
        return unflatten_channels(codes, tuple(indices.shape))
