"""Causal SEANet encoder and decoder (SoundStream, Zeghidour et al. 2021; EnCodec, Défossez et al.
2022), with exact streaming.

Every layer has two entry points:

- `forward(x)`: offline, the whole signal at once (training, file encoding);
- `step(x, state) -> (y, state)`: incremental. `state` is whatever the layer needs to carry
  between chunks (None starts a stream); it lives in the caller's hands, never in the module, so
  one module serves any number of streams and training is unaffected.

Feeding a signal through `step` in chunks gives the same output as `forward` on the whole signal
(to float rounding), because every layer is causal and carries exactly what it needs:

- `CausalConv1d`: the unconsumed input, i.e. the left context (`receptive_field - stride`
  samples) plus any samples that do not complete an output yet;
- `CausalConvTranspose1d`: the overlapping output tail (`kernel - stride` samples), not yet final;
- `StreamingLSTM`: the LSTM's (h, c);
- `ResidualUnit`, `StreamingSequential`, encoder, decoder: a tuple / list of their children's states.

Offline padding is zeros on the left (not EnCodec's reflection, which reads future samples), so
the start of an offline signal is a stream that starts with silence.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

StreamState = Any
"""Opaque per-module streaming state; None starts a new stream."""


def stream_step(module: nn.Module, x: Tensor, state: StreamState) -> tuple[Tensor, StreamState]:
    """`module.step(x, state)` for streamable modules; stateless (pointwise) modules just run."""
    if hasattr(module, "step"):
        return module.step(x, state)
    return module(x), None


def fold_weight_norm_(module: nn.Module) -> nn.Module:
    """Replace every weight-norm parametrization in `module` by the plain weight it computes (in
    place; returns `module`). Outputs are unchanged; inference skips recomputing g * v / ||v||."""
    for m in list(module.modules()):
        if parametrize.is_parametrized(m, "weight"):
            # copy.deepcopy shares a parametrized module's generated class with the original, and
            # removing a parametrization deletes the property from that class (breaking the
            # original): give this module a class of its own first.
            cls = type(m)
            m.__class__ = type(cls.__name__, cls.__bases__, dict(vars(cls)))
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return module


# --- small-input kernels -------------------------------------------------------------------
# A streaming chunk gives each layer a few frames. For a layer whose weight is larger than its
# input, mkldnn's conv and LSTM spend most of each call re-laying-out the weight, small transposed
# convs fall to a slow reference kernel, and MKL's GEMM runs a few rows at a fraction of its peak.
# Instead: one matmul over the unfolded input, with the weight pre-packed once for oneDNN when it
# is a plain inference weight (2-2.5x MKL's fp32 speed at 1-24 rows here, 2-5x autocast's bf16,
# which re-casts the weight per call). Only `step` uses these; `forward` (training, whole files)
# keeps the library kernels.

_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""module -> {(name, dtype): ((data_ptr, version, shape), packed weight)}; outside the module so
copies and state dicts never see it."""


