"""Residual vector quantization (SoundStream, Zeghidour et al. 2021; EnCodec; DAC): Q vector
quantizers, each quantizing what the previous ones left, with quantizer dropout for bitrate
scalability."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tokenizers_ae.quantizers.base import Quantizer, QuantizerOutput, broadcast_, distributed
from tokenizers_ae.quantizers.vq import VectorQuantizer


class ResidualVQ(Quantizer):
    """z -> sum of Q codes, level i quantizing z minus the codes of levels < i.

    Args:
        num_quantizers: Q, the number of levels.
        codebook_size: K, codes per level.
        dim: D, channels of the input.
        quantizer_dropout: training only: with this probability per forward, use only the first n
            levels, n uniform in [1, Q] (SoundStream). Drawn from the global torch RNG, so it is
            deterministic under `torch.manual_seed`; over several processes rank 0's draw is used.
        **vq_kwargs: passed to every level's `VectorQuantizer` (ema_decay, kmeans_init, ...).

    Gradients follow EnCodec/DAC: the residual keeps its graph (`r_{i+1} = r_i - q_i`), so with
    plain levels the summed output has exactly the identity as its gradient w.r.t. z.
    Losses are summed over the levels used; stats are per level (`rvq/level{i}/...`) plus the mean
    usage/perplexity over used levels (`vq/usage`, `vq/perplexity`) and `rvq/num_quantizers`.
    """

    def __init__(self, *, num_quantizers: int, codebook_size: int, dim: int, quantizer_dropout: float = 0.0,
                 **vq_kwargs) -> None:
        super().__init__()
        if num_quantizers < 1 or not 0.0 <= quantizer_dropout <= 1.0:
            raise ValueError("num_quantizers must be >= 1 and quantizer_dropout in [0, 1]")
        self.config = dict(num_quantizers=num_quantizers, codebook_size=codebook_size, dim=dim,
                           quantizer_dropout=quantizer_dropout, **vq_kwargs)
        self.num_quantizers, self.codebook_size, self.dim = num_quantizers, codebook_size, dim
        self.quantizer_dropout = quantizer_dropout
        self.layers = nn.ModuleList(
            VectorQuantizer(codebook_size=codebook_size, dim=dim, **vq_kwargs) for _ in range(num_quantizers)
        )

    def levels_to_use(self, n_quantizers: int | None, device: torch.device) -> int:
        """How many levels this forward uses: `n_quantizers` if given, else Q, or a random n under
        quantizer dropout in training."""
        q = self.num_quantizers
        if n_quantizers is not None:
            if not 1 <= n_quantizers <= q:
                raise ValueError(f"n_quantizers must be in [1, {q}], got {n_quantizers}")
            return n_quantizers
        if not (self.training and self.quantizer_dropout > 0):
            return q
        draw = torch.rand(2)  # (u, v): drop if u < p, then n = 1 + floor(v * Q)
        if distributed():
            draw = broadcast_(draw.to(device)).cpu()
        if float(draw[0]) < self.quantizer_dropout:
            return min(q, 1 + int(float(draw[1]) * q))
        return q

    def forward(self, z: Tensor, n_quantizers: int | None = None) -> QuantizerOutput:
        n = self.levels_to_use(n_quantizers, z.device)
        b, spatial = z.shape[0], tuple(z.shape[2:])
        indices = torch.full((b, self.num_quantizers, *spatial), -1, dtype=torch.long, device=z.device)
        quantized = torch.zeros_like(z)  # (B, D, *spatial)
        residual = z
        losses: dict[str, Tensor] = {}
        stats: dict[str, Tensor] = {}
        for i, layer in enumerate(self.layers[:n]):
            out = layer(residual)
            residual = residual - out.quantized
            quantized = quantized + out.quantized
            indices[:, i] = out.indices
            for key, value in out.losses.items():
                losses[key] = losses[key] + value if key in losses else value
            for key, value in out.stats.items():
                stats[f"rvq/level{i}/{key.split('/', 1)[1]}"] = value
                stats[key] = stats[key] + value if key in stats else value
        for key in ("vq/usage", "vq/perplexity"):
            stats[key] = stats[key] / n
        stats["rvq/num_quantizers"] = torch.tensor(float(n))
        return QuantizerOutput(quantized=quantized, indices=indices, losses=losses, stats=stats)

    @torch.no_grad()
    def encode(self, z: Tensor, n_quantizers: int | None = None) -> Tensor:
        """Inference: z (B, D, *spatial) -> indices (B, n, *spatial) of the first n levels (all by
        default), the `indices` an eval-mode `forward` returns, without its losses and statistics
        (a streaming chunk of a few frames would spend most of its quantizer time on them)."""
        n = self.num_quantizers if n_quantizers is None else self.levels_to_use(n_quantizers, z.device)
        residual, indices = z, []
        for layer in self.layers[:n]:
            level, quantized = layer.lookup(residual)  # (B, *spatial), (B, D, *spatial)
            residual = residual - quantized
            indices.append(level)
        return torch.stack(indices, dim=1)  # (B, n, *spatial)

    def decode(self, indices: Tensor) -> Tensor:
        """The first n levels' indices (B, n, *spatial), n <= Q, all valid -> (B, D, *spatial), the
        sum of their codes (`indices_to_codes` without the -1 bookkeeping of unused levels)."""
        if indices.shape[1] > self.num_quantizers:
            raise ValueError(f"indices have {indices.shape[1]} levels, the quantizer has {self.num_quantizers}")
        out = self.layers[0].indices_to_codes(indices[:, 0])  # (B, D, *spatial)
        for i in range(1, indices.shape[1]):
            out = out + self.layers[i].indices_to_codes(indices[:, i])
        return out

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """(B, Q, *spatial) with -1 for unused levels -> (B, D, *spatial), the sum of the used codes."""
        b, spatial = indices.shape[0], tuple(indices.shape[2:])
        out = torch.zeros(b, self.dim, *spatial, device=indices.device)  # (B, D, *spatial)
        for i, layer in enumerate(self.layers):
            level = indices[:, i]  # (B, *spatial)
            used = level >= 0
            if not used.any():
                continue
            codes = layer.indices_to_codes(level.clamp_min(0))  # (B, D, *spatial)
            out = out + torch.where(used.unsqueeze(1), codes, torch.zeros_like(codes))
        return out
