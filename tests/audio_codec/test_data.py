"""AudioFolder: the dataset contract of train.data.images, for WAV / FLAC / OGG folders."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_codec.data import AudioFolder, collate_audio, load_audio, rms_db

SR = 8000
SEG = 1600


def tone(seconds: float, sr: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def folder(tmp_path):
    """a.wav tone at the model rate, sub/b.flac stereo at 16 kHz, c.ogg short, d.wav silent, e.wav corrupt,
    a hidden file and a text file (both ignored)."""
    sf.write(tmp_path / "a.wav", tone(2.0, SR), SR)
    (tmp_path / "sub").mkdir()
    stereo = np.stack([tone(1.5, 16000, 300), tone(1.5, 16000, 300, amp=0.1)], axis=1)  # (T, 2)
    sf.write(tmp_path / "sub" / "b.FLAC", stereo, 16000)
    sf.write(tmp_path / "c.ogg", tone(0.1, SR, 660), SR)  # 800 samples < one segment
    sf.write(tmp_path / "d.wav", np.zeros(SR, dtype=np.float32), SR)
    (tmp_path / "e.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage garbage")
    sf.write(tmp_path / ".hidden.wav", tone(1.0, SR), SR)
    (tmp_path / "notes.txt").write_text("not audio")
    return tmp_path


def make(root, **kw) -> AudioFolder:
    return AudioFolder(str(root), **{"sample_rate": SR, "segment_samples": SEG, "seed": 0, **kw})


def test_finds_audio_recursively_sorted(folder):
    ds = make(folder)
    names = [p[len(str(folder)) + 1:] for p in ds.files]
    assert names == ["a.wav", "c.ogg", "d.wav", "e.wav", "sub/b.FLAC"]


def test_items_follow_the_contract(folder):
    ds = make(folder)
    for i in (0, 1, 2, 4):
        item = ds[i]
        assert set(item) == {"x", "index", "bad"} and item["index"] == i and item["bad"] == []
        x = item["x"]
        assert x.shape == (1, SEG) and x.dtype == torch.float32 and float(x.abs().max()) <= 1.0


def test_mono_mix_and_resampling(folder):
    x = load_audio(str(folder / "sub" / "b.FLAC"), SR)
    assert x.shape == (int(1.5 * SR),)  # 16 kHz -> 8 kHz
    mid = x[1000:-1000]
    # The two channels (amplitudes 0.5 and 0.1, in phase) average to a 0.3-amplitude 300 Hz tone.
    assert np.sqrt(np.mean(mid ** 2)) == pytest.approx(0.3 / math.sqrt(2), rel=0.02)
    spectrum = np.abs(np.fft.rfft(mid))
    assert np.fft.rfftfreq(mid.size, 1 / SR)[spectrum.argmax()] == pytest.approx(300, abs=2)


def test_short_clip_is_zero_padded(folder):
    x = make(folder)[1]["x"][0]  # c.ogg: 800 samples
    assert float(x[:700].abs().max()) > 0.3 and torch.all(x[800:] == 0)


def test_corrupt_file_is_skipped_and_reported(folder, caplog):
    ds = make(folder)
    with caplog.at_level(logging.DEBUG, logger="aetk.data"):
        first = ds[3]
        again = ds[3]
    assert first["bad"] == [3] and first["index"] == 3
    torch.testing.assert_close(first["x"], again["x"])  # the stand-in is deterministic
    assert sum("e.wav" in r.message for r in caplog.records) == 1  # logged once per process
    assert again["bad"] == [3]  # still reported, without decoding it again
    assert ds.why_unreadable(3) and ds.why_unreadable(0) == ""


def test_deterministic_per_seed_epoch_index(folder):
    a, b = make(folder), make(folder)
    torch.testing.assert_close(a[0]["x"], b[0]["x"])  # same (seed, epoch, i): same crop
    b.set_epoch(1)
    assert not torch.equal(a[0]["x"], b[0]["x"])  # a new epoch draws a new crop
    c = make(folder, seed=1)
    assert not torch.equal(a[0]["x"], c[0]["x"])
    a.set_epoch(1)
    torch.testing.assert_close(a[0]["x"], b[0]["x"])


def test_silence_aware_crop(tmp_path):
    # 3 s of silence then 0.25 s of tone: a uniform crop lands in silence most of the time.
    x = np.concatenate([np.zeros(3 * SR, np.float32), tone(0.25, SR)])
    sf.write(tmp_path / "mostly_silent.wav", x, SR)
    aware = make(tmp_path, silence_tries=8)
    naive = make(tmp_path, silence_tries=1)
    loud_aware = loud_naive = 0
    for epoch in range(20):
        aware.set_epoch(epoch)
        naive.set_epoch(epoch)
        loud_aware += rms_db(aware[0]["x"].numpy()) >= -40
        loud_naive += rms_db(naive[0]["x"].numpy()) >= -40
    # Naive: P(loud) = 2000 / 22401 (~0.09). Aware, 8 draws: ~0.53.
    assert loud_aware >= loud_naive + 4


def test_silence_prob_ends_crops_in_digital_silence(folder):
    """`silence_prob`: that share of crops is zeroed from a uniform cut point on, the same draw for
    the same (seed, epoch, item), so a resumed run sees the same batches."""
    plain, ending = make(folder), make(folder, silence_prob=1.0)
    cuts = []
    for epoch in range(8):
        plain.set_epoch(epoch)
        ending.set_epoch(epoch)
        x, y = plain[0]["x"][0], ending[0]["x"][0]  # a.wav: a tone throughout
        cut = int((y != 0).nonzero().max()) + 1 if (y != 0).any() else 0
        assert torch.all(y[cut:] == 0) and torch.equal(y[:cut], x[:cut])  # the same crop, then silence
        cuts.append(cut)
    assert len(set(cuts)) > 4  # the cut point varies
    again = make(folder, silence_prob=1.0)
    again.set_epoch(7)
    assert torch.equal(again[0]["x"], ending[0]["x"])
    half, ended = make(folder, silence_prob=0.5), []
    for epoch in range(16):
        half.set_epoch(epoch)
        ended.append(bool(half[0]["x"][0, -1] == 0))
    assert 3 <= sum(ended) <= 13


def test_silent_file_serves_silence_not_bad(folder):
    item = make(folder)[2]  # d.wav
    assert item["bad"] == [] and torch.all(item["x"] == 0)


def test_centre_crop_without_random_crop(folder):
    ds = make(folder, random_crop=False)
    x = load_audio(ds.files[0], SR)
    start = (x.size - SEG) // 2
    np.testing.assert_array_equal(ds[0]["x"][0].numpy(), x[start:start + SEG])
    ds.set_epoch(5)
    np.testing.assert_array_equal(ds[0]["x"][0].numpy(), x[start:start + SEG])


def test_collate(folder):
    ds = make(folder)
    batch = collate_audio([ds[3], ds[0]])
    assert batch["x"].shape == (2, 1, SEG) and batch["index"].tolist() == [3, 0] and batch["bad"] == [3]


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path / "nope")):
        make(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no audio files found in .*empty"):
        make(tmp_path / "empty")


def test_all_files_unreadable(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no readable audio"):
        make(tmp_path)[0]