@functools.cache
def _onednn_packing_available() -> bool:
    """The packed-linear ops are torch's own (inductor's CPU path), not public API: if a torch build
    lacks them, `fast_linear` falls back to `F.linear`."""
    try:
        return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
                and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def _onednn_bf16_available() -> bool:
    """oneDNN's bf16 linear needs AVX512-BW/VL/DQ or AVX-NE-CONVERT; on an AVX2-only CPU its packing raises,
    so bf16 there goes through `F.linear` (which torch emulates)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _packed_weight(owner: nn.Module, name: str, weight: Tensor, dtype: torch.dtype) -> Tensor | None:
    """oneDNN's packed copy of `weight` (N, K) in `dtype` (float32 or bfloat16), cached per
    (owner, name, dtype) until the weight changes, or None where packing does not apply: autograd,
    weights recomputed per call (weight norm: fold it first) or made under inference_mode, non-CPU
    tensors, other dtypes."""
    if (torch.is_grad_enabled() or weight.device.type != "cpu" or weight.dtype != torch.float32
            or dtype not in (torch.float32, torch.bfloat16) or not _onednn_packing_available()
            or (dtype == torch.bfloat16 and not _onednn_bf16_available())
            or weight.is_inference()  # made under inference_mode: no version counter to see edits by
            or any(parametrize.is_parametrized(m) for m in owner.modules())):
        return None
    key = (weight.data_ptr(), weight._version, tuple(weight.shape))
    cache = _PACKED.setdefault(owner, {})
    hit = cache.get((name, dtype))
    if hit is None or hit[0] != key:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.to(dtype).contiguous())
        hit = cache[(name, dtype)] = (key, packed)
    return hit[1]


def fast_linear(owner: nn.Module, name: str, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`F.linear(x, weight, bias)` (under autocast, in its dtype) through a packed weight where
    `_packed_weight` applies. Under bf16 autocast the result is bit-identical to `F.linear`'s."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    packed = _packed_weight(owner, name, weight, dtype)
    if packed is None:
        return F.linear(x, weight, bias)
    bias = None if bias is None else bias.to(dtype)
    return torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, bias, "none", [], "")


def conv1d_as_matmul(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, dilation: int,
                     owner: nn.Module | None = None) -> Tensor:
    """`F.conv1d(x, weight, bias, stride, dilation=dilation)` (no padding) as one matmul over the
    unfolded input: x (B, C_in, L), weight (C_out, C_in, K) -> (B, C_out, n_out). With `owner`,
    the weight is packed once (`fast_linear`)."""
    c_out, c_in, k = weight.shape
    cols = x.unfold(-1, (k - 1) * dilation + 1, stride)[..., ::dilation]  # (B, C_in, n_out, K)
    cols = cols.permute(0, 2, 1, 3).reshape(x.shape[0], -1, c_in * k)  # (B, n_out, C_in K)
    w = weight.reshape(c_out, c_in * k)
    y = F.linear(cols, w, bias) if owner is None else fast_linear(owner, "conv", cols, w, bias)
    return y.transpose(1, 2)  # (B, C_out, n_out)


def conv_transpose1d_as_matmul(x: Tensor, weight: Tensor, stride: int, owner: nn.Module | None = None) -> Tensor:
    """`F.conv_transpose1d(x, weight, None, stride)` for kernel = m * stride, as one matmul and m
    shifted adds: x (B, C_in, f), weight (C_in, C_out, K) -> (B, C_out, (f + m - 1) * stride)."""
    c_in, c_out, k = weight.shape
    b, _, f = x.shape
    m = k // stride
    w = weight.reshape(c_in, c_out * k).t()  # (C_out K, C_in)
    taps = F.linear(x.transpose(1, 2), w) if owner is None else fast_linear(owner, "conv_t", x.transpose(1, 2), w, None)
    taps = taps.view(b, f, c_out, m, stride)  # (B, f, C_out, m, stride)
    y = taps.new_zeros(b, f + m - 1, c_out, stride)  # output frames
    for j in range(m):  # input frame t writes its j-th stride of samples into output frame t + j
        y[:, j : j + f] += taps[:, :, :, j]
    return y.permute(0, 2, 1, 3).reshape(b, c_out, (f + m - 1) * stride)


def lstm_unrolled(lstm: nn.LSTM, x: Tensor, state: tuple[Tensor, Tensor] | None
                  ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """`lstm(x, state)` (batch_first, no projection) one step at a time: the input projection of
    every step is one matmul, then each step is one (B, H) x (H, 4H) matmul. x (B, T, C) ->
    (B, T, H), (h, c) each (num_layers, B, H). Gates and cell state stay in float32 under autocast."""
    b, h_dim = x.shape[0], lstm.hidden_size
    if state is None:
        zeros = x.new_zeros(lstm.num_layers, b, h_dim, dtype=torch.float32)
        state = (zeros, zeros)
    hs, cs = [], []
    for layer in range(lstm.num_layers):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
        bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
        gates_in = fast_linear(lstm, f"ih{layer}", x, w_ih, bias)  # (B, T, 4H)
        h, c = state[0][layer].float(), state[1][layer].float()  # (B, H)
        out = []
        for t in range(x.shape[1]):  # few ops per step: at B = 1 each costs about what it computes
            gates = fast_linear(lstm, f"hh{layer}", h, w_hh, None).float().add_(gates_in[:, t])  # (B, 4H)
            i, f, _, o = gates.sigmoid().chunk(4, dim=-1)  # (B, H) each
            c = torch.addcmul(f * c, i, gates[:, 2 * h_dim : 3 * h_dim].tanh())
            h = o * c.tanh()
            out.append(h)
        x = torch.stack(out, dim=1)  # (B, T, H)
        hs.append(h)
        cs.append(c)
    return x, (torch.stack(hs), torch.stack(cs))


# --- layers -----------------------------------------------------------------------------------


def _init_signal_preserving_(conv: nn.Conv1d | nn.ConvTranspose1d, fan_in: int) -> None:
    """Weights N(0, 1 / fan_in), biases zero, so a conv keeps its input's scale.

    PyTorch's default (kaiming_uniform with a=sqrt(5), std 1 / sqrt(3 fan_in), and biases of the
    same order) shrinks the signal ~1.7x per conv while each layer adds a bias: over the ~15 convs
    of a SEANet encoder a 0.1-rms waveform reaches the latent at ~5e-4 of its std, so at
    initialisation every clip gives the same latent and k-means / EMA codebooks are built on noise.
    With this init the latent varies across clips by ~90% of its std (tests/audio_codec/test_seanet.py)."""
    nn.init.normal_(conv.weight, std=fan_in**-0.5)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class _ELUFunction(torch.autograd.Function):
    """ELU that saves only its output: d elu / dx = 1 for y > 0, y + 1 otherwise = min(y, 0) + 1."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = _elu(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return grad * (y.clamp(max=0) + 1)


