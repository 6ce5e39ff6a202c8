"""LPIPS perceptual distance (Zhang et al. 2018) through the `lpips` package, with offline weights; and the
weight-free distances 1 - HaarPSI and 1 - MS-SSIM.

The package ships its learned linear heads; the VGG16 backbone is ImageNet-trained and must come
from a local file (no downloads here). `backbone="random"` builds an untrained VGG for tests and
smoke runs, where the distance still trains but means little.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import warnings
from pathlib import Path

import lpips
import torch
from torch import nn
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's file name for IMAGENET1K_V1


def default_vgg_path() -> Path:
    """Where torchvision caches its VGG16 weights ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def _find_vgg_weights(path: str | os.PathLike | None) -> Path:
    candidate = Path(path).expanduser() if path else default_vgg_path()
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(
        f"LPIPS needs ImageNet VGG16 weights and none were found at {candidate}. Either copy "
        f"torchvision's {VGG16_FILE} to {default_vgg_path()}, or set "
        "loss.perceptual_weights=/path/to/vgg16.pth (a torchvision VGG16 state dict), or set "
        "loss.perceptual_backbone=random to train with an untrained backbone (tests, smoke runs), "
        "or loss.perceptual_weight=0 to train without LPIPS."
    )


@functools.lru_cache(maxsize=4)
def _build_lpips(vgg_file: str | None) -> lpips.LPIPS:
    """Build once per process (torchvision's VGG16 constructor spends ~2 s initialising a classifier
    that LPIPS throws away); callers get deep copies."""
    with torch.random.fork_rng(), warnings.catch_warnings():
        # A fixed seed: the "random" backbone is the same network in every run and process.
        torch.manual_seed(0)
        warnings.simplefilter("ignore", UserWarning)  # lpips passes torchvision's deprecated `pretrained=`
        # pnet_rand=True: never let torchvision download; a real backbone is loaded just below.
        net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    if vgg_file is not None:
        state = torch.load(vgg_file, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        feats = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        if not feats:
            raise ValueError(f"{vgg_file} is not a torchvision VGG16 state dict (no 'features.*' keys)")
        for slice_ in (net.net.slice1, net.net.slice2, net.net.slice3, net.net.slice4, net.net.slice5):
            slice_.load_state_dict({k: feats[k] for k in slice_.state_dict()}, strict=True)
    return net.eval().requires_grad_(False)


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG: forward(x, target) -> (B,) distances; inputs (B, 3, H, W) in [-1, 1].

    Gradients flow to `x` only: the target's features are computed without a graph.
    """

    def __init__(self, *, backbone: str = "vgg", weights_path: str | None = None) -> None:
        super().__init__()
        if backbone not in ("vgg", "random"):
            raise ValueError(f"unknown LPIPS backbone {backbone!r}; expected 'vgg' or 'random'")
        vgg_file = _find_vgg_weights(weights_path) if backbone == "vgg" else None
        self.net = copy.deepcopy(_build_lpips(str(vgg_file) if vgg_file else None))
        self.pretrained = vgg_file is not None
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # always eval: dropout in the heads would add noise to the loss

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self.net.net(self.net.scaling_layer(x))
        return [lpips.normalize_tensor(o) for o in outs]

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ft = self._features(target)
        fx = self._features(x)
        dist = 0.0
        for lin, a, b in zip(self.net.lins, fx, ft):
            dist = dist + lin((a - b) ** 2).mean(dim=(2, 3))  # (B, 1)
        return dist.flatten()  # (B,)


class HaarPSIDistance(nn.Module):
    """1 - HaarPSI (Reisenhofer et al. 2018, piq's implementation) per image: a perceptual distance
    with no learned weights, for training where no VGG weights exist offline. forward(x, target) ->
    (B,) in [0, 1]; inputs (B, C, H, W) in [-1, 1], C 1 or 3, sides of at least 16 pixels."""

    pretrained = False
    """Not LPIPS: the trainer's validation does not report it as `lpips`."""
    log_name = "haarpsi"
    """The training log's key: `rec/haarpsi` (1 - HaarPSI)."""
    min_side = 16
    """piq.haarpsi's largest kernel, 2 ** (scales + 1) at its default 3 scales."""

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import piq  # the weight-free metrics: only this loss needs them

        if min(x.shape[-2:]) < self.min_side:
            raise ValueError(f"HaarPSI needs images of at least {self.min_side}x{self.min_side} pixels, "
                             f"got {tuple(x.shape[-2:])}")
        unit = lambda t: ((t.float() + 1) / 2).clamp(0, 1)  # noqa: E731
        with torch.autocast(x.device.type, enabled=False):  # fp32 filters: see MSSSIMDistance.forward
            return 1 - piq.haarpsi(unit(x), unit(target).detach(), reduction="none", data_range=1.0)


MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Wang et al. 2003's weights of the five MS-SSIM scales, finest first."""


def ms_ssim_betas(side: int) -> tuple[float, ...]:
    """The MS-SSIM scale weights an image of `side` pixels allows, renormalised to sum to 1: each scale
    halves the image and the 11-tap Gaussian window needs side > 10 * 2^(scales-1) (64 px: 3 scales).
    Empty below 20 pixels (one scale is plain SSIM). Shared by the loss and `aetk eval`, so that
    training optimises the number that is reported."""
    if side < MSSSIMDistance.min_side:
        return ()
    betas = MS_SSIM_BETAS[:min(5, int(math.log2(side / 10)) + 1)]
    return tuple(b / sum(betas) for b in betas)


class MSSSIMDistance(nn.Module):
    """1 - MS-SSIM (Wang et al. 2003; torchmetrics' implementation, scales as `ms_ssim_betas`) per
    image: the structural term of Zhao et al. 2017's "mix" loss, with no learned weights. Pixel L2
    alone reaches a good PSNR but leaves MS-SSIM behind patch PCA on photos. forward(x, target) ->
    (B,) in [0, 1]; inputs (B, C, H, W) in [-1, 1], sides of at least 20 pixels."""

    pretrained = False
    """Not LPIPS: the trainer's validation does not report it as `lpips`."""
    log_name = "ms_ssim"
    """The training log's key: `rec/ms_ssim` (1 - MS-SSIM)."""
    min_side = 20
    """Two scales: the 11-tap window needs a side above 10 at the coarser one."""

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        betas = ms_ssim_betas(min(x.shape[-2:]))
        if not betas:
            raise ValueError(f"MS-SSIM needs images of at least {self.min_side}x{self.min_side} pixels, "
                             f"got {tuple(x.shape[-2:])}")
        unit = lambda t: ((t.float() + 1) / 2).clamp(0, 1)  # noqa: E731
        # Under a run's bf16 autocast the Gaussian filters would run in bf16, and the variances they give
        # (E[x^2] - mu^2) cancel to noise: the distance came out negative and training on it stalled (kl-f4
        # photo race, AVX-512 CPU: 27.5 dB after 30 minutes in bf16 against 28.3 in fp32 on a slower CPU).
        # "relu" clamps a negative contrast-structure term to 0 instead of raising it to a fractional power (NaN).
        with torch.autocast(x.device.type, enabled=False):
            return 1 - multiscale_structural_similarity_index_measure(
                unit(x), unit(target).detach(), data_range=1.0, betas=betas, reduction="none", normalize="relu")
