"""What every classic autoencoder shares: the typed output, MLP parts and the plain autoencoder.

A classic model is `encode` (B, *input_shape) -> (B, code_size), `decode` back, and `forward(x, *, y,
noise)` -> `ClassicOutput` carrying its own reconstruction loss and its unweighted regularisers; the
training task (`train/classic_task.py`) adds them with the configured weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

from tokenizers_ae.models.output import AEOutput
from tokenizers_ae.pretrained import LoadError, Pretrained, Saved, expect

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


Hparams = SimpleNamespace
"""A classic model's hyperparameters by attribute (`c.code_size`, `c.variant`): its config without
`input_shape`. The recipe's `model` section of `model.kind: classic` documents each one."""


class ClassicPretrained(Pretrained):
    """Saving and loading for the classic variants. A saved model's config is {"variant",
    "input_shape", **hyperparameters}; `build(c, shape)` (each class's own) makes the architecture,
    and `variants` lists the variant names a class builds (`tokenizers_ae.classic.registry`)."""

    saved_name, saved_what = "classic", "a classic autoencoder"
    variants: tuple[str, ...] = ()
    classic_config: dict

    @classmethod
    def build(cls, c: Hparams, shape: tuple[int, ...]) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict) -> nn.Module:
        if config["variant"] not in cls.variants:
            raise ValueError(f"{cls.__name__} builds {', '.join(cls.variants)}, not {config['variant']!r}")
        shape = tuple(int(s) for s in config["input_shape"])
        model = cls.build(Hparams(**{k: v for k, v in config.items() if k != "input_shape"}), shape)
        model.classic_config = {**config, "input_shape": list(shape)}
        return model

    def pretrained_config(self) -> dict:
        return self.classic_config

    @classmethod
    def from_saved(cls, saved: Saved) -> nn.Module:
        expect(saved, cls.saved_name, cls.saved_what)
        variant = (saved.legacy["model"]["classic"] if saved.legacy else saved.config)["variant"]
        if variant not in cls.variants:
            raise LoadError(f"{saved.path} holds a {variant!r} autoencoder, not a {cls.__name__}; "
                            "tokenizers_ae.classic.registry.load_classic reads any variant")
        return super().from_saved(saved)

    @classmethod
    def from_legacy(cls, legacy: dict) -> nn.Module:
        m, data = legacy["model"], legacy["data"]
        path, r = data.get("path", ""), data.get("resolution", 64)
        if path == "builtin:lm-activations":
            from tokenizers_ae.data.activations import lm_hidden_size  # transformers: only SAE files need it

            shape: tuple[int, ...] = (lm_hidden_size(m["classic"].get("lm")),)
        else:
            shape = (m.get("in_channels", 3), r, r)
        return cls.from_config({**m["classic"], "input_shape": list(shape)})


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def pair(c: Hparams, shape: Sequence[int], code_activation: nn.Module | None = None) -> dict:
    """The mirrored MLP encoder/decoder of `c` for inputs of `shape`, as constructor arguments."""
    enc, dec = mlp_pair(input_size=numel(shape), hidden_sizes=c.hidden_sizes, code_size=c.code_size,
                        activation=c.activation, code_activation=code_activation)
    return dict(encoder=enc, decoder=dec, input_shape=shape, code_size=c.code_size)


class Autoencoder(ClassicPretrained, nn.Module):
    """x -> encoder -> code -> decoder -> x_hat, trained on mean squared error.

    The encoder sees the input flattened to (B, prod(input_shape)) unless `flatten=False` (then it
    gets (B, *input_shape), e.g. a conv net); the decoder's output is reshaped to (B, *input_shape).
    With linear encoder and decoder and a code smaller than the input this is the linear autoencoder
    whose optimum spans the principal subspace (Bourlard & Kamp 1988; Baldi & Hornik 1989).
    """

    variants = ("linear", "mlp", "deep")

    def __init__(self, *, encoder: nn.Module, decoder: nn.Module, input_shape: Sequence[int], code_size: int,
                 flatten: bool = True) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.input_shape, self.code_size, self.flatten = tuple(input_shape), code_size, flatten

    @classmethod
    def build(cls, c: Hparams, shape: tuple[int, ...]) -> Autoencoder:
        d = numel(shape)
        if c.variant == "linear":
            if c.code_size >= d:
                raise ValueError(f"code_size: a linear autoencoder needs a code smaller than the input ({d} "
                                 f"values), got {c.code_size}")
            return cls(encoder=nn.Linear(d, c.code_size), decoder=nn.Linear(c.code_size, d), input_shape=shape,
                       code_size=c.code_size)
        if c.variant == "deep" and len(c.hidden_sizes) < 2:
            raise ValueError("hidden_sizes: a deep autoencoder needs >= 2 hidden layers per side")
        return cls(**pair(c, shape))

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