def _elu(x: Tensor) -> Tensor:
    # e^x - 1 >= x for every x (equality at 0) and exp(min(x, 0)) - 1 = 0 < x for x > 0, so the
    # maximum is exactly ELU's two branches.
    return torch.maximum(x, torch.exp(x.clamp(max=0)).sub_(1))


class ELU(nn.Module):
    """ELU (alpha = 1) as max(x, exp(min(x, 0)) - 1): the same values as `nn.ELU` (to 1e-7,
    exp - 1 against expm1), 5x faster on CPU, where torch's ELU kernel (expm1) is not vectorised;
    ELUs at the sample rate were a quarter of the codec's inference time. Elementwise, any shape."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _ELUFunction.apply(x)
        return _elu(x)


class CausalConv1d(nn.Module):
    """Weight-normalised Conv1d that only looks at the past: (B, C_in, T) -> (B, C_out, ceil(T / stride)).

    Offline, the input gets `receptive_field - stride` zeros on the left (EnCodec's causal
    padding) and enough zeros on the right to complete the last stride, so output n depends only
    on input samples < (n + 1) * stride. Streaming gives the same outputs once the total input
    length is a multiple of `stride` (chunks may have any length; incomplete strides wait in the state).
    """

    def __init__(self, *, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.receptive_field = (kernel_size - 1) * dilation + 1
        self.left_pad = self.receptive_field - stride
        if self.left_pad < 0:
            raise ValueError(f"the receptive field ({self.receptive_field}) must cover the stride ({stride})")
        conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation)
        _init_signal_preserving_(conv, fan_in=in_channels * kernel_size)
        self.conv = weight_norm(conv)

    def forward(self, x: Tensor) -> Tensor:
        extra = -x.shape[-1] % self.stride  # right zeros completing the last stride
        return self.conv(F.pad(x, (self.left_pad, extra)))  # (B, C_out, ceil(T / stride))

    def step(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """x (B, C_in, n) -> every output the samples so far complete; state: unconsumed input."""
        if state is None:
            state = x.new_zeros(x.shape[0], x.shape[1], self.left_pad)  # the offline left padding
        buf = torch.cat([state, x], dim=-1)  # (B, C_in, L)
        n_out = max(0, (buf.shape[-1] - self.receptive_field) // self.stride + 1)
        if n_out == 0:
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0), buf
        used = (n_out - 1) * self.stride + self.receptive_field
        if n_out < self.conv.out_channels:  # the weight outweighs the input: see conv1d_as_matmul
            y = conv1d_as_matmul(buf[..., :used], self.conv.weight, self.conv.bias, self.stride,
                                 self.conv.dilation[0], owner=self)
        else:
            y = self.conv(buf[..., :used])  # (B, C_out, n_out)
        return y, buf[..., n_out * self.stride:]


class CausalConvTranspose1d(nn.Module):
    """Weight-normalised ConvTranspose1d, (B, C_in, F) -> (B, C_out, F * stride), trimming the
    right `kernel - stride` samples (EnCodec causal, trim_right_ratio=1): output sample t depends
    only on input frames <= t // stride.

    Streaming: those trimmed samples are the next chunk's first samples minus the next frames'
    contributions, so they are carried as state and added to the next chunk's output.
    """

    def __init__(self, *, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        if kernel_size < stride:
            raise ValueError(f"kernel_size ({kernel_size}) must be >= stride ({stride})")
        self.stride, self.trim = stride, kernel_size - stride
        conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride)
        # Each output sample sums kernel / stride taps of every input channel.
        _init_signal_preserving_(conv, fan_in=max(1, in_channels * kernel_size // stride))
        self.conv = weight_norm(conv)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)  # (B, C_out, (F - 1) * stride + kernel)
        return y[..., : y.shape[-1] - self.trim]  # (B, C_out, F * stride)

    def step(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """x (B, C_in, f) -> (B, C_out, f * stride); state: the partial tail (B, C_out, kernel - stride)."""
        if x.shape[-1] == 0:
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0), state
        # No bias here: the tail overlaps the next chunk, and the bias belongs to each sample once.
        if self.trim % self.stride == 0 and x.shape[-1] < self.conv.out_channels:  # weight-heavy: one matmul
            # (B, C_out, f * stride + trim)
            y = conv_transpose1d_as_matmul(x, self.conv.weight, self.stride, owner=self)
        else:
            y = F.conv_transpose1d(x, self.conv.weight, None, self.stride)
        if state is not None:
            y = torch.cat([y[..., : self.trim] + state, y[..., self.trim:]], dim=-1)
        n_out = x.shape[-1] * self.stride
        out = y[..., :n_out] + self.conv.bias[:, None]  # (B, C_out, f * stride)
        return out, y[..., n_out:]


class StreamingLSTM(nn.Module):
    """EnCodec's SLSTM: a `num_layers` LSTM over time with a skip connection, (B, C, T) -> (B, C, T).

    Streaming state: the LSTM's (h, c), each (num_layers, B, C). Chunks shorter than
    `unrolled_below` frames run `lstm_unrolled` (mkldnn's LSTM re-lays-out its weights per call,
    ~4 ms at 640 wide, about 60 unrolled steps' worth).
    """

    unrolled_below: int = 48

    def __init__(self, *, dim: int, num_layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.lstm(x.transpose(1, 2))  # (B, T, C)
        return x + y.transpose(1, 2)  # (B, C, T)

    def step(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        if x.shape[-1] == 0:
            return x, state
        if x.shape[-1] < self.unrolled_below and not torch.is_grad_enabled():
            y, state = lstm_unrolled(self.lstm, x.transpose(1, 2), state)
        else:
            y, state = self.lstm(x.transpose(1, 2), state)  # (B, T, C), ((L, B, C), (L, B, C))
        return x + y.transpose(1, 2).to(x.dtype), state


class StreamingSequential(nn.Sequential):
    """nn.Sequential whose `step` threads each child's streaming state (a list, one per child)."""

    def step(self, x: Tensor, state: list[StreamState] | None) -> tuple[Tensor, list[StreamState]]:
        state = state if state is not None else [None] * len(self)
        new_state = []
        for module, s in zip(self, state):
            x, s = stream_step(module, x, s)
            new_state.append(s)
        return x, new_state


class ResidualUnit(nn.Module):
    """x + block(x), block = ELU -> conv(k, dilation) to dim // compress -> ELU -> conv(1) back to
    dim; the skip is a 1x1 conv (EnCodec's default) or, with `true_skip`, the identity.
    (B, dim, T) -> (B, dim, T)."""

    def __init__(self, *, dim: int, kernel_size: int = 3, dilation: int = 1, compress: int = 2,
                 true_skip: bool = False) -> None:
        super().__init__()
        hidden = max(1, dim // compress)  # Demucs v3 / EnCodec bottleneck in the residual branch
        self.block = StreamingSequential(
            ELU(),
            CausalConv1d(in_channels=dim, out_channels=hidden, kernel_size=kernel_size, dilation=dilation),
            ELU(),
            CausalConv1d(in_channels=hidden, out_channels=dim, kernel_size=1),
        )
        self.shortcut = nn.Identity() if true_skip else CausalConv1d(in_channels=dim, out_channels=dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.block(x)

    def step(self, x: Tensor, state: tuple | None) -> tuple[Tensor, tuple]:
        block_state, skip_state = state if state is not None else (None, None)
        y, block_state = self.block.step(x, block_state)
        skip, skip_state = stream_step(self.shortcut, x, skip_state)
        return skip + y, (block_state, skip_state)


# --- encoder and decoder ----------------------------------------------------------------------


def _stage_channels(n_filters: int, n_stages: int, stage_channels: Sequence[int] | None) -> list[int]:
    """Widths from the sample-rate stage to the bottleneck: len(ratios) + 1 entries."""
    if stage_channels is None:
        return [n_filters * 2**i for i in range(n_stages + 1)]
    widths = [int(c) for c in stage_channels]
    if len(widths) != n_stages + 1 or min(widths) < 1:
        raise ValueError(f"stage_channels needs len(ratios) + 1 = {n_stages + 1} positive widths "
                         f"(sample-rate stage first, bottleneck last), got {list(stage_channels)}")
    return widths


def _residual_units(dim: int, *, n: int, kernel_size: int, dilation_base: int, compress: int,
                    true_skip: bool) -> list[nn.Module]:
    return [ResidualUnit(dim=dim, kernel_size=kernel_size, dilation=dilation_base**j, compress=compress,
                         true_skip=true_skip) for j in range(n)]


class _SEANet(nn.Module):
    """What the encoder and decoder share: `layers`, `hop_length`, `forward`, `step`."""

    layers: StreamingSequential

    def __init__(self, *, channels: int, dimension: int, ratios: Sequence[int], n_filters: int,
                 stage_channels: Sequence[int] | None) -> None:
        super().__init__()
        self.channels, self.dimension = channels, dimension
        self.ratios = tuple(int(r) for r in ratios)
        self.hop_length = math.prod(self.ratios)
        self.stage_channels = _stage_channels(n_filters, len(self.ratios), stage_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

    def step(self, x: Tensor, state: list[StreamState] | None) -> tuple[Tensor, list[StreamState]]:
        """One chunk through every layer; `state` from the previous call (None starts a stream)."""
        return self.layers.step(x, state)


class SEANetEncoder(_SEANet):
    """Causal SEANet encoder: audio (B, channels, T) in [-1, 1] -> latents (B, dimension, ceil(T / hop_length)).

    conv(kernel_size) -> per stage [residual units -> ELU -> strided conv (kernel 2r, stride r)]
    -> LSTM (optional) -> ELU -> conv(last_kernel_size). Frame n depends only on samples
    < (n + 1) * hop_length.

    Args:
        channels: audio channels.
        dimension: D, latent channels (the quantizer's dim).
        ratios: upsampling ratios in decoder order; the encoder downsamples by them in reverse
            (EnCodec's convention: (8, 5, 4, 2) downsamples by 2, 4, 5, 8).
        n_filters: width of the sample-rate stage; stage i has n_filters * 2**i channels.
        stage_channels: explicit widths, len(ratios) + 1 of them from the sample-rate stage to the
            bottleneck, overriding n_filters. Compute sits in the high-rate (first) stages and
            parameters in the low-rate (last) ones, so this trades one for the other.
        n_residual_layers: residual units per stage, with dilations dilation_base**j.
        kernel_size, last_kernel_size, residual_kernel_size: of the first, last and residual convs.
        dilation_base: 2 (EnCodec) or 3 (SoundStream's 1, 3, 9 with n_residual_layers=3).
        compress: the residual branch runs at dim // compress channels.
        true_skip: identity skips in the residual units instead of 1x1 convs.
        lstm_layers: LSTM layers at the bottleneck (0 disables it).

    Streaming (`step`): chunks of any length; each call returns the frames completed so far
    (a chunk of hop_length * k samples after whole frames returns exactly k frames). Offline
    equals streaming for signals whose length is a multiple of hop_length (pad with zeros
    otherwise, as `SoundStream` does).
    """

    def __init__(self, *, channels: int = 1, dimension: int = 128, ratios: Sequence[int] = (8, 5, 4, 2),
                 n_filters: int = 32, stage_channels: Sequence[int] | None = None, n_residual_layers: int = 1,
                 kernel_size: int = 7, last_kernel_size: int = 7, residual_kernel_size: int = 3,
                 dilation_base: int = 2, compress: int = 2, true_skip: bool = False, lstm_layers: int = 2) -> None:
        super().__init__(channels=channels, dimension=dimension, ratios=ratios, n_filters=n_filters,
                         stage_channels=stage_channels)
        widths = self.stage_channels
        layers: list[nn.Module] = [CausalConv1d(in_channels=channels, out_channels=widths[0], kernel_size=kernel_size)]
        for i, ratio in enumerate(reversed(self.ratios)):
            layers += _residual_units(widths[i], n=n_residual_layers, kernel_size=residual_kernel_size,
                                      dilation_base=dilation_base, compress=compress, true_skip=true_skip)
            layers += [ELU(), CausalConv1d(in_channels=widths[i], out_channels=widths[i + 1],
                                       kernel_size=2 * ratio, stride=ratio)]
        if lstm_layers:
            layers.append(StreamingLSTM(dim=widths[-1], num_layers=lstm_layers))
        layers += [ELU(), CausalConv1d(in_channels=widths[-1], out_channels=dimension, kernel_size=last_kernel_size)]
        self.layers = StreamingSequential(*layers)


class SEANetDecoder(_SEANet):
    """Causal SEANet decoder, the encoder's mirror: latents (B, dimension, F) -> audio (B, channels, F * hop_length).

    conv(kernel_size) -> LSTM (optional) -> per stage [ELU -> transposed conv (kernel 2r,
    stride r) -> residual units] -> ELU -> conv(last_kernel_size) (`output_conv`, no final
    activation, as EnCodec). Output sample t depends only on frames <= t // hop_length.

    Args: as `SEANetEncoder`; `ratios` are the upsampling ratios in order, and `stage_channels`
    is the same list as the encoder's (sample-rate stage first), used from the bottleneck up.

    Streaming (`step`): chunks of any number of frames; f frames give exactly f * hop_length samples.
    """

    def __init__(self, *, channels: int = 1, dimension: int = 128, ratios: Sequence[int] = (8, 5, 4, 2),
                 n_filters: int = 32, stage_channels: Sequence[int] | None = None, n_residual_layers: int = 1,
                 kernel_size: int = 7, last_kernel_size: int = 7, residual_kernel_size: int = 3,
                 dilation_base: int = 2, compress: int = 2, true_skip: bool = False, lstm_layers: int = 2) -> None:
        super().__init__(channels=channels, dimension=dimension, ratios=ratios, n_filters=n_filters,
                         stage_channels=stage_channels)
        widths = self.stage_channels[::-1]  # bottleneck first
        layers: list[nn.Module] = [CausalConv1d(in_channels=dimension, out_channels=widths[0], kernel_size=kernel_size)]
        if lstm_layers:
            layers.append(StreamingLSTM(dim=widths[0], num_layers=lstm_layers))
        for i, ratio in enumerate(self.ratios):
            layers += [ELU(), CausalConvTranspose1d(in_channels=widths[i], out_channels=widths[i + 1],
                                                kernel_size=2 * ratio, stride=ratio)]
            layers += _residual_units(widths[i + 1], n=n_residual_layers, kernel_size=residual_kernel_size,
                                      dilation_base=dilation_base, compress=compress, true_skip=true_skip)
        layers += [ELU(), CausalConv1d(in_channels=widths[-1], out_channels=channels, kernel_size=last_kernel_size)]
        self.layers = StreamingSequential(*layers)

    @property
    def output_conv(self) -> CausalConv1d:
        """The final conv (the adaptive GAN weight differentiates through its weight)."""
        return self.layers[-1]
