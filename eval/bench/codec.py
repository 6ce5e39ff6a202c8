"""`aetk bench codec`: encode + decode speed of aetk's SoundStream codec against transformers'
`EncodecModel` (default config: 24 kHz, 75 Hz frames, 14.85M encoder + decoder parameters), at
the same bitrate (6 kbps = 8 levels x 1024 codes at 75 Hz), one mono stream, batch 1.

Reported per precision (fp32, bf16 autocast), as real-time factors (audio seconds / wall seconds):

- `encodec`: `EncodecModel.encode(x, bandwidth=kbps)` then `.decode(codes, scales)`, weight norm
  kept (transformers has no removal method, so that is what it ships);
- `encodec_folded`: the same model with every weight norm folded into a plain weight (one call of
  `audio_codec.seanet.fold_weight_norm_`; same outputs);
- `ours`: `SoundStream.encode(x, n_q)` then `.decode(codes)` after `fold_weight_norm()`;
- `ours_streaming`: `StreamingEncoder.push` / `StreamingDecoder.push` chunk by chunk (each chunk's
  codes decoded as soon as they exist), for each chunk length in `chunk_ms`.

Parameter counts compare like with like: encoder + decoder, as built (with the weight-norm gains,
as training sees them; `params_encoder_decoder_folded` without). Codebooks are not counted on either
side (both hold 32 x 1024 x 128 = 4.19M code values: aetk as quantizer parameters, EnCodec as the
`embed` buffers, plus its EMA state).

The fast architecture (`fast_codec_kwargs`, `arch="fast"`): EnCodec's SEANet spends its time at
the high rates (32 channels at 24 kHz and 64 at 12 kHz: most of the ELUs, copies and small,
inefficient convs) and in a sequential 2-layer 512-wide LSTM, while its parameters sit at the low
rates. Three stages with strides 8, 5, 8 (hop 320, 75 Hz; kernels 2 x stride) visit 24 kHz once,
at 16 channels, then 3 kHz at 64 and 600 Hz at 256; the parameters move to where they are cheap:
the 600 Hz -> 75 Hz strided conv (kernel 16, 256 -> 640) and a one-layer 640-wide LSTM at 75 Hz.
Same latent width (128), same RVQ (32 x 1024; 8 levels = 6 kbps), 0.93x EnCodec's parameters.
On a quiet machine (2 threads) it runs 3.2-3.6x EnCodec's speed in fp32 and 4.4-4.8x in bf16 (2.7x before
aetk's vectorised ELU, `audio_codec.seanet.ELU`).

Streaming cost per chunk is mostly fixed: every chunk reads every weight (~7M per side, more than
the 32 MB L3 here in fp32) and runs each layer on a few frames, where kernels run far below their
peak. `step` therefore routes weight-heavy layers through one matmul with a oneDNN-packed weight
(`audio_codec.seanet.fast_linear`: convs whose outputs are fewer than their channels, the
transposed convs, an unrolled LSTM) and the quantizer through an indices-only search with cached
codebook tables; that halved the per-chunk cost. What stays is the 75 Hz LSTM (one (1, H) x
(H, 4H) product per frame, bandwidth-bound, about twice mkldnn's whole-sequence cost per step)
and per-op dispatch. Whole-file the same work is spread over the file, so short chunks lose:
see `smallest_chunk_ms_within_target`.

Timing: every variant runs once to warm up, then the variants alternate for `repeats` rounds and
each reports the median, so a noisy machine slows all of them alike. Small streaming chunks run
hundreds of tiny ops each; with 2 threads on a machine where another process holds a core, every
op waits for the descheduled OpenMP thread (milliseconds each), so streaming numbers from a busy
machine are meaningless; `loadavg` is recorded to show how busy it was.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from audio_codec.model import SoundStream, build_soundstream
from audio_codec.seanet import ELU, fold_weight_norm_
from audio_codec.streaming import StreamingDecoder, StreamingEncoder

SPEED_TARGET = 2.0
"""The fast codec is on target when its real-time factor is at least this many times EnCodec's."""
STREAMING_TARGET = 1.3
"""Streaming is on target when it is at most this many times slower than whole-file."""
PARAMS_TOLERANCE = 0.25
"""Comparable size: encoder + decoder parameters within this fraction of EnCodec's."""


