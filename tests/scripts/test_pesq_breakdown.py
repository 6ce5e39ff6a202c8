"""scripts/pesq_breakdown.py end to end: a saved codec, a folder of speech-like clips, a JSON and a chart."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import load_script

from audio_codec.model import build_soundstream
from eval import pesq_breakdown as pb
from tests.eval.test_audio_metrics import voiced_syllables

pytest.importorskip("pesq")
SR = 16000


def test_the_script_scores_a_codec_on_a_folder(tmp_path):
    main = load_script("pesq_breakdown", "pesq_breakdown_script").main
    voice = voiced_syllables(seconds=2.0, sample_rate=SR).double().numpy()
    torch.manual_seed(0)
    model = build_soundstream(n_filters=4, ratios=(2, 2), dimension=8, codebook_size=16, num_quantizers=4,
                              sample_rate=SR, lstm_layers=0)
    model.save_pretrained(tmp_path / "codec")
    (tmp_path / "speech").mkdir()
    for i in range(2):
        sf.write(tmp_path / "speech" / f"{i}.wav", np.roll(voice, 800 * i), SR)
    kbps = model.bitrate(2) / 1000
    assert main([str(tmp_path / "codec"), "--data", str(tmp_path / "speech"), "--kbps", f"{kbps}",
                 "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "pesq-breakdown.json").read_text())
    src = report["sources"]["speech"]
    assert report["levels"] == 2 and src["clips"] == 2
    assert (tmp_path / "out" / "pesq-breakdown-speech.png").stat().st_size
    codec = src["estimates"]["codec"]
    assert set(pb.VIEWS) <= set(codec) and 1.0 <= codec["as decoded"] < 4.0  # random weights: poor, scored
    with pytest.raises(SystemExit, match="runs at"):
        main([str(tmp_path / "codec"), "--data", str(tmp_path / "speech"), "--kbps", "999", "--out", str(tmp_path)])
