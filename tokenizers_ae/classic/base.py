"""What every classic autoencoder shares: the typed output, MLP parts and the plain autoencoder.

A classic model is `encode` (B, *input_shape) -> (B, code_size), `decode` back, and `forward(x, *, y,
noise)` -> `ClassicOutput` carrying its own reconstruction loss and its unweighted regularisers; the
training task (`train/classic_task.py`) adds them with the configured weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from tokenizers_ae.models.output import AEOutput

NoiseFn = Callable[[torch.Size], torch.Tensor]
"""shape -> standard-normal draws (the trainer's positional noise, so resumed runs are exact). Each
model draws at most once per call: a second draw of the same shape would repeat the first."""

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}


@dataclass
class ClassicOutput(AEOutput):
    """`AEOutput` (recon, latent = the code (B, code_size), reg, stats) plus the model's own
    reconstruction loss."""

    rec_loss: torch.Tensor | None = None
    """Scalar: mean squared error over values unless the variant says otherwise (the VAE's Gaussian
    negative log-likelihood, the MAE's error on masked patches)."""


def mse(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every value and the batch (a scalar)."""
    return (recon.float() - x.float()).pow(2).mean()


def standard_normal(noise: NoiseFn | None, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """The trainer's draws when given, else torch's global generator; on `like`'s device and dtype."""
    shape = torch.Size(shape)
    return (noise(shape) if noise is not None else torch.randn(shape)).to(like)


def mlp(sizes: Sequence[int], activation: str = "relu", *, last: nn.Module | None = None) -> nn.Sequential:
    """Linear layers through `sizes` with `activation` between them; `last` (if any) after the final one."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    if last is not None:
        layers.append(last)
    return nn.Sequential(*layers)


def mlp_pair(*, input_size: int, hidden_sizes: Sequence[int], code_size: int, activation: str = "relu",
             code_activation: nn.Module | None = None) -> tuple[nn.Sequential, nn.Sequential]:
    """A mirrored encoder input -> hidden... -> code and decoder code -> ...hidden -> input (linear output)."""
    sizes = [input_size, *hidden_sizes, code_size]
    return mlp(sizes, activation, last=code_activation), mlp(sizes[::-1], activation)


class Autoencoder(nn.Module):
    """x -> encoder -> code -> decoder -> x_hat, trained on mean squared error.

    The encoder sees the input flattened to (B, prod(input_shape)) unless `flatten=False` (then it
    gets (B, *input_shape), e.g. a conv net); the decoder's output is reshaped to (B, *input_shape).
    With linear encoder and decoder and a code smaller than the input this is the linear autoencoder
    whose optimum spans the principal subspace (Bourlard & Kamp 1988; Baldi & Hornik 1989).
    """

    def __init__(self, *, encoder: nn.Module, decoder: nn.Module, input_shape: Sequence[int], code_size: int,
                 flatten: bool = True) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.input_shape, self.code_size, self.flatten = tuple(input_shape), code_size, flatten

    @property
    def input_size(self) -> int:
        return int(torch.Size(self.input_shape).numel())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *input_shape) -> code (B, code_size)."""
        return self.encoder(x.flatten(1) if self.flatten else x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, code_size) -> (B, *input_shape)."""
        return self.decoder(z).reshape(-1, *self.input_shape)

    def forward(self, x: torch.Tensor, *, y: torch.Tensor | None = None, noise: NoiseFn | None = None) -> ClassicOutput:
        z = self.encode(x)  # (B, code)
        recon = self.decode(z)  # (B, *input_shape)
        return ClassicOutput(recon=recon, latent=z, rec_loss=mse(recon, x), reg=self.regularisers(x, z),
                             stats={"code/abs_mean": z.detach().abs().mean()})

    def regularisers(self, x: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted penalties on the code; none for the plain autoencoder."""
        return {}
