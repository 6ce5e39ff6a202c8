"""Depth-first, no_grad inference through a Wan 2.1 video VAE's encoder or decoder (`Pipeline`).

Used by `VideoVAE` for no_grad encode/decode without `chunk`, and by its streams. Measured on
diffusers' own loop (`aetk bench video`, Wan 2.1's widths, 256x256, 33 frames), its peak is the causal
cache (two frames per 3x3x3 conv: ~590 MiB in the decoder, ~350 in the encoder; the same in any exact
causal schedule) plus the activations of one chunk (4 frames at full resolution: the decoder's one
latent frame, the encoder's group), and, in decode, the output grown by torch.cat once per latent frame
then clamped into a copy. The output is the smaller part (25 MiB for this clip); the chunk's
activations are the larger. So `Pipeline` runs the network depth first: each stage (the layers between
two changes of frame rate) takes one frame (two before a stride-2 time conv) and hands its output on at
once, so a single frame of activations is alive at full resolution instead of four; each output frame
is written once into a preallocated tensor (clamped in place). In its residual blocks (`_resblock`)
tensors are channels last and convolved by oneDNN directly (F.conv3d's size rule sends one-frame,
thin-channel inputs to im2col, 5x slower with a 54 MiB buffer for a 32->64 conv at 128 px), the RMS
norm and SiLU take two passes instead of six, a full cache slot rolls in place, and spatial padding is
done inside the convolution. Outputs equal diffusers' untiled loop within 1e-5 (float rounding only:
the same operations, in another order). Training (autograd recording) keeps diffusers' own forward on
the whole clip in one graph.

Measured (`aetk bench video`, 256x256x33, 2 CPU threads, vs diffusers with enable_tiling() +
enable_slicing(), which does not tile 256 px frames): at Wan 2.1's width (base_dim 96) encode 42.5 s /
549 MiB vs 54.5 s / 1008 MiB, decode 72.4 s / 884 MiB vs 90.4 s / 1367 MiB; at base_dim 32 encode
5.8 s / 198 MiB vs 10.4 s / 351 MiB, decode 9.8 s / 320 MiB vs 18.9 s / 490 MiB. Max abs error against
diffusers untiled: 4e-6 (encode) and 9e-6 (decode, clamped output) at base_dim 96: inside 1e-5, but
with little margin. The cache bounds the memory gain (591 MiB of the decoder's 884 at base_dim 96,
351 of the encoder's 549; diffusers' path holds it too), so the ratio stays far from the ~4x smaller
activations per call.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import (
    CACHE_T,
    WanCausalConv3d,
    WanMidBlock,
    WanResample,
    WanResidualBlock,
    WanRMS_norm,
    WanUpBlock,
)
from torch import nn
from torch.nn import functional as F


def causal_cache(net: nn.Module) -> list:
    """An empty causal cache for `net`: one slot per causal convolution (what Wan's `clear_cache` makes)."""
    return [None] * sum(isinstance(m, WanCausalConv3d) for m in net.modules())


CHANNELS_LAST = torch.channels_last_3d
"""The streaming path's layout: oneDNN convolves channels-last input without reordering it into a blocked
copy (a 3x3x3 conv on one 256x256 frame: peak 8 MiB instead of 40-64, 25 ms instead of 38 on one CPU
thread), and the RMS norm over channels reduces over the contiguous dimension."""


def _causal_conv(conv: WanCausalConv3d, x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    """`conv(x, prev)` (WanCausalConv3d.forward: the frames `prev` before x, zeros before the clip), channels
    last, with the spatial zero padding done inside the convolution instead of by copying x into a padded tensor."""
    pt = conv._padding[4]
    if prev is not None and pt > 0:
        x = torch.cat([prev, x], dim=2)
        pt -= prev.shape[2]
    if pt > 0:
        x = F.pad(x, (0, 0, 0, 0, pt, 0))
    x = _layout(x)
    padding = (0, conv._padding[2], conv._padding[0])
    if _onednn(x):  # oneDNN directly: F.conv3d's size rule sends thin inputs (one frame, 3 channels) to im2col
        return torch.mkldnn_convolution(x, conv.weight, conv.bias, padding, conv.stride, conv.dilation, conv.groups)
    return F.conv3d(x, conv.weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups)


def _layout(x: torch.Tensor) -> torch.Tensor:
    """x channels last on a CPU (a no-op when it is already), as it is elsewhere."""
    return x.contiguous(memory_format=CHANNELS_LAST) if x.device.type == "cpu" else x


def _onednn(x: torch.Tensor) -> bool:
    """Whether x can go to oneDNN's convolution directly: float32 on a CPU with oneDNN enabled."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and hasattr(torch, "mkldnn_convolution"))


def _cached_conv(conv: WanCausalConv3d, x: torch.Tensor, cache: list, idx: list[int]) -> torch.Tensor:
    """Wan's causal-cache step around a conv (as in WanResidualBlock/WanEncoder3d/WanDecoder3d.forward): the
    conv sees the slot's frames before x, and the slot keeps the last CACHE_T frames. One frame at a time with
    a full slot (the streaming steady state), the slot's frames roll in place instead of being reallocated."""
    i = idx[0]
    idx[0] += 1
    prev = cache[i]
    if x.shape[2] == 1 and prev is not None and prev.shape[2] == CACHE_T:
        y = _causal_conv(conv, x, prev)  # (reads prev first)
        for t in range(CACHE_T - 1):
            prev[:, :, t].copy_(prev[:, :, t + 1])
        prev[:, :, -1].copy_(x[:, :, 0])
        return y
    if x.shape[2] < CACHE_T and prev is not None:
        cache[i] = torch.cat([prev[:, :, -1:], x], dim=2)
    else:
        cache[i] = x[:, :, -CACHE_T:].clone()
    return _causal_conv(conv, x, prev)


def _norm_silu(norm: WanRMS_norm, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """act(norm(x)): Wan's RMS norm over channels (F.normalize * sqrt(C) * gamma + bias) then SiLU, in two
    passes instead of six (the channel norm by square-sum, ~3x faster on CPU than linalg.vector_norm over a
    strided dim); other activations and half precision go through diffusers' modules."""
    if not isinstance(act, nn.SiLU) or x.dtype not in (torch.float32, torch.float64) or not norm.channel_first:
        return act(norm(x))
    denom = x.square().sum(1, keepdim=True).sqrt_().clamp_min_(1e-12)  # F.normalize's eps
    y = torch.mul(x, norm.gamma * norm.scale).div_(denom)
    if isinstance(norm.bias, torch.Tensor):
        y += norm.bias
    return F.silu(y, inplace=True)


def _resblock(m: WanResidualBlock, x: torch.Tensor, cache: list, idx: list[int]) -> torch.Tensor:
    """WanResidualBlock.forward with the causal cache, computed with fewer temporaries (inference)."""
    if m.training and m.dropout.p > 0:
        return m(x, feat_cache=cache, feat_idx=idx)
    h = _causal_conv(m.conv_shortcut, x, None) if isinstance(m.conv_shortcut, WanCausalConv3d) else x
    y = _cached_conv(m.conv1, _norm_silu(m.norm1, m.nonlinearity, x), cache, idx)
    y = _norm_silu(m.norm2, m.nonlinearity, y)  # (frees conv1's output before conv2 runs)
    y = _cached_conv(m.conv2, y, cache, idx)
    return y.add_(h)


def _layer(m: nn.Module, x: torch.Tensor, cache: list, idx: list[int]) -> torch.Tensor:
    """One layer of a Wan encoder or decoder with the causal cache: residual blocks (also inside mid and up
    blocks) through `_resblock`, everything else (attention, resampling) through diffusers' own forward."""
    if isinstance(m, WanResidualBlock):
        return _resblock(m, x, cache, idx)
    if isinstance(m, WanMidBlock):
        x = _resblock(m.resnets[0], x, cache, idx)
        for attn, res in zip(m.attentions, m.resnets[1:]):
            x = _resblock(res, attn(x) if attn is not None else x, cache, idx)
        return x
    if isinstance(m, WanUpBlock):
        for res in m.resnets:
            x = _resblock(res, x, cache, idx)
        return x if m.upsamplers is None else m.upsamplers[0](x, feat_cache=cache, feat_idx=idx)
    return m(x, feat_cache=cache, feat_idx=idx)


Stage = Callable[[torch.Tensor, list, list], torch.Tensor]
"""stage(x, cache, feat_idx) -> y: a run of layers of a Wan 2.1 encoder or decoder."""


def _encoder_stages(enc: nn.Module) -> list[tuple[Stage, int]]:
    """WanEncoder3d.forward cut before each temporally strided downsampling, with the frames each stage
    takes per call after its first: 1 above the first strided layer, 2 from it on (its time conv has stride 2
    and carries one frame)."""
    layers = list(enc.down_blocks)
    cuts = [i for i, m in enumerate(layers) if isinstance(m, WanResample) and m.mode == "downsample3d"]
    bounds = [0, *cuts, len(layers)]

    def stage(x, cache, idx, a, b):
        if a == 0:
            x = _cached_conv(enc.conv_in, x, cache, idx)
        for m in layers[a:b]:
            x = _layer(m, x, cache, idx)
        if b == len(layers):
            x = _layer(enc.mid_block, x, cache, idx)
            x = _cached_conv(enc.conv_out, _norm_silu(enc.norm_out, enc.nonlinearity, x), cache, idx)
        return x

    return [(partial(stage, a=a, b=b), 1 if a == 0 else 2) for a, b in zip(bounds[:-1], bounds[1:])]


def _decoder_stages(dec: nn.Module) -> list[tuple[Stage, int]]:
    """WanDecoder3d.forward cut after each up block (where the frame count and size grow), one frame per call."""
    ups = list(dec.up_blocks)

    def stage(x, cache, idx, k):
        if k == 0:
            x = _cached_conv(dec.conv_in, x, cache, idx)
            x = _layer(dec.mid_block, x, cache, idx)
        x = _layer(ups[k], x, cache, idx)  # (first_chunk matters only to Wan 2.2's residual up blocks)
        if k == len(ups) - 1:
            x = _cached_conv(dec.conv_out, _norm_silu(dec.norm_out, dec.nonlinearity, x), cache, idx)
        return x

    return [(partial(stage, k=k), 1) for k in range(len(ups))]


class Pipeline:
    """A Wan encoder or decoder run depth first, stage by stage, with its causal cache: each stage runs
    as soon as it holds its frames (its first call: the first frame alone, as Wan's loops do) and hands
    its output on at once, so at each resolution only a frame or two of activations is alive instead of a
    whole chunk. The cache of each causal conv is the same as in Wan's own loop, so the output equals it
    within float rounding."""

    def __init__(self, stages: list[tuple[Stage, int]], net: nn.Module) -> None:
        self.stages = stages
        self.cache = causal_cache(net)
        self.starts: list[int | None] = [0] + [None] * len(stages)  # each stage's first cache slot
        self.calls = [0] * len(stages)
        self.pending: list[torch.Tensor | None] = [None] * len(stages)

    def push(self, x: torch.Tensor, i: int = 0):
        """Yield the last stage's outputs that the frames x (B, C, n, H, W) complete."""
        if i == len(self.stages):
            yield x
            return
        stage, step = self.stages[i]
        if self.pending[i] is not None:
            x = torch.cat([self.pending[i], x], dim=2)
            self.pending[i] = None
        pos = 0
        while x.shape[2] - pos >= (n := step if self.calls[i] else 1):
            idx = [self.starts[i]]
            y = stage(_layout(x[:, :, pos:pos + n]), self.cache, idx)
            self.starts[i + 1] = idx[0]
            self.calls[i] += 1
            pos += n
            yield from self.push(y, i + 1)
        if pos < x.shape[2]:
            self.pending[i] = x[:, :, pos:].clone()

    @classmethod
    def encoder(cls, enc: nn.Module) -> Pipeline:
        """A WanEncoder3d (of a non-residual, Wan 2.1 VAE) run depth first."""
        return cls(_encoder_stages(enc), enc)

    @classmethod
    def decoder(cls, dec: nn.Module) -> Pipeline:
        """A WanDecoder3d (of a non-residual, Wan 2.1 VAE) run depth first."""
        return cls(_decoder_stages(dec), dec)

