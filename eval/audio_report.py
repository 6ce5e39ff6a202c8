"""`aetk eval` of an audio codec: quality per bitrate on held-out clips, beside Opus.

SI-SNR, mel and STFT distances, PESQ / STOI when installed (`eval.audio`), the achieved bitrate from
each clip's `.aetk` size, the output level over digital silence; Opus through `opusenc`/`opusdec` or
an ffmpeg with libopus at the same bitrates, scored on the same clips.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audio_codec.container import achieved_kbps, encode_codes, state_dict_hash
from audio_codec.data import AudioFolder, load_audio, rms_db
from audio_codec.files import container_fields
from audio_codec.model import SoundStream
from eval import protocol as protocol_mod
from eval.audio import audio_metrics, save_audio_examples, save_spectrogram_grid

OPUS_MIN_KBPS = 6.0
"""libopus's lowest bitrate (opusenc accepts 6-256 kbit/s per channel)."""


def opus_tool() -> tuple[str | None, str]:
    """("opus-tools" | "ffmpeg", "") when an Opus encoder/decoder is on PATH, else (None, why not)."""
    if shutil.which("opusenc") and shutil.which("opusdec"):
        return "opus-tools", ""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        try:
            encoders = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True,
                                      timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"ffmpeg failed to list its encoders ({e})"
        if "libopus" in encoders:
            return "ffmpeg", ""
        return None, "ffmpeg is on PATH but built without libopus; install opus-tools (opusenc, opusdec)"
    return None, "neither opusenc+opusdec (Debian/Ubuntu: apt install opus-tools) nor ffmpeg is on PATH"


def opus_round_trip(x: np.ndarray, sample_rate: int, kbps: float, tool: str) -> tuple[np.ndarray, int]:
    """(T,) float audio -> Opus at `kbps` (hard CBR: the rate asked for) -> decoded, resampled to
    `sample_rate`, cut or zero-padded to T. Returns (audio, .opus file size in bytes, Ogg framing included)."""
    with tempfile.TemporaryDirectory(prefix="aetk-opus-") as d:
        wav, opus, dec = Path(d) / "in.wav", Path(d) / "x.opus", Path(d) / "out.wav"
        sf.write(wav, np.clip(x, -1, 1), sample_rate, subtype="PCM_16")
        if tool == "opus-tools":
            cmds = [["opusenc", "--quiet", "--hard-cbr", "--bitrate", f"{kbps:g}", str(wav), str(opus)],
                    ["opusdec", "--quiet", "--rate", "48000", str(opus), str(dec)]]
        else:
            cmds = [["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(wav), "-c:a", "libopus",
                     "-vbr", "off", "-b:a", f"{kbps * 1000:.0f}", str(opus)],
                    ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(opus), "-ar", "48000", str(dec)]]
        for cmd in cmds:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[:1])} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        y = load_audio(str(dec), sample_rate)
        size = opus.stat().st_size
    y = y[:x.shape[0]]
    return np.pad(y, (0, x.shape[0] - y.shape[0])), size


