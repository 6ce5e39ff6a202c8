"""Classical codecs a tokenizer must beat: JPEG at a matched bitrate and patch PCA with the same
number of latent values (a linear autoencoder with the tokenizer's stride and channels)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from eval.image import to_unit


def _to_pil(x: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> RGB PIL image."""
    arr = (to_unit(x).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def jpeg_roundtrip(x: torch.Tensor, quality: int) -> tuple[torch.Tensor, float]:
    """(B, 3, H, W) in [-1, 1] -> (JPEG reconstruction in [-1, 1], mean bits per pixel)."""
    outs, bits = [], 0
    for img in x:
        buf = io.BytesIO()
        _to_pil(img.float().cpu()).save(buf, format="JPEG", quality=int(quality))
        bits += 8 * buf.tell()
        buf.seek(0)
        arr = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 127.5 - 1.0
        outs.append(torch.from_numpy(arr).permute(2, 0, 1))
    return torch.stack(outs), bits / (x.shape[0] * x.shape[2] * x.shape[3])


def jpeg_quality_for_bpp(x: torch.Tensor, target_bpp: float) -> tuple[int, float]:
    """Highest JPEG quality whose mean bits/pixel on `x` does not exceed `target_bpp` (binary search;
    quality 1 if even that exceeds it)."""
    lo, hi, best = 1, 95, (1, jpeg_roundtrip(x, 1)[1])
    while lo <= hi:
        q = (lo + hi) // 2
        bpp = jpeg_roundtrip(x, q)[1]
        if bpp <= target_bpp:
            best, lo = (q, bpp), q + 1
        else:
            hi = q - 1
    return best


class PatchPCA:
    """PCA on non-overlapping `factor` x `factor` patches keeping `channels` components per patch:
    (B, 3, H, W) -> (B, channels, H/f, W/f) latents, the same count a tokenizer with downsampling
    factor f and `channels` latent channels produces."""

    def __init__(self, *, factor: int, channels: int) -> None:
        self.factor, self.channels = factor, channels
        self.mean = self.components = None

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        b, c, h, w = x.shape
        p = x.float().reshape(b, c, h // f, f, w // f, f).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, f, f)
        return p.reshape(-1, c * f * f)

    def fit(self, x: torch.Tensor) -> PatchPCA:
        p = self._patches(x)  # (N, C*f*f)
        self.mean = p.mean(0)
        _, _, vh = torch.linalg.svd(p - self.mean, full_matrices=False)
        self.components = vh[: self.channels]  # (k, C*f*f)
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        f = self.factor
        z = (self._patches(x) - self.mean) @ self.components.T  # (B*h*w, k)
        return z.reshape(b, h // f, w // f, self.channels).permute(0, 3, 1, 2)

    def decode(self, z: torch.Tensor, channels: int = 3) -> torch.Tensor:
        b, k, hh, ww = z.shape
        f = self.factor
        p = z.permute(0, 2, 3, 1).reshape(-1, k) @ self.components + self.mean  # (B*h*w, C*f*f)
        p = p.reshape(b, hh, ww, channels, f, f).permute(0, 3, 1, 4, 2, 5)
        return p.reshape(b, channels, hh * f, ww * f)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), channels=x.shape[1]).clamp(-1, 1)
