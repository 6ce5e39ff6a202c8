"""What every quantizer shares: the typed output, the (B, D, *spatial) <-> (N, D) layout, codebook
statistics and the one place that knows about process groups.

Layout: quantizers take channels-first latents, (B, D, H, W) images or (B, D, T) audio, and work on
the flattened rows (N, D) with N = B * prod(spatial), so one module serves both.

Distributed: `all_reduce_`, `broadcast_`, `gather_rows` and `sample_rows` are the only code that talks to
`torch.distributed`; they are no-ops in a single process. Collectives only run in training mode,
where every rank runs the same forwards; an eval forward on one rank alone never blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    quantized: Tensor
    """(B, D, *spatial), the input's shape: the codes, with a straight-through gradient to the input."""
    indices: Tensor
    """(B, *spatial) long codes, or (B, Q, *spatial) for a residual quantizer (-1 where a level was
    not used)."""
    losses: dict[str, Tensor] = field(default_factory=dict)
    """Unweighted scalar losses, namespaced (`vq/commitment`, `vq/codebook`, `lfq/entropy`); the
    trainer multiplies each by its configured weight."""
    stats: dict[str, Tensor] = field(default_factory=dict)
    """Detached scalars to log (`vq/perplexity`, `vq/usage`, `vq/dead_codes`)."""


class Quantizer(nn.Module):
    """Base class: `forward(z) -> QuantizerOutput` and `indices_to_codes(indices) -> (B, D, *spatial)`."""

    codebook_size: int
    config: dict
    """The constructor's keyword arguments: `build_quantizer({"class": name, **config})` rebuilds it."""

    def forward(self, z: Tensor) -> QuantizerOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def indices_to_codes(self, indices: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


# --- layout -----------------------------------------------------------------------------------


def flatten_channels(z: Tensor) -> Tensor:
    """(B, D, *spatial) -> (N, D), N = B * prod(spatial)."""
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def unflatten_channels(x: Tensor, lead: tuple[int, ...]) -> Tensor:
    """(N, D') rows back to (B, D', *spatial), with lead = (B, *spatial)."""
    return x.reshape(*lead, x.shape[-1]).movedim(-1, 1).contiguous()


def lead_shape(z: Tensor) -> tuple[int, ...]:
    """(B, D, *spatial) -> (B, *spatial): the shape of the indices."""
    return (z.shape[0], *z.shape[2:])


def full_precision(x: Tensor) -> Tensor:
    """x in float32, or float64 if it already is: rounding and lookups never run in half precision."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def straight_through(value: Tensor, source: Tensor) -> Tensor:
    """Forward: exactly `value`; backward: the identity to `source` and nothing to `value`.

    `value.detach() + (source - source.detach())` keeps the forward value bit-exact (x - x == 0),
    so `indices_to_codes(out.indices)` equals `out.quantized`, unlike `source + (value - source).detach()`.
    """
    return value.detach() + (source - source.detach())


# --- statistics -------------------------------------------------------------------------------


def stats_from_counts(counts: Tensor, codebook_size: int, *, prefix: str = "vq") -> dict[str, Tensor]:
    """Usage fraction and perplexity from per-code counts (K,) (zeros may be omitted)."""
    counts = counts.detach().float()
    total = counts.sum().clamp_min(1.0)
    p = counts[counts > 0] / total
    entropy = -(p * p.log()).sum()
    return {
        f"{prefix}/usage": (counts > 0).sum().float() / codebook_size,
        f"{prefix}/perplexity": entropy.exp(),
    }


def codebook_stats(indices: Tensor, codebook_size: int, *, prefix: str = "vq",
                   global_batch: bool = False) -> dict[str, Tensor]:
    """Codebook use in a batch of indices (any shape; negative entries are ignored).

    Returns `{prefix}/usage`, the fraction of the K codes used at least once, and
    `{prefix}/perplexity`, exp(entropy) of the empirical code distribution (1 = one code,
    K = all codes equally often). Large codebooks (FSQ/LFQ) are counted sparsely. With
    `global_batch` (training, where every process runs the same forwards), over every process's
    indices: the numbers one process would report for the whole batch.
    """
    idx = indices.detach().reshape(-1)
    idx = idx[idx >= 0]
    if global_batch:
        idx = gather_rows(idx)
    if codebook_size <= 1 << 20:
        counts = torch.bincount(idx, minlength=codebook_size)
    else:
        counts = torch.unique(idx, return_counts=True)[1]
    return stats_from_counts(counts, codebook_size, prefix=prefix)


# --- process groups ---------------------------------------------------------------------------


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_(tensor: Tensor) -> Tensor:
    """Sum `tensor` in place over all processes (no-op in one process); returns it."""
    if distributed():
        dist.all_reduce(tensor)
    return tensor


def broadcast_(tensor: Tensor, src: int = 0) -> Tensor:
    """Overwrite `tensor` in place with rank `src`'s (no-op in one process); returns it."""
    if distributed():
        dist.broadcast(tensor, src)
    return tensor


def _row_offset_and_total(n: int, device: torch.device) -> tuple[int, int]:
    """This process's first row in the global batch (ranks concatenated in order) and its size."""
    if not distributed():
        return 0, n
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    sizes_l = [int(s) for s in sizes]
    return sum(sizes_l[: dist.get_rank()]), sum(sizes_l)


@torch.no_grad()
def gather_rows(x: Tensor) -> Tensor:
    """Every process's rows (N_r, ...) concatenated in rank order: the global batch, as one process
    holds it. Sums over it then add in the same order as one process would, so statistics are
    bit-identical however the batch is split (an all-reduce of partial sums rounds differently,
    and a VQ's nearest-code ties turn that last bit into another assignment)."""
    if not distributed():
        return x
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    most = max(int(s) for s in sizes)
    padded = torch.zeros(most, *x.shape[1:], dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


@torch.no_grad()
def sample_rows(x: Tensor, n: int) -> Tensor:
    """n random rows of the global batch (N, D) -> (n, D), identical on every process.

    Rows are drawn without replacement when the global batch has at least n rows. Every process
    draws from the CPU generator (so RNG consumption does not depend on the rank) and rank 0's
    draw is broadcast; each process fills in the rows it holds and a sum assembles them. The
    result equals a single process drawing from the concatenated batch with the same seed.
    """
    offset, total = _row_offset_and_total(x.shape[0], x.device)
    pick = torch.randperm(total)[:n] if total >= n else torch.randint(total, (n,))
    pick = broadcast_(pick.to(x.device))
    if not distributed():
        return x[pick].clone()
    local = pick - offset
    mine = (local >= 0) & (local < x.shape[0])
    rows = torch.zeros(n, x.shape[1], dtype=x.dtype, device=x.device)
    rows[mine] = x[local[mine]]
    return all_reduce_(rows)


def entropy_nats(p: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy (nats) of probabilities along `dim`, with 0 log 0 = 0."""
    return -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(dim)
