"""`aetk codec ...`, and `aetk encode` / `aetk eval` of an audio codec: files in, files out.

The maths lives in `audio_codec/` (model, streaming, container); this module reads and writes audio,
`.aetk` files, token shards and reports.

- `compress`: WAV/FLAC/OGG -> `.aetk` (whole-file encode at the levels a bitrate allows).
- `decompress`: `.aetk` -> 16-bit WAV, refusing files made by another model or for other rates.
- `stream`: the real-time demo: chunks -> `StreamingEncoder` -> codes -> `StreamingDecoder` -> WAV,
  with per-chunk timing and a check that the codes equal a whole-file encode.
- `encode_audio`: a folder -> (n_q, frames) int16 token shards + `manifest.json` for priors,
  through `train/encode.py`'s shard / resume / manifest machinery.
- `evaluate_audio`: SI-SNR, mel and STFT distances and achieved bitrate per bitrate, beside Opus
  when `opusenc`/`opusdec` or an ffmpeg with libopus is installed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn.utils import parametrize

from audio_codec.container import ContainerError, read_codes, state_dict_hash, write_codes
from audio_codec.model import SoundStream
from audio_codec.streaming import StreamingDecoder, StreamingEncoder
from train.encode import EncodeOptions, _claim, _encode_shard, _merge_manifest, _shard_done, _shard_path, _Tokens

OPUS_MIN_KBPS = 6.0
"""libopus's lowest bitrate (opusenc accepts 6-256 kbit/s per channel)."""


class CodecMismatchError(ValueError):
    """An `.aetk` file that this model cannot decode (another model, rate, hop or codebook)."""


# --- shared helpers ----------------------------------------------------------------------------------------

def is_codec(path: str | Path) -> bool:
    """True when `path` holds an audio codec (run dir, checkpoint or exported model/ dir); False for
    anything else, including paths that do not exist (the other loaders then name the problem)."""
    from train.checkpoint import latest_checkpoint
    from train.config import load_config

    p = Path(path)
    for d in (p, p / "model"):
        if (d / "aetk_model.json").is_file():
            try:
                return json.loads((d / "aetk_model.json").read_text()).get("recipe", {}).get("kind") == "soundstream"
            except (OSError, ValueError):
                return False
    if not p.is_dir():
        return False
    ckpt = p if (p / "COMPLETE").is_file() else latest_checkpoint(p / "checkpoints")
    config = (ckpt or p) / "config.yaml"  # a run without a checkpoint yet: its recipe
    if not config.is_file():
        return False
    try:
        return load_config(config).model.kind == "soundstream"
    except ValueError:
        return False


def load_model(model_path: str | Path, weights: str = "ema") -> SoundStream:
    """The codec at `model_path` in eval mode; FileNotFoundError / ValueError naming what is wrong."""
    from train.export import load_codec

    if not Path(model_path).exists():
        raise FileNotFoundError(f"--model {model_path}: no such file or directory")
    try:
        return load_codec(model_path, weights=weights)
    except FileNotFoundError:
        if is_codec(model_path):  # a run still before its first checkpoint
            raise FileNotFoundError(f"{model_path}: an audio codec run with no checkpoint or exported model yet "
                                    "(wait for train.checkpoint_every steps)") from None
        raise


def codebook_bits(model: SoundStream) -> int:
    """Bits stored per code: ceil(log2(codebook_size)), at least 1."""
    return max(1, (model.codebook_size - 1).bit_length())


def _read_input(path: str | Path, sample_rate: int) -> torch.Tensor:
    """An audio file -> (1, 1, T) float32 mono at `sample_rate`."""
    from train.data.audio import load_audio

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        x = load_audio(str(path), sample_rate)  # (T,)
    except Exception as e:  # noqa: BLE001 - soundfile raises its own types; say which file and why
        raise ValueError(f"{path}: cannot read audio ({type(e).__name__}: {e})") from None
    return torch.from_numpy(np.ascontiguousarray(x))[None, None]  # (1, 1, T)


