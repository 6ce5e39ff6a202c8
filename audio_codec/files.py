"""The codec on files: `.aetk` compression and decompression, and the real-time streaming demo.

The maths lives beside this module (model, streaming, container); these functions read and write
audio and `.aetk` files for a loaded `SoundStream` (`SoundStream.from_pretrained`).

- `compress`: WAV/FLAC/OGG -> `.aetk` (whole-file encode at the levels a bitrate allows).
- `decompress`: `.aetk` -> 16-bit WAV, refusing files made by another model or for other rates.
- `stream`: chunks -> `StreamingEncoder` -> codes -> `StreamingDecoder` -> WAV, with per-chunk
  timing and a check that the codes equal a whole-file encode.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.nn.utils import parametrize

from audio_codec.container import ContainerError, achieved_kbps, read_codes, state_dict_hash, write_codes
from audio_codec.data import load_audio
from audio_codec.model import SoundStream
from audio_codec.streaming import StreamingDecoder, StreamingEncoder
from tokenizers_ae.files import atomic_write


class CodecMismatchError(ValueError):
    """An `.aetk` file that this model cannot decode (another model, rate, hop or codebook)."""


def codebook_bits(model: SoundStream) -> int:
    """Bits stored per code: ceil(log2(codebook_size)), at least 1."""
    return max(1, (model.codebook_size - 1).bit_length())


def read_input(path: str | Path, sample_rate: int) -> torch.Tensor:
    """An audio file -> (1, 1, T) float32 mono at `sample_rate`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        x = load_audio(str(path), sample_rate)  # (T,)
    except Exception as e:  # noqa: BLE001 - soundfile raises its own types; say which file and why
        raise ValueError(f"{path}: cannot read audio ({type(e).__name__}: {e})") from None
    return torch.from_numpy(np.ascontiguousarray(x))[None, None]  # (1, 1, T)


def write_wav(path: str | Path, audio: torch.Tensor, sample_rate: int) -> Path:
    """(C, T) or (T,) float in [-1, 1] -> 16-bit PCM WAV, written atomically."""
    data = audio.detach().float().clamp(-1, 1).cpu().numpy()
    data = data.T if data.ndim == 2 else data  # soundfile wants (T, C)
    return atomic_write(path, lambda tmp: sf.write(tmp, data, sample_rate, subtype="PCM_16", format="WAV"))


def container_fields(model: SoundStream, model_hash: str, num_samples: int) -> dict:
    return dict(model_hash=model_hash, sample_rate=model.sample_rate, hop_length=model.hop_length,
                num_samples=num_samples, codebook_bits=codebook_bits(model), codebook_size=model.codebook_size)


@torch.no_grad()
def compress(model: SoundStream, wav_in: str | Path, out_path: str | Path, *, kbps: float = 6.0) -> dict:
    """Encode an audio file (mono, resampled to the model rate) at the most levels `kbps` allows and
    write the `.aetk` container. Returns seconds, samples, frames, levels, nominal kbps (the codes'
    rate), achieved kbps (the whole file's size, header included, over the duration) and sizes."""
    n_q = model.n_quantizers_for(kbps)
    x = read_input(wav_in, model.sample_rate)  # (1, 1, T)
    codes = model.encode(x, n_q)  # (1, n_q, F): the batch is the container's channel axis
    digest = state_dict_hash(model.state_dict())
    header = None

    def write(tmp: Path) -> None:
        nonlocal header
        header = write_codes(tmp, codes, **container_fields(model, digest, x.shape[-1]))

    out = atomic_write(out_path, write)
    size = out.stat().st_size
    return {"input": str(wav_in), "output": str(out), "seconds": header.duration, "samples": header.num_samples,
            "sample_rate": model.sample_rate, "frames": header.num_frames, "levels": n_q,
            "nominal_kbps": header.kbps, "achieved_kbps": achieved_kbps(size, header.num_samples, model.sample_rate),
            "bytes": size, "payload_bytes": header.payload_bytes, "overhead_bytes": size - header.payload_bytes,
            "model_hash": digest}


def check_compatible(model: SoundStream, header, *, model_hash: str | None = None) -> None:
    """Raise CodecMismatchError naming both values when `header` was not written for `model`."""
    digest = model_hash or state_dict_hash(model.state_dict(), length=len(header.model_hash))
    checks = [("model hash", header.model_hash, digest[:len(header.model_hash)]),
              ("sample rate", header.sample_rate, model.sample_rate),
              ("hop length", header.hop_length, model.hop_length),
              ("codebook size", header.codebook_size, model.codebook_size)]
    for name, theirs, ours in checks:
        if theirs != ours:
            raise CodecMismatchError(f"this file was made by another codec: its {name} is {theirs}, the model's "
                                     f"is {ours}; decode it with the model that wrote it")
    if header.n_quantizers > model.num_quantizers:
        raise CodecMismatchError(f"the file has {header.n_quantizers} levels, the model {model.num_quantizers}")


