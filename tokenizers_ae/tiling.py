"""Exact tiled encode and decode for diffusers' VAE `Encoder` / `Decoder` in bounded memory.

diffusers' `enable_tiling()` runs the whole network on overlapping tiles and blends the seams: each
tile normalises with its own GroupNorm statistics, so the result differs from the untiled one and
seams can show. Here the network runs stage by stage instead:

- A feature map is a `Source`: either stored (`Stored`) or lazy (`Conv`: a convolution of another
  source, computed for any region on demand from that region plus a halo as wide as the kernel).
- GroupNorm uses statistics of the *whole* map (`group_stats`, accumulated tile by tile in float64),
  so normalising a tile gives exactly the values the untiled network sees.
- Zero padding is applied where a tile touches the map's border, and nowhere else, so every
  convolution output equals the untiled one.
- Only ResNet block outputs are stored in full; inside a block, the hidden map and the up/down
  sampling convs are recomputed per tile (a little more compute for much less memory).
- The mid block (self-attention, global) runs on the whole lowest-resolution map, where it is cheap.

The result equals the untiled network to float rounding (order of summation only). Peak memory is
about two full feature maps at the highest resolution plus a few tile-sized temporaries, instead of
the untiled network's several full maps.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Source:
    """A (B, C, H, W) feature map whose regions can be read."""

    shape: tuple[int, int, int, int]

    def region(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:  # pragma: no cover - interface
        """Values at rows [y0, y1) and columns [x0, x1), all inside the map: (B, C, y1-y0, x1-x0)."""
        raise NotImplementedError


class Stored(Source):
    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor
        self.shape = tuple(tensor.shape)

    def region(self, y0, y1, x0, x1):
        return self.tensor[:, :, y0:y1, x0:x1]


@dataclass
class GroupNormAct:
    """GroupNorm with fixed (whole-map) statistics, then an activation: the pre-op of a conv."""

    norm: nn.GroupNorm
    mean: Tensor  # (B, G) float64
    rstd: Tensor  # (B, G) float64
    act: nn.Module

    def __call__(self, x: Tensor, out: Tensor) -> None:
        """Write act(norm(x)) into `out` (same shape), with one pass and no temporaries."""
        b, c = x.shape[:2]
        g = self.norm.num_groups
        rstd = self.rstd.float().repeat_interleave(c // g, dim=1)  # (B, C)
        mean = self.mean.float().repeat_interleave(c // g, dim=1)
        weight = self.norm.weight.float() if self.norm.affine else torch.ones(c, device=x.device)
        bias = self.norm.bias.float() if self.norm.affine else torch.zeros(c, device=x.device)
        scale = rstd * weight  # (B, C): y = x * scale + shift
        shift = bias - mean * scale
        torch.mul(x, scale.to(x.dtype)[:, :, None, None], out=out)
        out.add_(shift.to(x.dtype)[:, :, None, None])
        if isinstance(self.act, nn.SiLU):
            F.silu(out, inplace=True)
        else:
            out.copy_(self.act(out))


def _span(lo: int, hi: int, size: int) -> tuple[int, int, int, int]:
    """Clip [lo, hi) to [0, size): (start, stop, zeros before, zeros after)."""
    a, b = max(0, lo), min(size, hi)
    return a, b, a - lo, hi - b


class Conv(Source):
    """conv(pre(parent)) [+ skip_conv(skip)] / scale, computed per region.

    mode `same`: stride 1, zero padding k//2 (the ResNet convs, conv_in, conv_out);
    `down`: diffusers' `Downsample2D(padding=0)`: pad (0, 1, 0, 1) then a stride-2 3x3 conv;
    `up`: diffusers' `Upsample2D`: nearest 2x, then a 3x3 conv with padding 1.
    """

    def __init__(self, parent: Source, conv: nn.Conv2d, *, pre=None, mode: str = "same",
                 skip: Source | None = None, skip_conv: nn.Conv2d | None = None, scale: float = 1.0) -> None:
        k = conv.kernel_size[0]
        if conv.kernel_size != (k, k) or conv.dilation != (1, 1) or conv.groups != 1:
            raise NotImplementedError(f"tiling supports square, undilated, ungrouped convs; got {conv}")
        want = {"same": ((1, 1), (k // 2, k // 2)), "down": ((2, 2), (0, 0)), "up": ((1, 1), (1, 1))}[mode]
        if (conv.stride, conv.padding) != want:
            raise NotImplementedError(f"tiling: {conv} does not match mode {mode!r}")
        self.parent, self.conv, self.pre, self.mode, self.k = parent, conv, pre, mode, k
        self.skip, self.skip_conv, self.scale = skip, skip_conv, scale
        b, _, h, w = parent.shape
        h, w = {"same": (h, w), "down": (h // 2, w // 2), "up": (2 * h, 2 * w)}[mode]
        self.shape = (b, conv.out_channels, h, w)

    def _input_span(self, lo: int, hi: int, size: int) -> tuple[int, int, int, int]:
        """Parent rows needed for output rows [lo, hi): (start, stop, zero pad before, after)."""
        p = self.k // 2
        if self.mode == "same":
            return _span(lo - p, hi + p, size)
        if self.mode == "down":  # padded input has one zero row after the map
            return _span(2 * lo, 2 * hi + 1, size)
        return _span(lo - 1, hi + 1, 2 * size)  # `up`: in upsampled coordinates

    def region(self, y0, y1, x0, x1):
        _, _, ph, pw = self.parent.shape
        ya, yb, top, bottom = self._input_span(y0, y1, ph)
        xa, xb, left, right = self._input_span(x0, x1, pw)
        if self.mode == "up":  # fetch the parent rows behind upsampled rows [ya, yb), then repeat
            x = self.parent.region(ya // 2, (yb - 1) // 2 + 1, xa // 2, (xb - 1) // 2 + 1)
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = x[:, :, ya - 2 * (ya // 2):yb - 2 * (ya // 2), xa - 2 * (xa // 2):xb - 2 * (xa // 2)]
        else:
            x = self.parent.region(ya, yb, xa, xb)
        if top or bottom or left or right:  # zeros only where the tile meets the map's border
            padded = x.new_zeros(*x.shape[:2], yb - ya + top + bottom, xb - xa + left + right)
            inner = padded[:, :, top:top + yb - ya, left:left + xb - xa]
            self.pre(x, inner) if self.pre is not None else inner.copy_(x)
            x = padded
        elif self.pre is not None:
            normed = torch.empty_like(x)
            self.pre(x, normed)
            x = normed
        out = F.conv2d(x, self.conv.weight, self.conv.bias, stride=self.conv.stride)
        if self.skip is not None:
            s = self.skip.region(y0, y1, x0, x1)
            out.add_(self.skip_conv(s) if self.skip_conv is not None else s)
        return out.div_(self.scale) if self.scale != 1.0 else out


def _tiles(h: int, w: int, tile: int):
    for y0, x0 in itertools.product(range(0, h, tile), range(0, w, tile)):
        yield y0, min(h, y0 + tile), x0, min(w, x0 + tile)


def group_stats(src: Source, norm: nn.GroupNorm, tile: int) -> tuple[Tensor, Tensor]:
    """Per (sample, group) mean and 1/std of the whole map, accumulated over tiles in float64."""
    b, c, h, w = src.shape
    g = norm.num_groups
    s1 = s2 = 0.0
    for y0, y1, x0, x1 in _tiles(h, w, tile):
        s1, s2 = _accumulate(src.region(y0, y1, x0, x1), g, s1, s2)
    return _finish(s1, s2, (c // g) * h * w, norm.eps)


def _accumulate(r: Tensor, groups: int, s1, s2):
    """Add a tile's per-group sums of x and x^2 (float32 within the tile, float64 across tiles)."""
    r = r.reshape(r.shape[0], groups, -1)
    return (s1 + r.sum(-1, dtype=torch.float32).double(),
            s2 + torch.linalg.vector_norm(r, dim=-1, dtype=torch.float32).double().square())