def _atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Run `write(tmp)` then rename tmp to `path`: a failure never leaves a partial output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_wav(path: str | Path, audio: torch.Tensor, sample_rate: int) -> Path:
    """(C, T) or (T,) float in [-1, 1] -> 16-bit PCM WAV, written atomically."""
    import soundfile as sf

    data = audio.detach().float().clamp(-1, 1).cpu().numpy()
    data = data.T if data.ndim == 2 else data  # soundfile wants (T, C)
    return _atomic(path, lambda tmp: sf.write(tmp, data, sample_rate, subtype="PCM_16", format="WAV"))


def _container_fields(model: SoundStream, model_hash: str, num_samples: int) -> dict:
    return dict(model_hash=model_hash, sample_rate=model.sample_rate, hop_length=model.hop_length,
                num_samples=num_samples, codebook_bits=codebook_bits(model), codebook_size=model.codebook_size)


# --- compress / decompress ---------------------------------------------------------------------------------

@torch.no_grad()
def compress(model_path: str | Path, wav_in: str | Path, out_path: str | Path, *, kbps: float = 6.0,
             weights: str = "ema") -> dict:
    """Encode an audio file (mono, resampled to the model rate) at the most levels `kbps` allows and
    write the `.aetk` container. Returns seconds, samples, frames, levels, nominal kbps (the codes'
    rate), achieved kbps (the whole file's size, header included, over the duration) and sizes."""
    model = load_model(model_path, weights)
    n_q = model.n_quantizers_for(kbps)
    x = _read_input(wav_in, model.sample_rate)  # (1, 1, T)
    codes = model.encode(x, n_q)  # (1, n_q, F): the batch is the container's channel axis
    digest = state_dict_hash(model.state_dict())
    header = None

    def write(tmp: Path) -> None:
        nonlocal header
        header = write_codes(tmp, codes, **_container_fields(model, digest, x.shape[-1]))

    out = _atomic(out_path, write)
    size = out.stat().st_size
    from eval.audio import achieved_kbps

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
def decompress(model_path: str | Path, aetk_in: str | Path, wav_out: str | Path, *, weights: str = "ema") -> dict:
    """Read an `.aetk` file (ContainerError says what is malformed), check it was written by this model
    (CodecMismatchError otherwise), decode, crop to the original length and write a 16-bit WAV at the
    model rate. Nothing is written on any error."""
    model = load_model(model_path, weights)
    if not Path(aetk_in).is_file():
        raise FileNotFoundError(f"{aetk_in}: no such file")
    codes, header = read_codes(aetk_in)  # (C, n_q, F)
    check_compatible(model, header)
    audio = model.decode(codes)[..., :header.num_samples]  # (C, 1, T)
    out = _write_wav(wav_out, audio[:, 0], model.sample_rate)
    return {"input": str(aetk_in), "output": str(out), "seconds": header.duration, "samples": header.num_samples,
            "sample_rate": model.sample_rate, "channels": header.channels, "frames": header.num_frames,
            "levels": header.n_quantizers, "kbps": header.kbps}


# --- streaming demo ----------------------------------------------------------------------------------------

def stream(model_path: str | Path, wav_in: str | Path, wav_out: str | Path, *, kbps: float = 6.0,
           chunk_ms: float = 20.0, threads: int = 1, weights: str = "ema") -> dict:
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
    model = load_model(model_path, weights)
    n_q = model.n_quantizers_for(kbps)
    x = _read_input(wav_in, model.sample_rate)  # (1, 1, T)
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
    out = _write_wav(wav_out, y[0, 0], model.sample_rate)
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


# --- token shards for priors -------------------------------------------------------------------------------

