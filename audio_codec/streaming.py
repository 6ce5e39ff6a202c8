"""Streaming inference: encode audio as it arrives and decode codes as they arrive, with the same
codes and samples as encoding / decoding the whole signal at once.

Latency: the encoder emits frame n once samples [n * hop, (n + 1) * hop) have all arrived, and the
decoder turns frame n into exactly those hop samples without waiting for later frames. The
algorithmic latency of encode -> decode is therefore one frame, `hop_length` samples
(320 samples = 13.3 ms at 24 kHz), plus compute time. Stream with `model.fold_weight_norm()`:
small chunks make recomputing every weight norm per call a large share of the work, and only
plain weights get packed once for the small-chunk matmuls (`audio_codec.seanet.fast_linear`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from audio_codec.model import SoundStream
from audio_codec.seanet import StreamState


class StreamingEncoder:
    """Push audio chunks of any length; get the codes of every frame they complete.

    `push(samples (B, C, n)) -> codes (B, n_q, f)`, f = frames completed by this chunk (possibly 0);
    `flush() -> codes (B, n_q, 0 or 1)`: the last partial frame, zero-padded, then the stream
    restarts. Concatenated, the codes equal `model.encode(whole signal, n_quantizers)`.
    The model must be in eval mode (a training-mode quantizer would update its codebooks).
    """

    def __init__(self, model: SoundStream, n_quantizers: int | None = None) -> None:
        self.model = model
        self.n_quantizers = model.num_quantizers if n_quantizers is None else n_quantizers
        if not 1 <= self.n_quantizers <= model.num_quantizers:
            raise ValueError(f"n_quantizers must be in [1, {model.num_quantizers}], got {n_quantizers}")
        self.hop_length = model.hop_length
        self.latency_samples = model.hop_length
        """Algorithmic latency: a frame's codes exist once its last sample has arrived."""
        self.latency_seconds = model.hop_length / model.sample_rate
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next push starts a new signal."""
        self._state: StreamState = None
        self._pending = 0  # samples pushed since the last complete frame
        self._template: Tensor | None = None  # batch, channels, dtype and device of the stream

    @torch.inference_mode()
    def push(self, samples: Tensor) -> Tensor:
        """samples (B, C, n) -> codes (B, n_q, f) long for the frames completed so far."""
        if self.model.training:
            raise RuntimeError("StreamingEncoder needs model.eval(): in training mode the quantizer "
                               "updates its codebooks and picks random levels")
        z, self._state = self.model.encoder.step(samples, self._state)  # (B, D, f)
        self._pending = (self._pending + samples.shape[-1]) % self.hop_length
        self._template = samples[..., :0]
        return self.model.quantize(z, self.n_quantizers)  # (B, n_q, f)

    def flush(self) -> Tensor:
        """Codes (B, n_q, 1) of the last partial frame padded with zeros (as `SoundStream.encode`
        pads), or (B, n_q, 0) if the signal ended on a frame boundary; then resets."""
        template = self._template
        if template is None:  # nothing was pushed
            codes = torch.zeros(0, self.n_quantizers, 0, dtype=torch.long)
        elif self._pending:
            b, c, _ = template.shape
            codes = self.push(template.new_zeros(b, c, self.hop_length - self._pending))
        else:
            codes = torch.zeros(template.shape[0], self.n_quantizers, 0, dtype=torch.long, device=template.device)
        self.reset()
        return codes


class StreamingDecoder:
    """Push codes (B, n_q, f), any f >= 0; get their audio (B, C, f * hop_length) at once.

    Concatenated, the samples equal `model.decode(all codes)` to float rounding. There is nothing
    to flush: the decoder is causal, so frame n's samples are final when frame n arrives.
    """

    def __init__(self, model: SoundStream) -> None:
        self.model = model
        self.hop_length = model.hop_length
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next push starts a new signal."""
        self._state: StreamState = None

    @torch.inference_mode()
    def push(self, codes: Tensor) -> Tensor:
        """codes (B, n_q, f) long -> audio (B, C, f * hop_length)."""
        z = self.model.codes_to_latents(codes)  # (B, D, f)
        samples, self._state = self.model.decoder.step(z, self._state)  # (B, C, f * hop)
        return samples