@torch.no_grad()
def evaluate_audio(model: SoundStream, data_dir: str | Path, *, n: int = 16, segment_seconds: float = 5.0,
                   kbps_list: Sequence[float] = (1.5, 3, 6, 12), opus: bool = True, out_dir: str | Path | None = None,
                   name: str = "", protocol: dict | None = None) -> dict:
    """The codec on held-out clips: the first `n` readable files under `data_dir`, centre crops of
    `segment_seconds` (whole files when shorter). For each bitrate in the model's range: SI-SNR, mel and
    STFT distances (`eval.audio.audio_metrics`, per clip over its own length, then averaged: the
    zeros that batch short clips together are not scored, as EnCodec / DAC score whole utterances)
    and the achieved bitrate from each clip's `.aetk` size (header included); bitrates outside the
    range are listed in `skipped`. With `opus`, Opus at the
    bitrates the codec was evaluated at (those >= 6 kbps, its minimum) through opusenc/opusdec or
    ffmpeg, with the same metrics on the same clips; else `opus.available` is false with the reason.
    `out_dir`: a spectrogram grid per bitrate and example WAVs at the highest. `name`: what the
    report calls the model (its path). The result carries the protocol card (`eval.protocol`, the clips
    hashed at 16 bits with their scored lengths); with `protocol`, the clips must be that card's."""
    model = model.eval()
    sr = model.sample_rate
    segment = max(1, round(segment_seconds * sr))
    x, lengths, unreadable = heldout_clips(data_dir, sample_rate=sr, n=n, segment=segment)
    # The scored lengths are part of what was evaluated: a zero-padded clip is not the same set.
    protocol_mod.check_data(protocol, x, str(data_dir), extra={"lengths": lengths})
    rates = [model.bitrate(q) / 1000 for q in range(1, model.num_quantizers + 1)]
    digest = state_dict_hash(model.state_dict())
    result: dict = {"model": name, "data": str(data_dir), "sample_rate": sr, "clips": x.shape[0],
                    "clip_seconds": segment / sr, "seconds_scored": sum(lengths) / sr, "model_kbps": rates,
                    "codec": [], "skipped": [], "unreadable": unreadable}
    recons = {}
    for kbps in kbps_list:
        if not rates[0] * (1 - 1e-9) <= kbps <= rates[-1] * (1 + 1e-9):
            where, limit = ("above the model's maximum", rates[-1]) if kbps > rates[-1] else \
                ("below the model's minimum", rates[0])
            result["skipped"].append({"kbps": kbps, "reason": f"{where} ({limit:g} kbps)"})
            continue
        q = model.n_quantizers_for(kbps)
        codes = model.encode(x, q)  # (B, q, F)
        recon = model.decode(codes)[..., :segment].clamp(-1, 1)  # (B, 1, S)
        hop = model.hop_length
        size = sum(len(encode_codes(c[None, :, : -(-t // hop)], **container_fields(model, digest, t))[0])
                   for c, t in zip(codes, lengths))
        recons[kbps] = recon
        result["codec"].append({"kbps": kbps, "levels": q, "nominal_kbps": model.bitrate(q) / 1000,
                                "achieved_kbps": achieved_kbps(size, sum(lengths), sr),
                                **clip_metrics(list(recon), list(x), lengths, sr),
                                "silence_dbfs": silence_level(recon, lengths, hop, sr)})
    result["opus"] = _evaluate_opus(x, lengths, sr, [r["kbps"] for r in result["codec"]], enabled=opus)
    settings = {"n": n, "segment_seconds": segment_seconds, "crop": "centre segment, zero-padded when shorter",
                "kbps": list(kbps_list), "opus": opus, "opus_tool": opus_tool()[0] if opus else None}
    result["protocol"] = protocol_mod.card(kind="audio", data=str(data_dir), split="all files, sorted", x=x,
                                           settings=settings, extra={"lengths": lengths})
    if out_dir is not None and recons:
        out = Path(out_dir)
        files = {}
        for kbps, recon in recons.items():
            path = out / f"spectrograms-{kbps:g}kbps.png"
            save_spectrogram_grid(x, recon, path, sample_rate=sr)
            files[f"spectrograms_{kbps:g}kbps"] = str(path)
        top = max(recons)
        files["examples"] = [str(p) for p in save_audio_examples(x, recons[top], out / f"examples-{top:g}kbps",
                                                                 sample_rate=sr)]
        result["files"] = files
    return result


def heldout_clips(data_dir: str | Path, *, sample_rate: int, n: int, segment: int
                  ) -> tuple[torch.Tensor, list[int], list[dict]]:
    """The clips `evaluate_audio` scores: the first `n` readable files under `data_dir` (sorted), centre
    crops of `segment` samples, zero-padded when shorter. Returns (B, 1, S) float32, each clip's scored
    length (samples) and the unreadable files ({"source", "error"}). ValueError if none is readable."""
    folder = AudioFolder(str(data_dir), sample_rate=sample_rate, segment_samples=segment, random_crop=False)
    clips, lengths, unreadable = [], [], []
    for i in range(len(folder)):
        if len(clips) == n:
            break
        try:
            raw = folder.load(i)
            clips.append(folder.crop(raw, np.random.default_rng(0)))  # zero-padded to the segment if short
            lengths.append(min(raw.shape[0], segment))
        except Exception as e:  # noqa: BLE001 - a bad file is reported, not fatal
            unreadable.append({"source": folder.describe(i), "error": f"{type(e).__name__}: {e}"})
    if not clips:
        raise ValueError(f"no readable audio in {data_dir}")
    # (B, 1, S); a causal codec: the padding after a clip never changes the clip's own output
    return torch.from_numpy(np.stack(clips))[:, None], lengths, unreadable


def silence_level(recon: torch.Tensor, lengths: list[int], hop: int, sample_rate: int) -> float | None:
    """Mean level (dBFS RMS, floored at -120) of the codec's output over digital silence: the zeros
    after each clip shorter than the batch, from two frames past its end (the decoder's tail) on;
    None without such a stretch of 0.1 s or more. Silence in should be silence out."""
    levels = []
    for y, t in zip(recon[:, 0].numpy(), lengths):
        start = (-(-t // hop) + 2) * hop
        if y.shape[-1] - start >= 0.1 * sample_rate:
            levels.append(max(rms_db(y[start:]), -120.0))
    return float(np.mean(levels)) if levels else None


def clip_metrics(ests: list[torch.Tensor], refs: list[torch.Tensor], lengths: list[int], sample_rate: int) -> dict:
    """`audio_metrics` of each clip over its first `lengths[i]` samples ((1, S) tensors), averaged
    over clips; a metric a clip cannot have (PESQ on too little speech) is averaged over the rest."""
    per_clip = [audio_metrics(e[None, :, :t], r[None, :, :t], sample_rate=sample_rate)
                for e, r, t in zip(ests, refs, lengths)]
    keys = dict.fromkeys(k for m in per_clip for k in m)
    return {k: float(np.nanmean([m[k] for m in per_clip if k in m])) for k in keys}


def _evaluate_opus(x: torch.Tensor, lengths: list[int], sample_rate: int, kbps_list: Sequence[float], *,
                   enabled: bool) -> dict:
    if not enabled:
        return {"available": False, "reason": "disabled (--no-opus)"}
    tool, why = opus_tool()
    if tool is None:
        return {"available": False, "reason": why}
    report: dict = {"available": True, "tool": tool, "results": [], "skipped": []}
    refs = x[:, 0].numpy()  # (B, S)
    for kbps in kbps_list:
        if kbps < OPUS_MIN_KBPS:
            report["skipped"].append({"kbps": kbps, "reason": f"below Opus's minimum of {OPUS_MIN_KBPS:g} kbps"})
            continue
        outs, size = [], 0
        for ref, t in zip(refs, lengths):
            y, nbytes = opus_round_trip(ref[:t], sample_rate, kbps, tool)  # (t,)
            outs.append(torch.from_numpy(y.astype(np.float32))[None])  # (1, t)
            size += nbytes
        report["results"].append({"kbps": kbps, "achieved_kbps": achieved_kbps(size, sum(lengths), sample_rate),
                                   **clip_metrics(outs, list(x), lengths, sample_rate)})
    return report
