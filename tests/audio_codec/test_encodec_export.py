"""The transformers EncodecModel export: EnCodec's own code encodes audio to aetk's codes and
decodes aetk's codes to aetk's audio; architectures EnCodec cannot express are refused by name."""

from __future__ import annotations

import pytest
import torch

from audio_codec import build_soundstream
from audio_codec.encodec_export import encodec_config, to_encodec

HOP = 4


def tiny(**overrides):
    """hop 4 at 16 kHz, widths 4-8-16, 4 levels of 16 codes fitted by one k-means forward."""
    torch.manual_seed(0)
    kwargs = dict(n_filters=4, ratios=(2, 2), dimension=8, codebook_size=16, num_quantizers=4, sample_rate=16000,
                  lstm_layers=1, kmeans_init=True, ema_decay=0.9, n_residual_layers=2, dilation_base=3)
    model = build_soundstream(**{**kwargs, **overrides})
    model(torch.randn(2, 1, 256) * 0.3, n_quantizers=4)
    return model.eval()


def test_config_mirrors_the_architecture():
    model = tiny()
    config = encodec_config(model)
    assert (config.num_filters, config.upsampling_ratios, config.hidden_size) == (4, [2, 2], 8)
    assert (config.num_residual_layers, config.dilation_growth_rate, config.num_lstm_layers) == (2, 3, 1)
    assert config.pad_mode == "constant" and config.use_causal_conv and not config.normalize
    assert config.num_quantizers == 4 and config.frame_rate == 16000 // HOP
    # one target bandwidth per level count: 4000 frames/s x 4 bits x n
    assert config.target_bandwidths == [16.0, 32.0, 48.0, 64.0]


@pytest.mark.parametrize("levels", [1, 4])
def test_encodec_encodes_to_our_codes_and_decodes_them_to_our_audio(levels):
    model = tiny()
    encodec = to_encodec(model)
    x = torch.randn(2, 1, 100 * HOP) * 0.3
    with torch.no_grad():
        ours = model.encode(x, levels)  # (B, n_q, F)
        out = encodec.encode(x, bandwidth=encodec.config.target_bandwidths[levels - 1])
        assert out.audio_codes.shape == (1, 2, levels, 100)  # (chunks, B, n_q, F)
        assert ours.unique().numel() > 4 and torch.equal(out.audio_codes[0], ours)
        audio = encodec.decode(out.audio_codes, [None]).audio_values
    assert torch.allclose(audio, model.decode(ours), atol=1e-5)


@pytest.mark.parametrize("overrides, named", [
    (dict(stage_channels=(4, 12, 16)), "stage_channels"),
    (dict(lstm_layers=0), "lstm_layers 0"),
    (dict(cosine=True), "cosine"),
    (dict(codebook_dim=4), "codebook_dim 4"),
])
def test_architectures_encodec_cannot_express_are_refused_by_name(overrides, named):
    with pytest.raises(ValueError, match=named):
        encodec_config(tiny(**overrides))
