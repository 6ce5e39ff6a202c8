"""`aetk codec compress/decompress/stream`, `aetk encode` and `aetk eval` of an audio codec, in-process:
the round trip decodes what the model decodes, bad or foreign `.aetk` files are refused without writing
anything, streaming gives the offline codes, token shards hold every segment, eval reports per bitrate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from aetk.cli import main
from audio_codec.container import read_codes, state_dict_hash
from audio_codec.model import SoundStream
from eval.audio_report import evaluate_audio, opus_tool
from latent_diffusion.shards import LatentShardDataset
from tokenizers_ae.pretrained import locate
from train.families.soundstream import build_model
from train.recipe import config_yaml, load_config

SR, HOP, LEVELS, CODEBOOK = 8000, 16, 4, 16  # 500 frames/s x 4 bits: 2, 4, 6, 8 kbps
TINY_CODEC = ["model.sample_rate=8000", "model.ratios=[4,4]", "model.stage_channels=[4,8,8]",
              "model.dimension=8", "model.lstm_layers=0", f"model.quantizer.levels={LEVELS}",
              f"model.quantizer.codebook_size={CODEBOOK}", "model.quantizer.kmeans_init=true"]


def load_model(path) -> SoundStream:
    return SoundStream.from_pretrained(path)


def tone(n: int, seed: int = 0) -> np.ndarray:
    t = np.arange(n) / SR
    noise = np.random.default_rng(seed).standard_normal(n)
    return (0.3 * np.sin(2 * np.pi * (220 + 50 * seed) * t) + 0.05 * noise).astype(np.float32)


def tiny_codec_config(seed: int):
    return load_config("configs/codec-tiny.yaml", [f"seed={seed}", *TINY_CODEC])


def make_codec(path, seed: int, overrides: tuple[str, ...] = ()):
    """A tiny codec exported as `aetk train` exports one (model/ in aetk's native format), its codebooks
    fitted by one k-means training forward so the codes vary."""
    torch.manual_seed(seed)
    model = build_model(load_config("configs/codec-tiny.yaml", [f"seed={seed}", *TINY_CODEC, *overrides]))
    model.train()(torch.randn(2, 1, 1600) * 0.3, n_quantizers=LEVELS)
    model.eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread hand-offs cost more than they save
    root = tmp_path_factory.mktemp("codec-cli")
    wav = root / "in.wav"
    sf.write(wav, tone(2403), SR, subtype="FLOAT")  # not a whole number of frames
    yield {"root": root, "model": make_codec(root / "model", 0), "other": make_codec(root / "other", 1), "wav": wav}
    torch.set_num_threads(threads)


def cli(capsys, *args) -> tuple[int, dict | None, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if rc == 0 and out.out.startswith("{") else None), out.err


def compress(capsys, env, out, kbps=6):
    rc, summary, err = cli(capsys, "codec", "compress", env["wav"], out, "--model", env["model"], "--kbps", kbps)
    assert rc == 0, err
    return summary


def test_round_trip_decodes_what_the_model_decodes(env, capsys, tmp_path):
    aetk, wav = tmp_path / "x.aetk", tmp_path / "y.wav"
    s = compress(capsys, env, aetk, kbps=6)
    model = load_model(env["model"])
    x = torch.from_numpy(sf.read(env["wav"], dtype="float32")[0])[None, None]  # (1, 1, T)
    t = x.shape[-1]
    codes, header = read_codes(aetk)
    frames = math.ceil(t / HOP)
    assert (s["levels"], s["frames"], s["samples"], s["nominal_kbps"]) == (3, frames, t, 6.0)
    assert codes.shape == (1, 3, frames) and header.model_hash == state_dict_hash(model.state_dict())
    # Achieved rate: the codes at the nominal rate (plus padding of the last frame) plus the header only.
    size = aetk.stat().st_size
    assert s["payload_bytes"] == math.ceil(frames * 3 * 4 / 8)
    assert s["overhead_bytes"] == size - s["payload_bytes"] < 300
    assert s["achieved_kbps"] == pytest.approx(size * 8 / (t / SR) / 1000)
    payload_kbps = s["payload_bytes"] * 8 / (t / SR) / 1000
    assert 6.0 <= payload_kbps <= 6.0 * (t + HOP) / t + 8 / (t / SR) / 1000  # < 1 frame + 1 byte of padding

    rc, d, err = cli(capsys, "codec", "decompress", aetk, wav, "--model", env["model"])
    assert rc == 0, err
    y, sr = sf.read(wav, dtype="float32")
    assert sr == SR and y.shape == (t,) and sf.info(wav).subtype == "PCM_16" and d["samples"] == t
    with torch.no_grad():
        ref = model.decode(model.encode(x, 3))[0, 0, :t].clamp(-1, 1)
    assert ref.std() > 0  # not a trivial comparison
    assert torch.allclose(torch.from_numpy(y), ref, atol=1e-3, rtol=0)  # 16-bit rounding only


def test_fewer_levels_at_a_lower_bitrate_and_out_of_range_refused(env, capsys, tmp_path):
    assert compress(capsys, env, tmp_path / "a.aetk", kbps=2.5)["levels"] == 1
    rc, _, err = cli(capsys, "codec", "compress", env["wav"], tmp_path / "b.aetk", "--model", env["model"],
                     "--kbps", 1)
    assert rc == 1 and "outside this model's range" in err and not (tmp_path / "b.aetk").exists()


@pytest.mark.parametrize("damage, message", [
    ("flip", "CRC32 mismatch"), ("truncate", "truncated payload"), ("magic", "not an aetk audio file")])
def test_corrupt_aetk_is_rejected_and_nothing_written(env, capsys, tmp_path, damage, message):
    aetk, wav = tmp_path / "x.aetk", tmp_path / "y.wav"
    compress(capsys, env, aetk)
    data = bytearray(aetk.read_bytes())
    if damage == "flip":
        data[-10] ^= 0x01  # a payload byte
    elif damage == "truncate":
        data = data[:-7]
    else:
        data[:4] = b"RIFF"
    aetk.write_bytes(bytes(data))
    rc, _, err = cli(capsys, "codec", "decompress", aetk, wav, "--model", env["model"])
    assert rc == 1 and message in err and err.startswith("aetk: error:")
    assert list(tmp_path.iterdir()) == [aetk]  # no output, no temporary file


def test_decompress_with_another_model_is_refused(env, capsys, tmp_path):
    aetk, wav = tmp_path / "x.aetk", tmp_path / "y.wav"
    compress(capsys, env, aetk)
    rc, _, err = cli(capsys, "codec", "decompress", aetk, wav, "--model", env["other"])
    ours, theirs = (state_dict_hash(load_model(env[k]).state_dict()) for k in ("model", "other"))
    assert rc == 1 and "model hash" in err and ours in err and theirs in err
    assert not wav.exists()


def test_clear_errors_for_missing_files_and_non_codec_models(env, capsys, tmp_path):
    rc, _, err = cli(capsys, "codec", "compress", tmp_path / "nope.wav", tmp_path / "x.aetk", "--model", env["model"])
    assert rc == 1 and "nope.wav: no such file" in err
    rc, _, err = cli(capsys, "codec", "decompress", tmp_path / "nope.aetk", tmp_path / "y.wav", "--model", env["model"])
    assert rc == 1 and "nope.aetk: no such file" in err
    rc, _, err = cli(capsys, "codec", "compress", env["wav"], tmp_path / "x.aetk", "--model", tmp_path / "no-model")
    assert rc == 1 and "no-model: no such file or directory" in err
    vq = tmp_path / "vq"
    vq.mkdir()
    meta = {"format": "aetk-model", "version": 1, "recipe": {"kind": "vq_vae"}}
    (vq / "aetk_model.json").write_text(json.dumps(meta))
    rc, _, err = cli(capsys, "codec", "stream", env["wav"], tmp_path / "y.wav", "--model", vq)
    assert rc == 1 and "not an audio codec" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vq"]


def test_locate_tells_codecs_from_other_models(env, tmp_path):
    from tokenizers_ae.pretrained import LoadError

    ckpt = tmp_path / "run" / "checkpoints" / "step-2"  # a checkpoint of aetk 0.1 (config.yaml only), no export
    ckpt.mkdir(parents=True)
    (ckpt / "COMPLETE").write_text("")
    (ckpt / "config.yaml").write_text(config_yaml(tiny_codec_config(0)))
    kl = tmp_path / "kl"
    kl.mkdir()
    (kl / "COMPLETE").write_text("")
    (kl / "config.yaml").write_text(config_yaml(load_config("configs/kl-f4-tiny.yaml")))
    assert [locate(p).class_name for p in (env["model"], ckpt, tmp_path / "run", kl)] == \
        ["SoundStream", "SoundStream", "SoundStream", "KLVAE"]
    for bad in (tmp_path / "missing", env["wav"]):
        with pytest.raises(LoadError, match=str(bad)):
            locate(bad)


def test_stream_gives_the_offline_codes_and_audio(env, capsys, tmp_path):
    out = tmp_path / "s.wav"
    rc, s, err = cli(capsys, "codec", "stream", env["wav"], out, "--model", env["model"], "--kbps", 6,
                     "--chunk-ms", 7.5)  # 60 samples: not a multiple of the hop
    assert rc == 0, err
    assert s["codes_equal_offline"] is True and s["max_abs_diff_offline_audio"] < 1e-4
    assert s["chunks"] == math.ceil(2403 / 60) and s["chunk_samples"] == 60 and s["levels"] == 3
    assert s["frames"] == math.ceil(2403 / HOP)
    assert s["algorithmic_latency_ms"] == pytest.approx(HOP / SR * 1000)
    assert 0 < s["chunk_compute_ms"]["mean"] <= s["chunk_compute_ms"]["max"] and s["real_time_factor"] > 0
    model = load_model(env["model"])
    x = torch.from_numpy(sf.read(env["wav"], dtype="float32")[0])[None, None]
    with torch.no_grad():
        ref = model.decode(model.encode(x, 3))[0, 0, :2403].clamp(-1, 1)
    y, sr = sf.read(out, dtype="float32")
    assert sr == SR and torch.allclose(torch.from_numpy(y), ref, atol=1e-3, rtol=0)


@pytest.mark.parametrize("flags", ["avx2", "amx_bf16"])
def test_encode_writes_one_token_sequence_per_segment(env, capsys, tmp_path, monkeypatch, flags):
    """On either CPU: where bf16 is emulated `aetk encode` picks fp32 for the hooks that read --precision, and
    the codec's hook, which does not, is not refused for a flag the user never set."""
    from tokenizers_ae import precision

    monkeypatch.setattr(precision, "cpuinfo", lambda: f"model name\t: CPU\nflags\t\t: fpu {flags}\n")
    data, out = tmp_path / "audio", tmp_path / "tokens"
    data.mkdir()
    seg = 800  # 0.1 s
    lengths = {"a.wav": 2 * seg + seg // 2, "b.wav": 2 * seg + seg // 2 - 1, "c.wav": seg // 2 - 1}
    for name, n in lengths.items():  # 3 segments (last half-full: padded), 2 (last dropped), 0 (too short)
        sf.write(data / name, tone(n, seed=len(name) + n), SR)
    (data / "d.wav").write_bytes(b"RIFF not really a wav file")
    rc, _, err = cli(capsys, "encode", env["model"], "--data", data, "--out", out, "--segment-seconds", 0.1,
                     "--shard-size", 2, "--kbps", 4)
    assert rc == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "aetk-tokens" and m["count"] == 5 and len(m["shards"]) == 3
    assert m["token_shape"] == [2, seg // HOP] and m["n_quantizers"] == 2 and m["dtype"] == "int16"
    assert (m["sample_rate"], m["hop_length"], m["frame_rate"]) == (SR, HOP, SR / HOP)
    assert m["model_hash"] == state_dict_hash(load_model(env["model"]).state_dict())
    assert [f["segments"] for f in m["files"]] == [3, 2, 0, 0]
    assert m["too_short"] == [str(data / "c.wav")]
    assert [b["source"] for b in m["bad"]] == [str(data / "d.wav")]
    ds = LatentShardDataset(out)
    tokens = torch.stack([ds[i]["tokens"] for i in range(len(ds))])  # (5, n_q, frames)
    assert len(ds) == 5 and tokens.shape == (5, 2, seg // HOP)
    assert tokens.min() >= 0 and tokens.max() < CODEBOOK and tokens.unique().numel() > 2
    # The third segment of a.wav is its last half segment, zero-padded: the codes `compress` would give.
    model = load_model(env["model"])
    last = np.pad(sf.read(data / "a.wav", dtype="float32")[0][2 * seg:], (0, seg // 2))
    with torch.no_grad():
        assert torch.equal(tokens[2], model.encode(torch.from_numpy(last)[None, None], 2)[0])


def test_eval_reports_metrics_per_bitrate(env, capsys, tmp_path):
    data = tmp_path / "val"
    data.mkdir()
    for i in range(3):
        sf.write(data / f"{i}.wav", tone(1600 + 37 * i, seed=i), SR)
    rc, r, err = cli(capsys, "eval", env["model"], "--data", data, "--kbps", 2, "--kbps", 6, "--kbps", 24,
                     "--segment-seconds", 0.2, "--no-opus", "--out-dir", tmp_path / "out",
                     "--json", tmp_path / "r.json")
    assert rc == 0, err
    assert json.loads((tmp_path / "r.json").read_text()) == r
    assert r["clips"] == 3 and r["model_kbps"] == [2.0, 4.0, 6.0, 8.0]
    assert [(c["kbps"], c["levels"]) for c in r["codec"]] == [(2, 1), (6, 3)]
    for c in r["codec"]:
        assert all(math.isfinite(c[k]) for k in ("si_snr", "mel_distance", "stft_distance"))
        overhead = c["achieved_kbps"] - c["nominal_kbps"]  # one header per 0.2 s clip
        assert 0 < overhead * 1000 / 8 * 0.2 < 300
    assert r["skipped"] == [{"kbps": 24, "reason": "above the model's maximum (8 kbps)"}]
    assert r["opus"] == {"available": False, "reason": "disabled (--no-opus)"}
    assert (tmp_path / "out" / "spectrograms-6kbps.png").stat().st_size > 0
    card = r["protocol"]
    assert card["kind"] == "audio" and card["data"]["items"] == 3 and card["settings"]["kbps"] == [2, 6, 24]
    # --protocol repeats it exactly; a changed recording is refused.
    rc, again, err = cli(capsys, "eval", env["model"], "--protocol", tmp_path / "r.json", "--kbps", 8,
                         "--out-dir", tmp_path / "again")
    assert rc == 0, err
    assert again["protocol"]["data"] == card["data"] and again["codec"] == r["codec"]
    sf.write(data / "1.wav", tone(1600 + 37, seed=9), SR)
    rc, _, err = cli(capsys, "eval", env["model"], "--protocol", tmp_path / "r.json", "--out-dir", tmp_path / "x")
    assert rc != 0 and "the evaluated data differ from the protocol's" in err


def test_eval_compares_with_opus_or_says_why_not(env, tmp_path, monkeypatch):
    data = tmp_path / "val"
    data.mkdir()
    sf.write(data / "0.wav", tone(1600), SR)
    tool, why = opus_tool()
    r = evaluate_audio(load_model(env["model"]), data, n=1, segment_seconds=0.2, kbps_list=(2, 6))
    if tool is None:
        assert r["opus"] == {"available": False, "reason": why}
    else:
        assert r["opus"]["skipped"] == [{"kbps": 2, "reason": "below Opus's minimum of 6 kbps"}]
        (o,) = r["opus"]["results"]
        assert o["kbps"] == 6 and o["si_snr"] > 3 and o["achieved_kbps"] > 0  # Opus keeps a tone
    monkeypatch.setattr("shutil.which", lambda name: None)
    r = evaluate_audio(load_model(env["model"]), data, n=1, segment_seconds=0.2, kbps_list=(6,))
    assert r["opus"]["available"] is False and "opus-tools" in r["opus"]["reason"] and len(r["codec"]) == 1


def test_export_as_encodec_decodes_compressed_files(env, capsys, tmp_path):
    """`aetk export --format encodec`: transformers' EncodecModel decodes the codes of an `.aetk` file
    to the audio `aetk codec decompress` writes."""
    from transformers import EncodecModel

    model_dir = make_codec(tmp_path / "encodec-able", 2, ("model.stage_channels=[4,8,16]", "model.lstm_layers=1"))
    # With a held-out eval of these weights, whose per-bitrate figures go into the model card.
    (tmp_path / "val").mkdir()
    sf.write(tmp_path / "val" / "0.wav", tone(1600), SR)
    rc, r, err = cli(capsys, "eval", model_dir, "--data", tmp_path / "val", "--kbps", 4, "--segment-seconds", 0.2,
                     "--no-opus", "--json", tmp_path / "val.json", "--out-dir", tmp_path / "val-out")
    assert rc == 0, err
    rc, _, err = cli(capsys, "export", model_dir, "--format", "encodec", "--out", tmp_path / "hf",
                     "--eval", tmp_path / "val.json")
    assert rc == 0, err
    card = (tmp_path / "hf" / "README.md").read_text()
    (c,) = r["codec"]
    assert "library_name: transformers" in card and "## Held-out evaluation: val" in card
    assert f"| codec 4 kbps | {c['achieved_kbps']:.4g} | {c['si_snr']:.4g} |" in card
    # aetk does not read an EncodecModel back, so the card repeats the eval on the aetk model, which works.
    assert f"aetk eval {model_dir} --protocol hf/evaluations/val.json" in card
    rc, _, err = cli(capsys, "eval", tmp_path / "hf", "--protocol", tmp_path / "val.json")
    assert rc != 0 and "a transformers EncodecModel directory, which aetk writes but does not read back" in err
    rc, again, err = cli(capsys, "eval", model_dir, "--protocol", tmp_path / "hf" / "evaluations" / "val.json",
                         "--out-dir", tmp_path / "again")
    assert rc == 0 and again["codec"] == r["codec"], err
    encodec = EncodecModel.from_pretrained(tmp_path / "hf")
    rc, _, err = cli(capsys, "codec", "compress", env["wav"], tmp_path / "a.aetk", "--model", model_dir, "--kbps", 4)
    assert rc == 0, err
    codes, _ = read_codes(tmp_path / "a.aetk")  # (channels=1, n_q, F)
    assert codes.shape[1] == 2  # 4 kbps = 2 levels
    with torch.no_grad():
        theirs = encodec.decode(codes[None], [None]).audio_values  # (1, 1, F * hop)
        ours = load_model(model_dir).decode(codes)
    assert torch.allclose(theirs, ours, atol=1e-5)


def test_export_refuses_what_encodec_cannot_hold_and_writes_nothing(env, capsys, tmp_path):
    rc, _, err = cli(capsys, "export", env["model"], "--format", "encodec", "--out", tmp_path / "hf")
    assert rc != 0 and "stage_channels [4, 8, 8]" in err and "lstm_layers 0" in err
    rc, _, err = cli(capsys, "export", env["model"], "--out", tmp_path / "hf")  # a codec's default: encodec
    assert rc != 0 and "stage_channels [4, 8, 8]" in err
    rc, _, err = cli(capsys, "export", env["model"], "--format", "diffusers", "--out", tmp_path / "hf")
    assert rc == 2 and "--format diffusers is not a format of a soundstream model" in err and "encodec" in err
    rc, _, err = cli(capsys, "export", tmp_path, "--format", "encodec", "--out", tmp_path / "hf")
    assert rc != 0 and "not a run directory" in err
    assert not (tmp_path / "hf").exists()


def test_eval_scores_each_clip_over_its_own_length(env, tmp_path):
    """Short clips are batched with zeros, but only their own samples are scored (a codec's hum in
    padded digital silence used to dominate the mel distance); the bitrate counts real samples."""
    from eval.audio import audio_metrics

    data = tmp_path / "val"
    data.mkdir()
    lengths = (800, 1600)  # 0.1 s and 0.2 s; the segment is 0.4 s
    for i, t in enumerate(lengths):
        sf.write(data / f"{i}.wav", tone(t, seed=i), SR)
    r = evaluate_audio(load_model(env["model"]), data, n=2, segment_seconds=0.4, kbps_list=(8,), opus=False)
    model = load_model(env["model"])
    per_clip = []
    for i, t in enumerate(lengths):
        x = torch.from_numpy(tone(t, seed=i))[None, None]
        with torch.no_grad():
            y = model.decode(model.encode(x, LEVELS))[..., :t].clamp(-1, 1)
        per_clip.append(audio_metrics(y, x, sample_rate=SR))
    (c,) = r["codec"]
    for key in ("si_snr", "mel_distance", "stft_distance"):
        assert c[key] == pytest.approx(np.mean([m[key] for m in per_clip]), rel=1e-4, abs=1e-4)
    assert r["seconds_scored"] == pytest.approx(0.3)
    assert -120 <= c["silence_dbfs"] < 0  # the output over the padding, measured
    assert c["achieved_kbps"] > c["nominal_kbps"]  # headers over 0.3 s of audio, not 0.8 s


def test_silence_level_measures_output_over_the_padding():
    from eval.audio_report import silence_level

    recon = torch.zeros(2, 1, 1000)
    recon[0, 0, :300] = 0.5  # clip 0: 300 samples of sound, then true silence
    recon[1, 0] = 0.01  # clip 1: 200 samples of sound, then a constant -40 dBFS hum
    assert silence_level(recon[:1], [300], hop=10, sample_rate=1000) == -120.0
    assert silence_level(recon[1:], [200], hop=10, sample_rate=1000) == pytest.approx(-40.0)
    assert silence_level(recon, [300, 200], hop=10, sample_rate=1000) == pytest.approx(-80.0)
    assert silence_level(recon[:1], [950], hop=10, sample_rate=1000) is None  # under 0.1 s of padding
