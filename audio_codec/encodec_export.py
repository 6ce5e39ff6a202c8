"""aetk's SoundStream as a transformers `EncodecModel`: the same SEANet (EnCodec's own layout, with
`pad_mode="constant"`, i.e. our causal zero padding) and the same residual VQ, so
`EncodecModel.from_pretrained(dir)` decodes aetk codes and encodes audio to aetk codes.

A codec maps exactly when its architecture is one EnCodec can express:

- widths doubling at every stage (`stage_channels` None or n_filters * 2**i);
- an LSTM at the bottleneck (`lstm_layers` >= 1);
- plain Euclidean codebooks in the latent dimension (no `cosine`, no `codebook_dim`).

Anything else is a ValueError naming what differs (the native export still works). The parameter
names already match EnCodec's (`encoder.layers.{i}.conv.parametrizations.weight.original0` ...),
so the state dict carries over key for key; only the codebooks move to EnCodec's `embed` buffers.

What differs, and by how much:
- EnCodec's ELU is torch's (expm1); aetk's `ELU` uses exp - 1: outputs agree to ~1e-6.
- A signal whose length is not a multiple of the hop: aetk pads it with zeros up front, EnCodec
  pads each conv's input, so the last (partial) frame's codes can differ; whole frames match.
- Near-ties in the nearest-code search can round differently (EnCodec expands the distance with
  ||x||^2); tests check equal codes on real inputs.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from audio_codec.model import SoundStream
from audio_codec.seanet import CausalConv1d, ResidualUnit, StreamingLSTM
from tokenizers_ae.pretrained import check_finite, prepare_dir


def encodec_config(model: SoundStream):
    """The `transformers.EncodecConfig` of `model`'s architecture; ValueError naming each part
    EnCodec cannot express."""
    from transformers import EncodecConfig  # transformers: only this export needs it

    enc = model.encoder
    widths = list(enc.stage_channels)
    problems = []
    doubling = [widths[0] * 2**i for i in range(len(widths))]
    if widths != doubling:
        problems.append(f"EncodecModel doubles the width at every stage ({doubling}); this codec has "
                        f"stage_channels {widths}")
    lstms = [m for m in enc.layers if isinstance(m, StreamingLSTM)]
    if not lstms:
        problems.append("EncodecModel always has a bottleneck LSTM; this codec has lstm_layers 0")
    vq = model.quantizer.layers[0]
    if vq.cosine or vq.codebook_dim != vq.dim:
        problems.append("EncodecModel looks codes up by Euclidean distance in the latent dimension; this codec "
                        "uses " + ("cosine lookup" if vq.cosine else f"codebook_dim {vq.codebook_dim}"))
    if problems:
        raise ValueError("cannot export as EncodecModel: " + "; ".join(problems) + " (the native export "
                         "holds any architecture)")

    units = [m for m in enc.layers if isinstance(m, ResidualUnit)]
    n_res = len(units) // len(enc.ratios)
    first_conv = units[0].block[1].conv if units else None
    convs = [m for m in enc.layers if isinstance(m, CausalConv1d)]
    bits = math.ceil(math.log2(model.codebook_size))
    hop = model.hop_length
    frame_rate = math.ceil(model.sample_rate / hop)  # EnCodec's rounding
    # Every level count as a target bandwidth (EncodecModel.encode accepts only these), in kbps.
    bandwidths = [n * bits * frame_rate / 1000 for n in range(1, model.num_quantizers + 1)]
    config = EncodecConfig(
        target_bandwidths=bandwidths, sampling_rate=model.sample_rate, audio_channels=enc.channels,
        normalize=False, chunk_length_s=None, overlap=None, hidden_size=enc.dimension, num_filters=widths[0],
        num_residual_layers=n_res, upsampling_ratios=list(enc.ratios), norm_type="weight_norm",
        kernel_size=convs[0].conv.kernel_size[0], last_kernel_size=convs[-1].conv.kernel_size[0],
        residual_kernel_size=first_conv.kernel_size[0] if units else 3,
        dilation_growth_rate=units[1].block[1].conv.dilation[0] if n_res > 1 else 2,
        use_causal_conv=True, pad_mode="constant",
        compress=widths[0] // first_conv.out_channels if units else 2,
        num_lstm_layers=lstms[0].lstm.num_layers, trim_right_ratio=1.0, codebook_size=model.codebook_size,
        codebook_dim=enc.dimension, use_conv_shortcut=bool(units) and not isinstance(units[0].shortcut, nn.Identity),
    )
    if config.num_quantizers != model.num_quantizers:  # float rounding in EnCodec's own arithmetic
        raise ValueError(f"EncodecConfig would hold {config.num_quantizers} levels, this codec has "
                         f"{model.num_quantizers}")
    return config


@torch.no_grad()
def to_encodec(model: SoundStream):
    """A transformers `EncodecModel` with `model`'s weights and codebooks, in eval mode.
    ValueError when the architectures do not line up (see `encodec_config`)."""
    from transformers import EncodecModel  # transformers: only this export needs it

    encodec = EncodecModel(encodec_config(model)).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("quantizer.")}
    for i, level in enumerate(model.quantizer.layers):
        prefix = f"quantizer.layers.{i}.codebook."
        codes = level.codes().detach().float()  # (K, D)
        state[prefix + "embed"] = codes
        state[prefix + "embed_avg"] = codes.clone()  # EnCodec's EMA state (unused at inference)
        state[prefix + "cluster_size"] = torch.ones(model.codebook_size)
        state[prefix + "inited"] = torch.ones(1)
    try:
        encodec.load_state_dict(state, strict=True)
    except RuntimeError as e:  # a layout encodec_config did not foresee, listed by torch
        raise ValueError(f"cannot export as EncodecModel: parameters differ: {e}") from None
    return encodec


def save_encodec(model: SoundStream, out: str | Path) -> Path:
    """`model` as a transformers EncodecModel directory (`EncodecModel.from_pretrained(out)` encodes to
    and decodes aetk's codes); ValueError, before anything is written, when the architecture is not
    one EnCodec can express."""
    encodec = to_encodec(model)  # raises before any file exists
    check_finite(encodec.state_dict(), f"EncodecModel for {out}")
    out = prepare_dir(out)
    encodec.save_pretrained(out, safe_serialization=True)
    return out
