"""Lookup-free quantization (MAGVIT-2, Yu et al. 2023, "Language Model Beats Diffusion"): each of
b channels is quantized to its sign, so the implicit codebook is {-1, 1}^b (2^b codes) and the
index is the bit pattern; an entropy penalty keeps each prediction confident and the codebook used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tokenizers_ae.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    codebook_stats,
    entropy_nats,
    flatten_channels,
    full_precision,
    lead_shape,
    straight_through,
    unflatten_channels,
)

EXACT_ENTROPY_MAX_BITS = 10
"""Default: the codebook entropy is exact up to this many bits (an (N, 2^bits) table), per-bit above."""


def bit_logits(x: Tensor, temperature: float) -> Tensor:
    """(N, b) -> (N, b) logits of P(bit = +1 | x).

    The soft assignment p(c | x) = softmax_c(-||x - c||^2 / t) over c in {-1, 1}^b factorises over
    channels, since ||x - c||^2 = ||x||^2 + b - 2 x.c: p(c_i = +1 | x) = sigmoid(4 x_i / t).
    """
    return 4.0 * x / temperature


def per_sample_entropy(logits: Tensor) -> Tensor:
    """Mean over rows of H(p(c | x)) in nats: exactly the sum of the per-bit binary entropies,
    because p(c | x) is a product over bits. (N, b) -> scalar."""
    p = torch.sigmoid(logits)
    h = -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))  # (N, b)
    return h.sum(-1).mean()


def codebook_entropy(logits: Tensor, *, group_bits: int) -> Tensor:
    """Entropy (nats) of the batch-averaged code distribution mean_n p(c | x_n), (N, b) -> scalar.

    The bits are split into groups of `group_bits`; within a group the entropy is exact (an
    (N, 2^group_bits) table), and groups are treated as independent, i.e. the sum of the groups'
    entropies. With group_bits = b this is exact; with group_bits = 1 it is the per-bit factorised
    entropy sum_i H(mean_n p_i), which costs O(N b) instead of O(N 2^b). It is an upper bound on the
    exact value: it rewards balanced bits, not uncorrelated ones.
    """
    total = logits.new_zeros(())
    for start in range(0, logits.shape[1], group_bits):
        group = logits[:, start : start + group_bits]  # (N, g)
        g = group.shape[1]
        table = ((torch.arange(1 << g, device=logits.device)[:, None] >> torch.arange(g, device=logits.device)) & 1)
        table = table.to(logits.dtype)  # (2^g, g): bit j of code c
        log_p = F.logsigmoid(group) @ table.t() + F.logsigmoid(-group) @ (1 - table).t()  # (N, 2^g)
        total = total + entropy_nats(log_p.exp().mean(0))
    return total


class LFQ(Quantizer):
    """(B, D, *spatial) -> signs of `codebook_bits` channels, straight-through gradient.

    Args:
        dim: D, channels of the input; when it differs from `codebook_bits` linear layers project
            in and out. None means D = codebook_bits.
        codebook_bits: b; the codebook has 2^b codes.
        entropy_weight, commitment_weight: informational only; `losses` are unweighted.
        entropy_temperature: t of the soft assignment used by the entropy loss (MAGVIT-2 and
            vector-quantize-pytorch use 0.01).
        entropy_group_bits: bits per exactly-computed group of the codebook entropy (see
            `codebook_entropy`). None: exact when b <= 10, per-bit factorised above.

    Index: bit i is 1 where channel i is positive, index = sum_i bit_i 2^i. `losses`:
    `lfq/entropy` = per-sample entropy - codebook entropy (minimising it makes each prediction
    confident and the batch use many codes) and `lfq/commitment` = mse(x, sg[q]). The codebook
    entropy is over this process's rows.
    """

    def __init__(
        self,
        *,
        dim: int | None,
        codebook_bits: int,
        entropy_weight: float = 0.1,
        commitment_weight: float = 0.25,
        entropy_temperature: float = 0.01,
        entropy_group_bits: int | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= codebook_bits <= 62:
            raise ValueError(f"codebook_bits must be in [1, 62], got {codebook_bits}")
        self.config = dict(dim=dim, codebook_bits=codebook_bits, entropy_weight=entropy_weight,
                           commitment_weight=commitment_weight, entropy_temperature=entropy_temperature,
                           entropy_group_bits=entropy_group_bits)
        self.codebook_bits, self.codebook_size = codebook_bits, 1 << codebook_bits
        self.dim = dim or codebook_bits
        self.entropy_weight, self.commitment_weight = entropy_weight, commitment_weight
        self.entropy_temperature = entropy_temperature
        exact = codebook_bits <= EXACT_ENTROPY_MAX_BITS
        self.entropy_group_bits = entropy_group_bits or (codebook_bits if exact else 1)
        self.project_in = nn.Linear(self.dim, codebook_bits) if self.dim != codebook_bits else nn.Identity()
        self.project_out = nn.Linear(codebook_bits, self.dim) if self.dim != codebook_bits else nn.Identity()
        self.register_buffer("powers", 2 ** torch.arange(codebook_bits), persistent=False)

    def forward(self, z: Tensor) -> QuantizerOutput:
        lead = lead_shape(z)
        with torch.autocast(z.device.type, enabled=False):
            x = self.project_in(full_precision(flatten_channels(z)))  # (N, b)
            positive = x > 0  # (N, b)
            q = torch.where(positive, 1.0, -1.0).to(x.dtype)  # (N, b)
            indices = (positive.long() * self.powers).sum(-1)  # (N,)
            logits = bit_logits(x, self.entropy_temperature)  # (N, b)
            sample_h = per_sample_entropy(logits)
            codebook_h = codebook_entropy(logits, group_bits=self.entropy_group_bits)
            quantized = self.project_out(straight_through(q, x))  # (N, D)
        indices = indices.reshape(lead)  # (B, *spatial)
        stats = codebook_stats(indices, self.codebook_size, prefix="lfq", global_batch=self.training)
        stats["lfq/per_sample_entropy"] = sample_h.detach()
        stats["lfq/codebook_entropy"] = codebook_h.detach()
        return QuantizerOutput(
            quantized=unflatten_channels(quantized, lead).to(z.dtype),  # (B, D, *spatial)
            indices=indices,
            losses={"lfq/entropy": sample_h - codebook_h, "lfq/commitment": F.mse_loss(x, q)},
            stats=stats,
        )

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """(B, *spatial) -> (B, D, *spatial), the values `forward` returned for them."""
        bits = (indices.reshape(-1, 1) // self.powers) % 2  # (N, b)
        with torch.autocast(indices.device.type, enabled=False):
            codes = self.project_out(bits.float() * 2 - 1)  # (N, D)
        return unflatten_channels(codes, tuple(indices.shape))
