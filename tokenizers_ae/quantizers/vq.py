"""Vector quantization (VQ-VAE, van den Oord et al. 2017) with the fixes later tokenizers rely on:
EMA codebook updates (VQ-VAE / SoundStream), dead-code restarts (Jukebox, SoundStream), k-means
initialisation (SoundStream), cosine lookup and factorised low-dimensional codes (ViT-VQGAN).

Speed and memory: the nearest-code search never builds an (N, K) matrix with autograd attached;
it runs under `no_grad` in small blocks (`search.nearest_codes`), and the chosen codes are
gathered with `F.embedding`, so a learned codebook only gets gradients through the codes used.

All training-time state changes (EMA, restarts, k-means) happen in `self.training` mode under
`no_grad`, with statistics summed over processes, so codebooks stay identical on every rank and
N processes with B/N vectors each match one process with B.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tokenizers_ae.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    all_reduce_,
    flatten_channels,
    lead_shape,
    sample_rows,
    stats_from_counts,
    straight_through,
    unflatten_channels,
)
from tokenizers_ae.quantizers.search import cluster_sums, kmeans, nearest_codes, search_table


class VectorQuantizer(Quantizer):
    """(B, D, *spatial) -> nearest of K codes per position, straight-through gradient.

    Args:
        codebook_size: K, the number of codes.
        dim: D, channels of the input.
        commitment_weight: informational only (the usual beta); `losses` are unweighted and the
            trainer applies its own weights.
        ema_decay: when set, codes are exponential moving averages of the vectors assigned to
            them, with Laplace smoothing of the cluster sizes, and there is no `vq/codebook` loss;
            when None the codebook is an `nn.Parameter` learned through `vq/codebook`.
        dead_code_threshold: codes whose EMA cluster size (with EMA) or usage count over the last
            `dead_code_window` training steps (without) falls below it are restarted from random
            vectors of the current batch. 0 disables restarts.
        dead_code_window: training steps per usage window when the codebook is learned.
        kmeans_init: the first training batch initialises the codebook with k-means.
        cosine: l2-normalise inputs and codes (lookup by cosine similarity; outputs unit vectors).
        codebook_dim: factorised lookup: project D -> codebook_dim with a linear layer, look up
            there and project back (ViT-VQGAN, LlamaGen). None looks up in D dimensions.

    `losses`: `vq/commitment` = mse(z_e, sg[e]) and, without EMA, `vq/codebook` = mse(sg[z_e], e),
    with z_e the (projected, normalised) input. `stats`: `vq/usage`, `vq/perplexity` (over all
    processes in training) and, in training with restarts enabled, `vq/dead_codes` (codes
    restarted by this forward).
    """

    laplace_eps: float = 1e-5
    """Laplace smoothing of EMA cluster sizes: N_k <- (N_k + eps) / (n + K eps) * n."""
    kmeans_iters: int = 10

    def __init__(
        self,
        *,
        codebook_size: int,
        dim: int,
        commitment_weight: float = 0.25,
        ema_decay: float | None = None,
        dead_code_threshold: float = 0.0,
        dead_code_window: int = 100,
        kmeans_init: bool = False,
        cosine: bool = False,
        codebook_dim: int | None = None,
    ) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size and dim must be positive, got {codebook_size}, {dim}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if dead_code_threshold < 0 or dead_code_window < 1:
            raise ValueError("dead_code_threshold must be >= 0 and dead_code_window >= 1")
        self.config = dict(codebook_size=codebook_size, dim=dim, commitment_weight=commitment_weight,
                           ema_decay=ema_decay, dead_code_threshold=dead_code_threshold,
                           dead_code_window=dead_code_window, kmeans_init=kmeans_init, cosine=cosine,
                           codebook_dim=codebook_dim)
        self.codebook_size, self.dim = codebook_size, dim
        self.commitment_weight = commitment_weight
        self.ema_decay, self.cosine = ema_decay, cosine
        self.dead_code_threshold, self.dead_code_window = dead_code_threshold, dead_code_window
        self.kmeans_init = kmeans_init
        self.codebook_dim = codebook_dim or dim
        factorised = self.codebook_dim != dim
        self.project_in = nn.Linear(dim, self.codebook_dim) if factorised else nn.Identity()
        self.project_out = nn.Linear(self.codebook_dim, dim) if factorised else nn.Identity()

        codebook = torch.randn(codebook_size, self.codebook_dim)  # (K, d)
        if ema_decay is None:
            self.codebook = nn.Parameter(codebook)
            if dead_code_threshold > 0:
                self.register_buffer("usage_count", torch.zeros(codebook_size))
                self.register_buffer("window_steps", torch.zeros((), dtype=torch.long))
        else:
            self.register_buffer("codebook", codebook)
            # Each code starts as if it had absorbed one vector: itself.
            self.register_buffer("cluster_size", torch.ones(codebook_size))  # (K,)
            self.register_buffer("embed_sum", codebook.clone())  # (K, d)
        if kmeans_init:
            self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    # --- lookup -------------------------------------------------------------------------------

    def codes(self) -> Tensor:
        """The codes used for lookup, (K, d): normalised with `cosine`; differentiable without EMA."""
        codebook = self.codebook
        if self.training and isinstance(codebook, nn.Parameter):
            # A restart later in this forward edits the parameter in place; the graph keeps this copy.
            codebook = codebook.clone()
        return F.normalize(codebook, dim=-1) if self.cosine else codebook

    def encode_rows(self, z: Tensor) -> Tensor:
        """(B, D, *spatial) -> the rows searched, (N, d): projected and, with `cosine`, normalised."""
        x = self.project_in(flatten_channels(z).to(self.codebook.dtype))  # (N, d), in the codebook's dtype
        return F.normalize(x, dim=-1) if self.cosine else x

    def forward(self, z: Tensor) -> QuantizerOutput:
        lead = lead_shape(z)
        if self.training:
            self._table = None  # EMA, k-means and restarts edit the codebook through .data
        with torch.autocast(z.device.type, enabled=False):
            x = self.encode_rows(z)  # (N, d)
            if self.training and self.kmeans_init and not bool(self.initialized):
                self._init_kmeans(x.detach())
            codes = self.codes()  # (K, d)
            indices = nearest_codes(x, codes)  # (N,)
            e = F.embedding(indices, codes)  # (N, d)
            losses = {"vq/commitment": F.mse_loss(x, e.detach())}
            if self.ema_decay is None:
                losses["vq/codebook"] = F.mse_loss(x.detach(), e)
            if self.training:
                stats = self._update(x.detach(), indices)
            else:
                counts = torch.bincount(indices, minlength=self.codebook_size)
                stats = stats_from_counts(counts, self.codebook_size)
            quantized = self.project_out(straight_through(e, x))  # (N, D)
        return QuantizerOutput(
            quantized=unflatten_channels(quantized, lead).to(z.dtype),  # (B, D, *spatial)
            indices=indices.reshape(lead),  # (B, *spatial)
            losses=losses,
            stats=stats,
        )

    @torch.no_grad()
    def lookup(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Inference without losses or statistics: z (B, D, *spatial) -> (indices (B, *spatial),
        their values (B, D, *spatial)), as `forward` returns them in eval mode."""
        lead = lead_shape(z)
        with torch.autocast(z.device.type, enabled=False):
            codes = self.codes()  # (K, d)
            indices = nearest_codes(self.encode_rows(z), codes, table=self._search_table(codes))  # (N,)
            quantized = self.project_out(F.embedding(indices, codes))  # (N, D)
        return indices.reshape(lead), unflatten_channels(quantized, lead).to(z.dtype)

    def _search_table(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        """`search_table(codes)`, kept until the codebook changes (a new tensor or version, or any
        training forward): a streaming chunk of a few frames would otherwise spend most of its
        search re-reading the codebook."""
        if self.codebook.is_inference():  # made under inference_mode: no version counter to key on
            return search_table(codes)
        key = (self.codebook.data_ptr(), self.codebook._version)
        cached = getattr(self, "_table", None)
        if cached is None or cached[0] != key:
            cached = self._table = (key, search_table(codes))
        return cached[1]

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """(B, *spatial) long -> (B, D, *spatial), the values `forward` returned for them."""
        with torch.autocast(indices.device.type, enabled=False):
            e = F.embedding(indices.reshape(-1), self.codes())  # (N, d)
            return unflatten_channels(self.project_out(e), tuple(indices.shape))

    # --- training-time state ------------------------------------------------------------------

    @torch.no_grad()
    def _init_kmeans(self, x: Tensor) -> None:
        centroids, counts = kmeans(x, self.codebook_size, iters=self.kmeans_iters, cosine=self.cosine)
        self.codebook.data.copy_(centroids)
        if self.ema_decay is not None:
            sizes = counts.clamp_min(1.0)  # without restarts, every code keeps its centroid
            if self.dead_code_threshold > 0:
                # With fewer rows than codes (a small batch: 8 x 0.5 s of 75 Hz audio is 300 rows
                # for 1024 codes) most clusters are empty duplicates of a used centroid. Left at
                # size 1 they would wait ~log(threshold) / log(decay) steps to be restarted (300
                # at threshold 0.05, decay 0.99); at 0 the first update restarts them from the batch.
                sizes = counts
            self.cluster_size.copy_(sizes)
            self.embed_sum.copy_(centroids * sizes[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, x: Tensor, indices: Tensor) -> dict[str, Tensor]:
        """EMA step and dead-code restarts from this batch (all processes); returns the stats."""
        k = self.codebook_size
        if self.ema_decay is not None:
            sums, counts = cluster_sums(x, indices, k)  # (K, d), (K,) summed over processes
            decay = self.ema_decay
            self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
            self.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.laplace_eps) / (n + k * self.laplace_eps) * n  # (K,)
            self.codebook.copy_(self.embed_sum / smoothed[:, None])
        else:
            counts = all_reduce_(torch.bincount(indices, minlength=k).to(x.dtype))  # (K,)
        stats = stats_from_counts(counts, k)
        if self.dead_code_threshold > 0:
            dead = self._dead_codes(counts)
            stats["vq/dead_codes"] = dead.sum().float()
            if dead.any():
                self._restart(dead, x)
        return stats

    def _dead_codes(self, counts: Tensor) -> Tensor:
        """(K,) bool: codes to restart now."""
        if self.ema_decay is not None:
            return self.cluster_size < self.dead_code_threshold
        self.usage_count.add_(counts)
        self.window_steps.add_(1)
        if int(self.window_steps) < self.dead_code_window:
            return torch.zeros_like(counts, dtype=torch.bool)
        dead = self.usage_count < self.dead_code_threshold
        self.usage_count.zero_()
        self.window_steps.zero_()
        return dead

    def _restart(self, dead: Tensor, x: Tensor) -> None:
        """Move dead codes onto random rows of the (global) batch; with EMA they start with a
        cluster size of `dead_code_threshold`, so they are not restarted again at once."""
        rows = sample_rows(x, int(dead.sum()))  # (n_dead, d)
        self.codebook.data[dead] = rows
        if self.ema_decay is not None:
            self.cluster_size[dead] = self.dead_code_threshold
            self.embed_sum[dead] = rows * self.dead_code_threshold
