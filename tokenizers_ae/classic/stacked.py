"""Stacked autoencoder (Bengio et al. 2007; Hinton & Salakhutdinov 2006): train one shallow
autoencoder per layer greedily, each on the codes of the layers below it (frozen), then fine-tune
the whole stack end to end.

`forward(x, stage=i)` for i < n_layers is greedy stage i: only layer i's encoder and decoder are in
the graph, and its reconstruction loss is on its own input. `stage=None` (or n_layers) is the full
stack, used for fine-tuning and evaluation. The training task picks the stage from the step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tokenizers_ae.classic.base import ACTIVATIONS, ClassicOutput, ClassicPretrained, Hparams, NoiseFn, mse


class StackedAutoencoder(ClassicPretrained, nn.Module):
    """sizes = [input, h1, ..., code]: layer i maps sizes[i] -> sizes[i+1] (activation after each
    encoder except the code) and back (activation after each decoder except the output)."""

    variants = ("stacked",)

    @classmethod
    def build(cls, c: Hparams, shape: tuple[int, ...]) -> StackedAutoencoder:
        return cls(input_shape=shape, hidden_sizes=c.hidden_sizes, code_size=c.code_size, activation=c.activation)

    def __init__(self, *, input_shape: Sequence[int], hidden_sizes: Sequence[int], code_size: int,
                 activation: str = "sigmoid") -> None:
        super().__init__()
        self.input_shape, self.code_size = tuple(input_shape), code_size
        sizes = [int(torch.Size(input_shape).numel()), *hidden_sizes, code_size]
        self.encoders = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.decoders = nn.ModuleList(nn.Linear(b, a) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = ACTIVATIONS[activation]()

    @property
    def n_layers(self) -> int:
        return len(self.encoders)

    def _enc(self, i: int, h: torch.Tensor) -> torch.Tensor:
        h = self.encoders[i](h)
        return h if i == self.n_layers - 1 else self.act(h)  # the code is linear

    def _dec(self, i: int, h: torch.Tensor) -> torch.Tensor:
        h = self.decoders[i](h)
        return h if i == 0 else self.act(h)  # pixels are linear, hidden layers are activations

    def encode(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """(B, *input_shape) -> code (B, code_size), or the output of the first `upto` layers."""
        h = x.flatten(1)
        for i in range(self.n_layers if upto is None else upto):
            h = self._enc(i, h)
        return h

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        for i in reversed(range(self.n_layers)):
            z = self._dec(i, z)
        return z.reshape(-1, *self.input_shape)

    def forward(self, x: torch.Tensor, *, y: torch.Tensor | None = None, noise: NoiseFn | None = None,
                stage: int | None = None) -> ClassicOutput:
        if stage is None or stage >= self.n_layers:  # fine-tuning: the whole stack
            z = self.encode(x)
            recon = self.decode(z)
            return ClassicOutput(recon=recon, latent=z, rec_loss=mse(recon, x),
                                 stats={"stacked/stage": torch.tensor(float(self.n_layers))})
        with torch.no_grad():  # the layers below are frozen: their codes are this layer's data
            h_in = self.encode(x, upto=stage)  # (B, sizes[stage])
        h = self._enc(stage, h_in)
        rec_loss = mse(self._dec(stage, h), h_in)
        with torch.no_grad():  # for logging and grids only
            z = self.encode(x)
            recon = self.decode(z)
        return ClassicOutput(recon=recon, latent=z, rec_loss=rec_loss,
                             stats={"stacked/stage": torch.tensor(float(stage))})
