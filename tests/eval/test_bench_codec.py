"""`aetk bench codec` on tiny codecs: the result's shape and its promises (same bitrate, streaming
codes equal whole-file codes, folding EnCodec's weight norm changes nothing); and the fast
architecture's contract (75 Hz, 8 levels at 6 kbps, parameters within 25% of EnCodec's)."""

import json
import math

import pytest

from audio_codec.model import build_soundstream
from eval.bench.codec import PARAMS_TOLERANCE, bench_codec, build_encodec, count_parameters, fast_codec_kwargs

# hop 16 at 24 kHz = 1500 Hz frames; 16 codes = 4 bits -> 6 kbps per level.
TINY_OURS = dict(ratios=(4, 4), stage_channels=(4, 8, 8), dimension=8, lstm_layers=1, num_quantizers=2,
                 codebook_size=16)
TINY_ENCODEC = dict(upsampling_ratios=[4, 4], num_filters=4, hidden_size=8, codebook_size=16, num_lstm_layers=1,
                    target_bandwidths=[6.0, 12.0])


@pytest.mark.parametrize("precision", ["fp32", "both"])
def test_bench_codec_reports_speeds_and_sizes(precision):
    res = bench_codec(seconds=0.5, repeats=1, precision=precision, kbps=6.0, chunk_ms=(4, 20), threads=1,
                      ours_kwargs=TINY_OURS, encodec_config_overrides=TINY_ENCODEC, verbose=False)
    json.dumps(res)  # JSON-able as promised
    precisions = ["fp32", "bf16"] if precision == "both" else ["fp32"]
    assert list(res["rtf"]) == precisions
    for r in res["rtf"].values():
        for key in ("encodec", "encodec_folded", "ours"):
            assert r[key] > 0
        assert set(r["ours_streaming"]) == set(r["streaming_slowdown"]) == {"4", "20"}
        assert all(v > 0 for v in r["ours_streaming"].values())
        assert math.isclose(r["ours_vs_encodec"], r["ours"] / r["encodec"])
        assert all(len(ts) == 1 for ts in r["seconds"].values())
    ours, enc = res["ours"], res["encodec"]
    assert ours["params_encoder_decoder"] == count_parameters(build_soundstream(**TINY_OURS).encoder,
                                                               build_soundstream(**TINY_OURS).decoder) > 0
    assert enc["params_encoder_decoder"] > 0 and enc["codebook_values"] == ours["codebook_values"] == 2 * 16 * 8
    assert ours["n_quantizers"] == enc["n_quantizers"] == 1 and ours["frame_rate"] == enc["frame_rate"] == 1500
    assert res["bitrate_bps"] == 6000
    assert all(ours["streaming_codes_equal_whole_fp32"].values())
    assert enc["fold_max_abs_error"] < 1e-5
    assert res["table"].count("\n| ") == len(precisions) + 1  # header rule + one row per precision


def test_bench_codec_refuses_a_bitrate_encodec_lacks():
    with pytest.raises(ValueError, match="kbps"):
        bench_codec(seconds=0.1, repeats=1, precision="fp32", kbps=3.0, threads=1, ours_kwargs=TINY_OURS,
                    encodec_config_overrides=TINY_ENCODEC, verbose=False)


def test_fast_codec_matches_encodec_rate_bitrate_and_size():
    fast = build_soundstream(**fast_codec_kwargs())
    encodec = build_encodec()
    assert encodec.config.sampling_rate == fast.sample_rate == 24000
    assert fast.hop_length == encodec.config.hop_length == 320 and fast.frame_rate == encodec.config.frame_rate == 75
    assert fast.n_quantizers_for(6.0) == encodec.quantizer.get_num_quantizers_for_bandwidth(6.0) == 8
    assert fast.codebook_size == encodec.config.codebook_size == 1024
    ratio = count_parameters(fast.encoder, fast.decoder) / count_parameters(encodec.encoder, encodec.decoder)
    assert abs(ratio - 1) <= PARAMS_TOLERANCE
