"""PatchGAN discriminator (Isola et al. 2017) as used by taming-transformers and latent-diffusion."""

from __future__ import annotations

from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels // 4) or 1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown discriminator norm {kind!r}; expected batch, group or none")


class NLayerDiscriminator(nn.Module):
    """(B, C, H, W) -> (B, 1, h, w) patch logits; receptive field 70px at n_layers=3."""

    def __init__(self, *, in_channels: int = 3, channels: int = 64, n_layers: int = 3,
                 norm: str = "batch") -> None:
        super().__init__()
        use_bias = norm != "batch"  # batch norm has its own shift
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=use_bias),
                       _norm(norm, channels * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x):
        return self.main(x)


def _init_weights(m: nn.Module) -> None:
    # taming's init: N(0, 0.02) convs, N(1, 0.02) norm scales.
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