class _AudioSegments(torch.utils.data.Dataset):
    """The items `train/encode.py`'s shard writer encodes: consecutive `segment_samples` segments of
    every file in order. The last, partial segment is zero-padded when it holds at least half a
    segment and dropped otherwise (so a file under half a segment gives none: listed as `too_short`).
    A file whose header cannot be read becomes one unreadable item, so it is listed in the
    manifest's `bad` like any item that fails to decode.

    Item k -> {"k", "i": k, "x": (1, segment_samples) float32, "hash": sha256 of its samples}, or
    x=None with the error. Files are decoded whole; the last one is cached, as consecutive items
    share it.
    """

    def __init__(self, files: Sequence[str], *, sample_rate: int, segment_samples: int) -> None:
        import soundfile as sf

        self.files, self.sample_rate, self.segment_samples = list(files), sample_rate, segment_samples
        self.items: list[tuple[int, int, str | None]] = []  # (file, start sample, probe error)
        self.segments_per_file: list[int] = []
        self.too_short: list[str] = []
        for f, path in enumerate(self.files):
            try:
                info = sf.info(path)
                if info.frames <= 0:
                    raise ValueError("no samples")
                length = math.ceil(info.frames * sample_rate / info.samplerate)  # resample_poly's output length
            except Exception as e:  # noqa: BLE001 - an unreadable file is listed, never fatal
                self.items.append((f, 0, f"{type(e).__name__}: {e}"))
                self.segments_per_file.append(0)
                continue
            n = length // segment_samples + (length % segment_samples >= segment_samples / 2)
            self.items += [(f, j * segment_samples, None) for j in range(n)]
            self.segments_per_file.append(n)
            if n == 0:
                self.too_short.append(path)
        self.ds = self  # the writer asks `items.ds.describe(i)`
        self.n = self.total = len(self.items)  # no flipped copies
        self._cache: tuple[int, np.ndarray | str] | None = None

    def __len__(self) -> int:
        return self.total

    def describe(self, k: int) -> str:
        f, start, err = self.items[k]
        return self.files[f] if err else f"{self.files[f]}[{start}:{start + self.segment_samples}]"

    def _decode(self, f: int) -> np.ndarray | str:
        from train.data.audio import load_audio

        if self._cache is None or self._cache[0] != f:
            try:
                audio: np.ndarray | str = load_audio(self.files[f], self.sample_rate)
            except Exception as e:  # noqa: BLE001
                audio = f"{type(e).__name__}: {e}"
            self._cache = (f, audio)
        return self._cache[1]

    def __getitem__(self, k: int) -> dict:
        f, start, err = self.items[k]
        audio = err or self._decode(f)
        if isinstance(audio, str):
            return {"k": k, "i": k, "x": None, "error": audio}
        seg = audio[start:start + self.segment_samples]
        seg = np.pad(seg, (0, self.segment_samples - seg.shape[0])).astype(np.float32)  # (S,)
        return {"k": k, "i": k, "x": torch.from_numpy(seg)[None], "hash": hashlib.sha256(seg.tobytes()).hexdigest()}


class _AudioTokens(_Tokens):
    """Codec tokens: each segment -> (n_q, frames) codes; `_Tokens`' storage and codebook statistics,
    plus the rates a prior needs to turn its samples back into audio."""

    def __init__(self, model: SoundStream, opts: EncodeOptions, *, n_quantizers: int,
                 segments: _AudioSegments) -> None:
        self.model, self.opts = model, opts
        self.codebook_size = int(model.codebook_size)
        self.n_quantizers, self.segments = n_quantizers, segments

    @torch.no_grad()
    def encode(self, xs: torch.Tensor, keys: list[int]) -> torch.Tensor:
        """(B, 1, S) -> codes (B, n_q, F), fp32 compute: the codes `compress` would write."""
        return self.model.encode(xs, self.n_quantizers).cpu()

    def summarise(self, stats: dict[str, torch.Tensor], count: int, shape: list[int]) -> dict:
        m, seg = self.model, self.segments
        return {**super().summarise(stats, count, shape), "sample_rate": m.sample_rate,
                "hop_length": m.hop_length, "frame_rate": m.frame_rate, "n_quantizers": self.n_quantizers,
                "kbps": m.bitrate(self.n_quantizers) / 1000, "segment_samples": seg.segment_samples,
                "segment_seconds": seg.segment_samples / m.sample_rate,
                "files": [{"path": p, "segments": n} for p, n in zip(seg.files, seg.segments_per_file)],
                "too_short": seg.too_short}


