"""SoundStream-style neural audio codec: causal SEANet encoder/decoder around the residual VQ of
`tokenizers_ae.quantizers`, with exact streaming inference."""

from audio_codec.model import SoundStream, build_soundstream
from audio_codec.seanet import (
    CausalConv1d,
    CausalConvTranspose1d,
    ResidualUnit,
    SEANetDecoder,
    SEANetEncoder,
    StreamingLSTM,
    fold_weight_norm_,
)
from audio_codec.streaming import StreamingDecoder, StreamingEncoder

__all__ = [
    "CausalConv1d",
    "CausalConvTranspose1d",
    "ResidualUnit",
    "SEANetDecoder",
    "SEANetEncoder",
    "SoundStream",
    "StreamingDecoder",
    "StreamingEncoder",
    "StreamingLSTM",
    "build_soundstream",
    "fold_weight_norm_",
]
