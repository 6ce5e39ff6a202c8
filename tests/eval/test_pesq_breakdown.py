"""The PESQ breakdown pins a loss on the band and the part (magnitude, phase) that holds it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval import pesq_breakdown as pb
from tests.eval.test_audio_metrics import add_noise_at_snr, voiced_syllables

pytest.importorskip("pesq")
SR = 16000


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return voiced_syllables(seconds=2.0, sample_rate=SR).double().numpy()


def test_controls_reach_the_ceiling(voice):
    # The views' own machinery (band split, STFT round trip) costs nothing: a perfect estimate scores 4.64.
    for name, score in pb.control_scores([voice], SR, cutoff_hz=1000).items():
        assert score == pytest.approx(4.64, abs=0.02), name


def test_a_missing_high_band_is_found_in_the_high_band(voice):
    lo, _ = pb.split_bands(voice, SR, 1000.0)  # the estimate lost everything above 1 kHz
    r = pb.breakdown([lo], [voice], SR, cutoff_hz=1000)
    assert r["as decoded"] < 3.5
    assert r["low band only"] > 4.4  # its low band, the reference's high band: nothing is lost
    assert abs(r["high band only"] - r["as decoded"]) < 0.3  # its high band alone holds the loss


def test_noise_is_a_magnitude_loss_that_fills_the_quiet_bins(voice):
    noisy = add_noise_at_snr(torch.from_numpy(voice)[None, None].float(), 15.0)[0, 0].double().numpy()
    r = pb.breakdown([noisy], [voice], SR, cutoff_hz=4000)
    assert r["phase only"] > r["magnitude only"] + 0.5  # white noise changes loud bins' phase little
    assert r["quiet_bins_db"] > 10 > abs(r["loud_bins_db"])  # the valleys filled, the peaks barely moved
    louder = pb.bin_levels_db(2 * voice, voice, SR, floor=1e-12)  # a floor below every sounding bin
    assert louder["loud_bins_db"] == pytest.approx(20 * np.log10(2), abs=0.01)  # twice as loud: +6 dB