@torch.no_grad()
def decompress(model: SoundStream, aetk_in: str | Path, wav_out: str | Path) -> dict:
    """Read an `.aetk` file (ContainerError says what is malformed), check it was written by this model
    (CodecMismatchError otherwise), decode, crop to the original length and write a 16-bit WAV at the
    model rate. Nothing is written on any error."""
    if not Path(aetk_in).is_file():
        raise FileNotFoundError(f"{aetk_in}: no such file")
    codes, header = read_codes(aetk_in)  # (C, n_q, F)
    check_compatible(model, header)
    audio = model.decode(codes)[..., :header.num_samples]  # (C, 1, T)
    out = write_wav(wav_out, audio[:, 0], model.sample_rate)
    return {"input": str(aetk_in), "output": str(out), "seconds": header.duration, "samples": header.num_samples,
            "sample_rate": model.sample_rate, "channels": header.channels, "frames": header.num_frames,
            "levels": header.n_quantizers, "kbps": header.kbps}


# --- streaming demo ----------------------------------------------------------------------------------------

def stream(model: SoundStream, wav_in: str | Path, wav_out: str | Path, *, kbps: float = 6.0,
           chunk_ms: float = 20.0, threads: int = 1) -> dict:
    """Stream a file through the codec as a live call would: `chunk_ms` of audio at a time into a
    `StreamingEncoder`, each chunk's codes straight into a `StreamingDecoder`, the output written.

    Reports per-chunk compute time (encode + decode, ms) against the chunk duration, the real-time
    factor (compute time / audio duration; < 1 is faster than real time), the algorithmic latency
    (one frame: a frame's codes exist once its last sample has arrived) and whether the streamed codes
    equal a whole-file encode (`codes_equal_offline`) and how far the streamed audio is from a
    whole-file decode. Weight norms are computed once (`parametrize.cached`), which leaves the
    arithmetic, and so the codes, exactly those of `compress`. Runs on `threads` torch threads (one by
    default: a 20 ms chunk is too little work to split, and hand-offs cost more than they save).
    """
    if chunk_ms <= 0:
        raise ValueError(f"--chunk-ms must be positive, got {chunk_ms}")
    n_q = model.n_quantizers_for(kbps)
    x = read_input(wav_in, model.sample_rate)  # (1, 1, T)
    t = x.shape[-1]
    chunk = max(1, round(model.sample_rate * chunk_ms / 1000))
    enc, dec = StreamingEncoder(model, n_q), StreamingDecoder(model)
    codes, audio, times = [], [], []
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with parametrize.cached(), torch.inference_mode():
            for start in range(0, t, chunk):
                t0 = time.perf_counter()
                c = enc.push(x[..., start:start + chunk])  # (1, n_q, f)
                audio.append(dec.push(c))  # (1, 1, f * hop)
                times.append(time.perf_counter() - t0)
                codes.append(c)
            t0 = time.perf_counter()
            c = enc.flush()  # the last partial frame, zero-padded
            audio.append(dec.push(c))
            flush_s = time.perf_counter() - t0
            codes.append(c)
            streamed = torch.cat(codes, dim=-1)  # (1, n_q, F)
            offline = model.encode(x, n_q)  # (1, n_q, F)
            reference = model.decode(offline)[..., :t]
    finally:
        torch.set_num_threads(prev_threads)
    y = torch.cat(audio, dim=-1)[..., :t]  # (1, 1, T)
    out = write_wav(wav_out, y[0, 0], model.sample_rate)
    ms = np.array(times) * 1000
    seconds = t / model.sample_rate
    return {
        "input": str(wav_in), "output": str(out), "seconds": seconds, "sample_rate": model.sample_rate,
        "levels": n_q, "nominal_kbps": model.bitrate(n_q) / 1000, "chunks": len(times),
        "chunk_samples": chunk, "chunk_ms": chunk / model.sample_rate * 1000, "threads": threads,
        "chunk_compute_ms": {"mean": float(ms.mean()), "p95": float(np.percentile(ms, 95)), "max": float(ms.max())},
        "chunks_over_budget": int((ms > chunk / model.sample_rate * 1000).sum()),
        "flush_ms": flush_s * 1000,
        "real_time_factor": (float(ms.sum()) / 1000 + flush_s) / seconds,
        "algorithmic_latency_ms": enc.latency_samples / model.sample_rate * 1000,
        "frames": streamed.shape[-1],
        "codes_equal_offline": bool(torch.equal(streamed, offline)),
        "max_abs_diff_offline_audio": float((y - reference).abs().max()) if t else 0.0,
    }


__all__ = ["CodecMismatchError", "ContainerError", "check_compatible", "compress", "decompress",
           "read_input", "stream", "write_wav"]