def encode_audio(model_path: str | Path, data_dir: str | Path, out_dir: str | Path, *, segment_seconds: float = 5.0,
                 shard_size: int = 1024, kbps: float | None = None, batch_size: int = 8,
                 num_workers: int | None = None, weights: str = "ema", progress: bool = True) -> dict:
    """Every audio file under `data_dir` -> consecutive `segment_seconds` segments (see `_AudioSegments`
    for the last one) -> (n_q, frames) int16 codes at `kbps` (None: all levels), written as
    `train/encode.py` token shards (`tokens` (n, n_q, frames), `index`, `flip`, `code_counts`) and a
    `manifest.json` (format `aetk-tokens`: count, token_shape, shards, codebook statistics, model_hash
    (as in `.aetk` files), sample_rate, hop_length, frame_rate, n_quantizers, files, sources, bad).
    `latent_diffusion.latents.LatentShardDataset` reads it. Resumable like `aetk encode`; unreadable
    files are listed in `bad`, never fatal. Collective under a launcher."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from train.data.audio import AudioFolder

    if segment_seconds <= 0 or shard_size < 1 or batch_size < 1:
        raise ValueError(f"need segment_seconds > 0, shard_size >= 1, batch_size >= 1; got {segment_seconds}, "
                         f"{shard_size}, {batch_size}")
    state = PartialState(cpu=True)
    model = load_model(model_path, weights)
    n_q = model.num_quantizers if kbps is None else model.n_quantizers_for(kbps)
    segment_samples = max(1, round(segment_seconds * model.sample_rate))
    files = AudioFolder(str(data_dir), sample_rate=model.sample_rate, segment_samples=segment_samples).files
    items = _AudioSegments(files, sample_rate=model.sample_rate, segment_samples=segment_samples)
    if all(err for _, _, err in items.items):
        raise ValueError(f"no readable audio segment in {data_dir} ({len(files)} files; unreadable or shorter "
                         f"than half a segment of {segment_seconds} s)")
    digest = state_dict_hash(model.state_dict())
    opts = EncodeOptions(resolution=None, batch_size=batch_size, shard_size=shard_size, precision="no",
                         num_workers=num_workers, progress=progress)
    codec = _AudioTokens(model, opts, n_quantizers=n_q, segments=items)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _claim(out, {"kind": "audio", "model_hash": digest, "data": str(data_dir), "items": len(items),
                 "segment_samples": segment_samples, "n_quantizers": n_q, "shard_size": shard_size}, state)
    n_shards = -(-len(items) // shard_size)
    todo = [s for s in range(state.process_index, n_shards, state.num_processes)
            if not _shard_done(_shard_path(out, s))]
    bar = tqdm(total=sum(min(shard_size, len(items) - s * shard_size) for s in todo), unit="seg",
               desc=f"encode[{state.process_index}]", disable=not (progress and state.is_local_main_process),
               mininterval=1.0)
    for s in todo:
        _encode_shard(codec, items, s, out, opts, bar)
    bar.close()
    state.wait_for_everyone()
    manifest = None
    if state.is_main_process:
        manifest = _merge_manifest(out, n_shards, items, codec, digest, opts, str(data_dir))
    state.wait_for_everyone()
    return manifest if manifest is not None else json.loads((out / "manifest.json").read_text())


# --- evaluation --------------------------------------------------------------------------------------------

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
    import soundfile as sf

    from train.data.audio import load_audio

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
def evaluate_audio(model_path: str | Path, data_dir: str | Path, *, n: int = 16, segment_seconds: float = 5.0,
                   kbps_list: Sequence[float] = (1.5, 3, 6, 12), opus: bool = True, out_dir: str | Path | None = None,
                   weights: str = "ema") -> dict:
    """The codec on held-out clips: the first `n` readable files under `data_dir`, centre crops of
    `segment_seconds` (whole files when shorter). For each bitrate in the model's range: SI-SNR, mel and
    STFT distances (`eval.audio.audio_metrics`, per clip over its own length, then averaged: the
    zeros that batch short clips together are not scored, as EnCodec / DAC score whole utterances)
    and the achieved bitrate from each clip's `.aetk` size (header included); bitrates outside the
    range are listed in `skipped`. With `opus`, Opus at the
    bitrates the codec was evaluated at (those >= 6 kbps, its minimum) through opusenc/opusdec or
    ffmpeg, with the same metrics on the same clips; else `opus.available` is false with the reason.
    `out_dir`: a spectrogram grid per bitrate and example WAVs at the highest."""
    from audio_codec.container import encode_codes
    from eval.audio import achieved_kbps, save_audio_examples, save_spectrogram_grid
    from train.data.audio import AudioFolder

    model = load_model(model_path, weights)
    sr = model.sample_rate
    segment = max(1, round(segment_seconds * sr))
    folder = AudioFolder(str(data_dir), sample_rate=sr, segment_samples=segment, random_crop=False)
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
    x = torch.from_numpy(np.stack(clips))[:, None]  # (B, 1, S); causal codec: padding never changes a clip
    rates = [model.bitrate(q) / 1000 for q in range(1, model.num_quantizers + 1)]
    digest = state_dict_hash(model.state_dict())
    result: dict = {"model": str(model_path), "data": str(data_dir), "sample_rate": sr, "clips": x.shape[0],
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
        size = sum(len(encode_codes(c[None, :, : -(-t // hop)], **_container_fields(model, digest, t))[0])
                   for c, t in zip(codes, lengths))
        recons[kbps] = recon
        result["codec"].append({"kbps": kbps, "levels": q, "nominal_kbps": model.bitrate(q) / 1000,
                                "achieved_kbps": achieved_kbps(size, sum(lengths), sr),
                                **clip_metrics(list(recon), list(x), lengths, sr),
                                "silence_dbfs": silence_level(recon, lengths, hop, sr)})
    result["opus"] = _evaluate_opus(x, lengths, sr, [r["kbps"] for r in result["codec"]], enabled=opus)
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


def silence_level(recon: torch.Tensor, lengths: list[int], hop: int, sample_rate: int) -> float | None:
    """Mean level (dBFS RMS, floored at -120) of the codec's output over digital silence: the zeros
    after each clip shorter than the batch, from two frames past its end (the decoder's tail) on;
    None without such a stretch of 0.1 s or more. Silence in should be silence out."""
    from train.data.audio import rms_db

    levels = []
    for y, t in zip(recon[:, 0].numpy(), lengths):
        start = (-(-t // hop) + 2) * hop
        if y.shape[-1] - start >= 0.1 * sample_rate:
            levels.append(max(rms_db(y[start:]), -120.0))
    return float(np.mean(levels)) if levels else None


def clip_metrics(ests: list[torch.Tensor], refs: list[torch.Tensor], lengths: list[int], sample_rate: int) -> dict:
    """`audio_metrics` of each clip over its first `lengths[i]` samples ((1, S) tensors), averaged
    over clips; a metric a clip cannot have (PESQ on too little speech) is averaged over the rest."""
    from eval.audio import audio_metrics

    per_clip = [audio_metrics(e[None, :, :t], r[None, :, :t], sample_rate=sample_rate)
                for e, r, t in zip(ests, refs, lengths)]
    keys = dict.fromkeys(k for m in per_clip for k in m)
    return {k: float(np.nanmean([m[k] for m in per_clip if k in m])) for k in keys}


def _evaluate_opus(x: torch.Tensor, lengths: list[int], sample_rate: int, kbps_list: Sequence[float], *,
                   enabled: bool) -> dict:
    from eval.audio import achieved_kbps

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


__all__ = ["CodecMismatchError", "ContainerError", "check_compatible", "compress", "decompress", "encode_audio",
           "evaluate_audio", "is_codec", "load_model", "opus_tool", "stream"]