def fast_codec_kwargs() -> dict:
    """`build_soundstream` keyword arguments of the fast 24 kHz codec: hop 320 (75 Hz), 128-dim
    latents, 32 x 1024 RVQ (6 kbps = 8 levels); 13.74M encoder + decoder parameters (EnCodec: 14.85M)."""
    return dict(sample_rate=24000, ratios=(8, 5, 8), stage_channels=(16, 64, 256, 640), lstm_layers=1,
                dimension=128, num_quantizers=32, codebook_size=1024)


def count_parameters(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def bench_signal(seconds: float, sample_rate: int, *, seed: int = 0) -> Tensor:
    """(1, 1, T) mono audio in [-1, 1]: three tones (220, 1330, 5210 Hz) plus fixed-seed white noise."""
    n = int(round(seconds * sample_rate))
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    tones = 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.15 * torch.sin(2 * math.pi * 1330 * t + 0.5) \
        + 0.05 * torch.sin(2 * math.pi * 5210 * t + 1.0)
    noise = 0.05 * torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (tones + noise).clamp(-1, 1).float().view(1, 1, n)  # (1, 1, T)


# --- the two codecs ---------------------------------------------------------------------------


def build_encodec(overrides: dict | None = None):
    """transformers `EncodecModel(EncodecConfig(**overrides))` with random weights, eval mode."""
    from transformers import EncodecConfig, EncodecModel  # transformers: the reference only

    return EncodecModel(EncodecConfig(**(overrides or {}))).eval()


def encodec_roundtrip(model, x: Tensor, kbps: float) -> Tensor:
    """x (B, C, T) -> codes at `kbps` -> audio (B, C, T), as transformers' API wants it."""
    enc = model.encode(x, bandwidth=kbps)  # audio_codes (chunks=1, B, n_q, F), audio_scales [None]
    out = model.decode(enc.audio_codes, enc.audio_scales, last_frame_pad_length=enc.last_frame_pad_length)
    return out.audio_values[..., : x.shape[-1]]  # (B, C, T)


def ours_roundtrip(model: SoundStream, x: Tensor, n_quantizers: int) -> Tensor:
    """x (B, C, T) -> codes (B, n_q, F) -> audio (B, C, T)."""
    return model.decode(model.encode(x, n_quantizers))[..., : x.shape[-1]]


def ours_streaming(model: SoundStream, x: Tensor, n_quantizers: int, chunk: int) -> Tensor:
    """Push x (B, C, T) `chunk` samples at a time; decode each chunk's codes as they arrive -> (B, C, T)."""
    encoder, decoder = StreamingEncoder(model, n_quantizers), StreamingDecoder(model)
    out = []
    for start in range(0, x.shape[-1], chunk):
        codes = encoder.push(x[..., start : start + chunk])  # (B, n_q, f), f >= 0
        if codes.shape[-1]:
            out.append(decoder.push(codes))  # (B, C, f * hop)
    codes = encoder.flush()
    if codes.shape[-1]:
        out.append(decoder.push(codes))
    return torch.cat(out, dim=-1)[..., : x.shape[-1]]


def _streaming_codes(model: SoundStream, x: Tensor, n_quantizers: int, chunk: int) -> Tensor:
    encoder = StreamingEncoder(model, n_quantizers)
    codes = [encoder.push(x[..., s : s + chunk]) for s in range(0, x.shape[-1], chunk)]
    return torch.cat([*codes, encoder.flush()], dim=-1)  # (B, n_q, F)


# --- timing -----------------------------------------------------------------------------------


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function: one warm-up call each, then `repeats` rounds in which the
    functions alternate (so load changes hit all of them alike)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def _precision_context(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision == "fp32":
        return nullcontext()
    raise ValueError(f"precision must be 'fp32', 'bf16' or 'both', got {precision!r}")


def bench_codec(*, seconds: float = 10.0, repeats: int = 3, precision: str = "both", kbps: float = 6.0,
                arch: str = "fast", chunk_ms: float | Sequence[float] = (20, 80, 320, 640, 1280, 2560),
                threads: int | None = 2, ours_kwargs: dict | None = None,
                encodec_config_overrides: dict | None = None, encodec_folded: bool = True, seed: int = 0,
                verbose: bool = True) -> dict:
    """Real-time factors of encode + decode at `kbps` for EnCodec (transformers), ours whole-file and
    ours streaming in chunks of each `chunk_ms`, per precision; a JSON-able dict (and a printed table).

    Args:
        seconds: length of the test signal (fixed-seed tones + noise, mono, batch 1).
        repeats: timed rounds (variants alternate within a round; medians reported).
        precision: "fp32", "bf16" (CPU autocast around both codecs) or "both".
        kbps: the bitrate; must be one of EnCodec's bandwidths and a bitrate of ours.
        arch: "fast" (`fast_codec_kwargs()`) or "encodec" (`build_soundstream` defaults, EnCodec's
            architecture); `ours_kwargs` replaces it (tests use tiny models).
        chunk_ms: streaming chunk length(s), milliseconds.
        threads: torch intra-op threads for the run (restored after); None leaves torch's setting.
        encodec_config_overrides: `EncodecConfig` keyword arguments (tests).
        encodec_folded: also time EnCodec with weight norm folded.
    """
    precisions = ["fp32", "bf16"] if precision == "both" else [precision]
    for p in precisions:
        _precision_context(p)  # validates
    if ours_kwargs is None:
        if arch not in ("fast", "encodec"):
            raise ValueError(f"arch must be 'fast' or 'encodec', got {arch!r}")
        ours_kwargs = fast_codec_kwargs() if arch == "fast" else {}
        arch_name = arch
    else:
        arch_name = "custom"
    chunks_ms = [float(chunk_ms)] if isinstance(chunk_ms, (int, float)) else [float(c) for c in chunk_ms]

    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            encodec = build_encodec(encodec_config_overrides)
            cfg = encodec.config
            sample_rate = cfg.sampling_rate
            ours = build_soundstream(**{"sample_rate": sample_rate, **ours_kwargs}).eval()
        result = _bench(encodec=encodec, ours_built=ours, precisions=precisions, seconds=seconds, repeats=repeats,
                        kbps=kbps, chunks_ms=chunks_ms, encodec_folded=encodec_folded, seed=seed)
        result["config"].update(arch=arch_name, ours_kwargs=_jsonable(ours_kwargs),
                                encodec_config_overrides=_jsonable(encodec_config_overrides or {}),
                                threads=torch.get_num_threads())
    finally:
        torch.set_num_threads(previous_threads)
    result["table"] = format_table(result)
    if verbose:
        print(result["table"])
    return result


def _bench(*, encodec, ours_built: SoundStream, precisions: list[str], seconds: float, repeats: int, kbps: float,
           chunks_ms: list[float], encodec_folded: bool, seed: int) -> dict:
    cfg = encodec.config
    sample_rate = cfg.sampling_rate
    ours = ours_built.fold_weight_norm()  # a copy; `ours_built` keeps its weight norms for the counts
    n_q_encodec = encodec.quantizer.get_num_quantizers_for_bandwidth(kbps)
    if kbps not in cfg.target_bandwidths:
        raise ValueError(f"EnCodec supports {list(cfg.target_bandwidths)} kbps, not {kbps}")
    n_q_ours = ours.n_quantizers_for(kbps)
    bitrates = {"encodec": n_q_encodec * cfg.codebook_nbits * cfg.frame_rate,
                "ours": ours.bitrate(n_q_ours)}
    if not math.isclose(bitrates["encodec"], bitrates["ours"]):
        raise ValueError(f"bitrates differ at {kbps} kbps: {bitrates}")

    x = bench_signal(seconds, sample_rate, seed=seed)  # (1, 1, T)
    chunks = {f"{ms:g}": max(1, round(ms * sample_rate / 1000)) for ms in chunks_ms}
    folded = fold_weight_norm_(copy.deepcopy(encodec)) if encodec_folded else None

    with torch.inference_mode():
        fold_error = float((encodec_roundtrip(folded, x, kbps) - encodec_roundtrip(encodec, x, kbps)).abs().max()) \
            if folded is not None else None
        whole_codes = ours.encode(x, n_q_ours)
        streaming_codes_equal = {name: bool(torch.equal(_streaming_codes(ours, x, n_q_ours, n), whole_codes))
                                 for name, n in chunks.items()}

    fns: dict[str, Callable[[], object]] = {"encodec": lambda: encodec_roundtrip(encodec, x, kbps)}
    if folded is not None:
        fns["encodec_folded"] = lambda: encodec_roundtrip(folded, x, kbps)
    fns["ours"] = lambda: ours_roundtrip(ours, x, n_q_ours)
    for name, n in chunks.items():
        fns[f"ours_streaming_{name}ms"] = lambda n=n: ours_streaming(ours, x, n_q_ours, n)

    rtf: dict[str, dict] = {}
    loadavg: dict[str, list[float]] = {"start": list(os.getloadavg())}
    for precision in precisions:
        with torch.inference_mode(), _precision_context(precision):
            times = time_interleaved(fns, repeats)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        r = {name: seconds / med[name] for name in fns if not name.startswith("ours_streaming")}
        r["ours_streaming"] = {name: seconds / med[f"ours_streaming_{name}ms"] for name in chunks}
        r["ours_vs_encodec"] = r["ours"] / r["encodec"]
        r["meets_speed_target"] = r["ours_vs_encodec"] >= SPEED_TARGET
        if folded is not None:
            r["ours_vs_encodec_folded"] = r["ours"] / r["encodec_folded"]
        r["streaming_slowdown"] = {name: r["ours"] / v for name, v in r["ours_streaming"].items()}
        within = [float(name) for name, s in r["streaming_slowdown"].items() if s <= STREAMING_TARGET]
        r["smallest_chunk_ms_within_target"] = min(within) if within else None
        r["seconds"] = {name: ts for name, ts in times.items()}
        rtf[precision] = r
        loadavg[f"after_{precision}"] = list(os.getloadavg())

    # As built (weight norm: direction v and gain g per output channel), i.e. what training updates;
    # folded, each g disappears into its weight.
    enc_params = count_parameters(encodec.encoder, encodec.decoder)
    our_params = count_parameters(ours_built.encoder, ours_built.decoder)
    folded_counts = {"encodec": count_parameters(folded.encoder, folded.decoder) if folded is not None else None,
                     "ours": count_parameters(ours.encoder, ours.decoder)}
    return {
        "config": {"seconds": seconds, "repeats": repeats, "kbps": kbps, "sample_rate": sample_rate,
                   "precisions": precisions, "chunk_ms": chunks_ms, "batch": 1, "channels": 1,
                   "torch": torch.__version__, "speed_target": SPEED_TARGET,
                   "streaming_target": STREAMING_TARGET, "params_tolerance": PARAMS_TOLERANCE},
        "encodec": {"params_encoder_decoder": enc_params,
                    "params_encoder_decoder_folded": folded_counts["encodec"], "n_quantizers": n_q_encodec,
                    "frame_rate": cfg.frame_rate, "hop_length": cfg.hop_length,
                    "codebook_values": sum(layer.codebook.embed.numel() for layer in encodec.quantizer.layers),
                    "weight_norm": "kept in `encodec` (transformers ships it; no removal method); "
                                   "folded in `encodec_folded`" if folded is not None else "kept",
                    "fold_max_abs_error": fold_error},
        "ours": {"params_encoder_decoder": our_params, "params_encoder_decoder_folded": folded_counts["ours"],
                 "n_quantizers": n_q_ours, "frame_rate": ours.frame_rate,
                 "hop_length": ours.hop_length, "codebook_values": count_parameters(ours.quantizer),
                 "weight_norm": "folded", "streaming_codes_equal_whole_fp32": streaming_codes_equal},
        "params_ratio": our_params / enc_params,
        "params_within_tolerance": abs(our_params / enc_params - 1) <= PARAMS_TOLERANCE,
        "bitrate_bps": bitrates["ours"],
        "rtf": rtf,
        "elu": bench_elu(seconds, sample_rate),
        "loadavg": loadavg,
    }


def format_table(result: dict) -> str:
    """A markdown table: one row per precision."""
    chunks = list(next(iter(result["rtf"].values()))["ours_streaming"])
    enc, ours = result["encodec"], result["ours"]
    head = ["precision", "EnCodec RTF", "EnCodec folded RTF", "ours RTF", "ours / EnCodec", "ours / folded",
            *[f"stream {c} ms: RTF (slowdown)" for c in chunks], f"smallest chunk <= {STREAMING_TARGET}x"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    for precision, r in result["rtf"].items():
        cells = [precision, fmt(r["encodec"]), fmt(r.get("encodec_folded")), fmt(r["ours"]),
                 fmt(r["ours_vs_encodec"]), fmt(r.get("ours_vs_encodec_folded")),
                 *[f"{r['ours_streaming'][c]:.2f} ({r['streaming_slowdown'][c]:.2f}x)" for c in chunks],
                 "-" if (c := r["smallest_chunk_ms_within_target"]) is None else f"{c:g} ms"]
        lines.append("| " + " | ".join(cells) + " |")
    cfg = result["config"]
    lines.append(f"\n{cfg['seconds']:g} s mono at {cfg['sample_rate']} Hz, {result['bitrate_bps'] / 1000:g} kbps "
                 f"({ours['n_quantizers']} levels), {cfg['threads']} threads, median of {cfg['repeats']}. "
                 f"Encoder + decoder parameters: EnCodec {enc['params_encoder_decoder'] / 1e6:.2f}M, ours "
                 f"{ours['params_encoder_decoder'] / 1e6:.2f}M ({result['params_ratio']:.2f}x); codebooks not counted.")
    if "elu" in result:
        e = result["elu"]
        lines.append(f"ELU on (1, 16, {cfg['seconds']:g} s): torch {e['torch_ms']:.1f} ms, aetk {e['aetk_ms']:.1f} ms "
                     f"({e['speedup']:.1f}x; outputs within {e['max_abs_difference']:.1e}).")
    return "\n".join(lines)


def bench_elu(seconds: float, sample_rate: int, *, repeats: int = 5) -> dict:
    """torch's `nn.ELU` against `audio_codec.seanet.ELU` on a (1, 16, T) sample-rate activation (the
    fast codec's widest ELU input), fp32, inference: milliseconds per call (medians), the speedup
    and the largest difference between their outputs."""
    x = torch.randn(1, 16, int(seconds * sample_rate))
    ours, ref = ELU(), nn.ELU()
    with torch.inference_mode():
        times = time_interleaved({"torch": lambda: ref(x), "aetk": lambda: ours(x)}, repeats)
        max_diff = float((ours(x) - ref(x)).abs().max())
    med = {name: statistics.median(ts) * 1000 for name, ts in times.items()}
    return {"torch_ms": med["torch"], "aetk_ms": med["aetk"], "speedup": med["torch"] / med["aetk"],
            "max_abs_difference": max_diff}


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
