"""Convolutional autoencoder: stride-2 convolutions down to a small grid, a linear code, and
transposed convolutions back up. Weight sharing across positions is the inductive bias an MLP lacks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from tokenizers_ae.classic.base import ACTIVATIONS, Autoencoder, Hparams


def conv_pair(*, input_shape: Sequence[int], channels: Sequence[int], code_size: int,
              activation: str = "relu") -> tuple[nn.Sequential, nn.Sequential]:
    """Encoder (B, C, H, W) -> (B, code_size) and decoder back, for H, W divisible by 2**len(channels)."""
    c_in, h, w = input_shape
    f = 2 ** len(channels)
    if h % f or w % f:
        raise ValueError(f"input {h}x{w} is not divisible by 2**{len(channels)} (one halving per channel entry)")
    grid = (channels[-1], h // f, w // f)  # the last feature map
    act = ACTIVATIONS[activation]
    enc: list[nn.Module] = []
    for a, b in zip([c_in, *channels[:-1]], channels):
        enc += [nn.Conv2d(a, b, 4, stride=2, padding=1), act()]  # halves H and W
    enc += [nn.Flatten(), nn.Linear(grid[0] * grid[1] * grid[2], code_size)]
    dec: list[nn.Module] = [nn.Linear(code_size, grid[0] * grid[1] * grid[2]), act(), nn.Unflatten(1, grid)]
    rev = list(channels[::-1])
    for i, (a, b) in enumerate(zip(rev, [*rev[1:], c_in])):
        dec.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))  # doubles H and W
        if i < len(rev) - 1:
            dec.append(act())
    return nn.Sequential(*enc), nn.Sequential(*dec)


class ConvAutoencoder(Autoencoder):
    """(B, C, H, W) -> conv encoder -> code (B, code_size) -> transposed-conv decoder -> (B, C, H, W)."""

    variants = ("conv",)

    @classmethod
    def build(cls, c: Hparams, shape: tuple[int, ...]) -> ConvAutoencoder:
        if len(shape) != 3:
            raise ValueError(f"variant conv needs images (C, H, W), not inputs of shape {shape}")
        return cls(input_shape=shape, channels=c.channels, code_size=c.code_size, activation=c.activation)

    def __init__(self, *, input_shape: Sequence[int], channels: Sequence[int], code_size: int,
                 activation: str = "relu") -> None:
        enc, dec = conv_pair(input_shape=input_shape, channels=channels, code_size=code_size, activation=activation)
        super().__init__(encoder=enc, decoder=dec, input_shape=input_shape, code_size=code_size, flatten=False)
