"""Top-k sparse autoencoder for interpretability (Gao et al. 2024, "Scaling and evaluating sparse
autoencoders"), trained on a language model's activations.

    z = ReLU(TopK(W_enc (x - b_pre) + b_enc)),   x_hat = W_dec z + b_pre,
with unit-norm dictionary columns (W_dec is normalised in the forward pass, so the constraint
holds exactly at every step). At most k latents fire per input: the sparsity is set, not tuned.

Dead latents (none fired for `dead_steps` training batches) are tracked in a buffer, and the
auxiliary loss AuxK asks the top `k_aux` dead latents to reconstruct the residual error, which
gives them gradient and brings them back.
"""

from __future__ import annotations

import torch
from torch import nn

from tokenizers_ae.classic.base import ClassicOutput, ClassicPretrained, Hparams, NoiseFn, mse, numel


class TopKSAE(ClassicPretrained, nn.Module):
    variants = ("sae",)

    @classmethod
    def build(cls, c: Hparams, shape: tuple[int, ...]) -> TopKSAE:
        return cls(d_model=numel(shape), n_latents=c.code_size, k=c.k, dead_steps=c.dead_steps)

    def __init__(self, *, d_model: int, n_latents: int, k: int, dead_steps: int = 200,
                 k_aux: int | None = None) -> None:
        super().__init__()
        self.input_shape, self.code_size, self.k, self.dead_steps = (d_model,), n_latents, k, dead_steps
        self.k_aux = k_aux if k_aux is not None else max(1, d_model // 2)  # the paper's d_model / 2
        self.b_pre = nn.Parameter(torch.zeros(d_model))
        self.W_enc = nn.Parameter(torch.randn(n_latents, d_model) / d_model ** 0.5)
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.W_dec = nn.Parameter(self.W_enc.detach().T.clone())  # (d, n): encoder initialised as its transpose
        self.register_buffer("steps_since_fired", torch.zeros(n_latents, dtype=torch.long))

    def dictionary(self) -> torch.Tensor:
        """Unit-norm decoder columns (d_model, n_latents)."""
        return self.W_dec / self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-8)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_pre) @ self.W_enc.T + self.b_enc  # (B, n)

    def sparsify(self, pre: torch.Tensor) -> torch.Tensor:
        """ReLU(TopK(pre)): (B, n) with at most k nonzeros per row."""
        values, idx = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, values.relu())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d_model) -> sparse latents (B, n_latents)."""
        return self.sparsify(self.pre_activations(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.dictionary().T + self.b_pre  # (B, d)

    @property
    def dead(self) -> torch.Tensor:
        """(n_latents,) bool: latents that have not fired in the last `dead_steps` training batches."""
        return self.steps_since_fired >= self.dead_steps

    def forward(self, x: torch.Tensor, *, y: torch.Tensor | None = None, noise: NoiseFn | None = None) -> ClassicOutput:
        pre = self.pre_activations(x)  # (B, n)
        z = self.sparsify(pre)
        recon = self.decode(z)
        reg = {}
        if self.training:
            with torch.no_grad():
                fired = (z > 0).any(0)
                self.steps_since_fired.add_(1).masked_fill_(fired, 0)
            reg["auxk"] = self._auxk(x, recon, pre)
        variance = (x - x.mean(0)).pow(2).sum(1).mean().clamp_min(1e-8)
        return ClassicOutput(recon=recon, latent=z, rec_loss=mse(recon, x), reg=reg, stats={
            "sae/l0": (z > 0).float().sum(1).mean().detach(),
            "sae/dead_fraction": self.dead.float().mean(),
            "sae/fvu": ((recon - x).pow(2).sum(1).mean() / variance).detach()})  # fraction of variance unexplained

    def _auxk(self, x: torch.Tensor, recon: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        """Normalised error of reconstructing the residual x - x_hat from the top k_aux dead latents."""
        dead = self.dead
        n_dead = int(dead.sum())
        if n_dead == 0:
            return pre.new_zeros(())
        residual = (x - recon).detach()
        masked = pre.masked_fill(~dead, float("-inf"))  # only dead latents compete
        values, idx = masked.topk(min(self.k_aux, n_dead), dim=-1)
        z_aux = torch.zeros_like(pre).scatter(-1, idx, values.relu())
        residual_hat = z_aux @ self.dictionary().T  # no bias: it models an error, not an activation
        return (residual_hat - residual).pow(2).sum(1).mean() / residual.pow(2).sum(1).mean().clamp_min(1e-8)