def _finish(s1: Tensor, s2: Tensor, n: int, eps: float) -> tuple[Tensor, Tensor]:
    """Sums of x and x^2 over n values per group -> (mean, 1/sqrt(var + eps))."""
    mean = s1 / n
    return mean, torch.rsqrt((s2 / n - mean.square()).clamp_min(0.0) + eps)


def materialize(src: Source, tile: int, *, stats_for: nn.GroupNorm | None = None):
    """Compute a source tile by tile into one stored tensor. With `stats_for`, return
    (stored, (mean, rstd)): that norm's whole-map statistics, gathered on the way."""
    b, c, h, w = src.shape
    out, s1, s2 = None, 0.0, 0.0
    for y0, y1, x0, x1 in _tiles(h, w, tile):
        r = src.region(y0, y1, x0, x1)
        if out is None:
            out = torch.empty(src.shape, dtype=r.dtype, device=r.device)
        out[:, :, y0:y1, x0:x1] = r
        if stats_for is not None:
            s1, s2 = _accumulate(r, stats_for.num_groups, s1, s2)
    if stats_for is None:
        return Stored(out)
    return Stored(out), _finish(s1, s2, c * h * w // stats_for.num_groups, stats_for.eps)


class _Overwritten(Source):
    """A stored map being overwritten band by band: rows above `row` are read from `carry`, their
    original values saved just before they were overwritten."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor, self.shape = tensor, tuple(tensor.shape)
        self.row, self.carry = 0, tensor[:, :, :0]

    def region(self, y0, y1, x0, x1):
        n = max(0, min(self.row, y1) - y0)  # leading rows that now live in `carry`
        if n == 0:
            return self.tensor[:, :, y0:y1, x0:x1]
        first = self.carry.shape[2] - (self.row - y0)
        held = self.carry[:, :, first:first + n, x0:x1]
        return torch.cat([held, self.tensor[:, :, y0 + n:y1, x0:x1]], dim=2)


def _check_block(block: nn.Module) -> None:
    if type(block).__name__ not in ("DownEncoderBlock2D", "UpDecoderBlock2D"):
        raise NotImplementedError(f"tiling supports diffusers' DownEncoderBlock2D / UpDecoderBlock2D; got "
                                  f"{type(block).__name__} (attention at high resolution is global: run untiled)")


def _check_resnet(resnet: nn.Module) -> None:
    ok = (isinstance(resnet.norm1, nn.GroupNorm) and isinstance(resnet.norm2, nn.GroupNorm)
          and resnet.upsample is None and resnet.downsample is None and resnet.time_emb_proj is None)
    if not ok:
        raise NotImplementedError("tiling supports diffusers' plain GroupNorm ResnetBlock2D; got "
                                  f"{type(resnet).__name__} "
                                  "with other norms, time embedding or resampling inside")


def _resnet(src: Source, resnet: nn.Module, tile: int) -> Stored:
    """A diffusers ResnetBlock2D (no time embedding): GroupNorm -> act -> conv1 -> GroupNorm -> act
    -> conv2, + shortcut. The hidden map is stored once, its statistics gathered while it is
    written; the output then overwrites it band by band, so the block holds two maps, not three,
    and computes every conv once."""
    _check_resnet(resnet)
    act = resnet.nonlinearity
    pre1 = GroupNormAct(resnet.norm1, *group_stats(src, resnet.norm1, tile), act)
    hidden, stats2 = materialize(Conv(src, resnet.conv1, pre=pre1), tile, stats_for=resnet.norm2)
    buf = _Overwritten(hidden.tensor)
    out = Conv(buf, resnet.conv2, pre=GroupNormAct(resnet.norm2, *stats2, act),
               skip=src, skip_conv=resnet.conv_shortcut, scale=resnet.output_scale_factor)
    halo = resnet.conv2.kernel_size[0] // 2
    b, c, h, w = out.shape
    band = buf.tensor.new_empty(b, c, min(tile, h), w)
    for y0 in range(0, h, tile):
        y1 = min(h, y0 + tile)
        for x0 in range(0, w, tile):
            band[:, :, :y1 - y0, x0:x0 + tile] = out.region(y0, y1, x0, min(w, x0 + tile))
        buf.carry = buf.tensor[:, :, max(0, y1 - halo):y1].clone()  # the next band's halo
        buf.tensor[:, :, y0:y1] = band[:, :, :y1 - y0]
        buf.row = y1
    return Stored(buf.tensor)


def _head(src: Source, norm: nn.GroupNorm, act: nn.Module, conv: nn.Conv2d, tile: int) -> Tensor:
    """conv_norm_out -> act -> conv_out, tile by tile."""
    if not isinstance(norm, nn.GroupNorm):
        raise NotImplementedError(f"tiling supports a GroupNorm output norm; got {type(norm).__name__}")
    return materialize(Conv(src, conv, pre=GroupNormAct(norm, *group_stats(src, norm, tile), act)), tile).tensor


def _tile_rule(tile: int, top_channels: int):
    """Tile side per map: `tile` at the top level's width; wider maps get smaller tiles of the same
    byte size, so temporaries stay bounded at every level (a 512-channel map at f4 would otherwise
    make each tile 4x larger than at the 128-channel top)."""
    if not isinstance(tile, int) or isinstance(tile, bool) or tile < 8:
        raise ValueError(f"tile must be an integer >= 8 pixels, got {tile!r}")
    return lambda channels: max(8, int(tile * math.sqrt(top_channels / max(channels, top_channels))))


@torch.no_grad()
def encode_tiled(encoder: nn.Module, x: Tensor, tile: int) -> Tensor:
    """diffusers `Encoder` forward in tiles of `tile` x `tile` feature-map pixels.

    x: (B, C, H, W) images -> (B, 2c, H/f, W/f) (before `quant_conv`), equal to `encoder(x)` to
    float rounding. H and W must be multiples of the downsampling factor f.
    """
    tile_for = _tile_rule(tile, encoder.conv_in.out_channels)
    src: Source = Conv(Stored(x), encoder.conv_in)
    for block in encoder.down_blocks:
        _check_block(block)
        for resnet in block.resnets:
            src = _resnet(src, resnet, tile_for(max(resnet.in_channels, resnet.out_channels)))
        for down in block.downsamplers or []:
            if down.norm is not None or not (down.use_conv and down.padding == 0):
                raise NotImplementedError("tiling supports diffusers' Downsample2D(use_conv=True, padding=0)")
            src = materialize(Conv(src, down.conv, mode="down"), tile_for(down.conv.out_channels))
    mid = encoder.mid_block(src.tensor)  # global attention on the small map
    return _head(Stored(mid), encoder.conv_norm_out, encoder.conv_act, encoder.conv_out,
                 tile_for(encoder.conv_norm_out.num_channels))


@torch.no_grad()
def decode_tiled(decoder: nn.Module, z: Tensor, tile: int) -> Tensor:
    """diffusers `Decoder` forward in tiles of `tile` x `tile` feature-map pixels.

    z: (B, c, h, w) latents (after `post_quant_conv`) -> (B, C, h*f, w*f) images, equal to
    `decoder(z)` to float rounding.
    """
    tile_for = _tile_rule(tile, decoder.conv_norm_out.num_channels)
    h = decoder.mid_block(decoder.conv_in(z), None)  # the low-resolution part runs whole
    src: Source = Stored(h)
    for block in decoder.up_blocks:
        _check_block(block)
        for resnet in block.resnets:
            src = _resnet(src, resnet, tile_for(max(resnet.in_channels, resnet.out_channels)))
        for up in block.upsamplers or []:
            if up.norm is not None or up.use_conv_transpose or not (up.use_conv and up.interpolate):
                raise NotImplementedError("tiling supports diffusers' Upsample2D(use_conv=True) with nearest "
                                          "interpolation")
            src = materialize(Conv(src, up.conv, mode="up"), tile_for(up.conv.in_channels))
    return _head(src, decoder.conv_norm_out, decoder.conv_act, decoder.conv_out, tile)


def vae_moments(vae: nn.Module, x: Tensor, tile: int | None = None) -> Tensor:
    """A diffusers AutoencoderKL's (or VQModel's) encoder + quant_conv: (B, C, H, W) -> (B, 2c, h, w)
    (c for a VQModel), tiled when `tile` is set."""
    h = encode_tiled(vae.encoder, x, tile) if tile else vae.encoder(x)
    return vae.quant_conv(h) if getattr(vae, "quant_conv", None) is not None else h


def vae_decode(vae: nn.Module, z: Tensor, tile: int | None = None) -> Tensor:
    """A diffusers AutoencoderKL's post_quant_conv + decoder: (B, c, h, w) -> (B, C, H, W), tiled
    when `tile` is set."""
    if getattr(vae, "post_quant_conv", None) is not None:
        z = vae.post_quant_conv(z)
    return decode_tiled(vae.decoder, z, tile) if tile else vae.decoder(z)
