"""One module per `aetk` verb (`aetk.cli.VERBS`): `add(subparsers, name)` declares its flags and
`run(args)` calls the library and prints. Shared flag types and output helpers live here."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokenizers_ae.data import BUILTIN_DIGITS


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe, e.g. configs/kl-f4-tiny.yaml")
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                   help="override any recipe key with dotted.key=value, e.g. train.max_steps=100")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="also write the printed JSON result to FILE")


def add_video_args(p: argparse.ArgumentParser) -> None:
    """A video VAE's clip: `--frames`, `--frame-stride` and `--builtin-digits` (encode and eval)."""
    p.add_argument("--frames", type=positive_int, default=17,
                   help="video VAE: frames per clip, 1 + k * the temporal factor (default 17)")
    p.add_argument("--frame-stride", type=positive_int, default=1, help="video VAE: take every n-th frame (1)")
    p.add_argument("--builtin-digits", type=positive_int, default=BUILTIN_DIGITS,
                   help=f"video VAE on builtin:moving-mnist / builtin:moving-digits: "
                        f"digits per clip ({BUILTIN_DIGITS})")


def bf16_is_emulated() -> bool:
    """No GPU, and a CPU without AMX or AVX512-BF16: oneDNN emulates bf16 there, about 6.5x slower than fp32
    (`aetk bench encode` on a 2-core AVX2 EPYC: benchmarks/encode-klf8-128-avx2.json)."""
    import torch

    from tokenizers_ae.precision import cpu_has_fast_bf16

    return not torch.cuda.is_available() and not cpu_has_fast_bf16()


def note_emulated_bf16(precision: str) -> None:
    """One line on stderr when `--precision` asks for bf16 compute on a CPU that emulates it."""
    if precision in ("bf16", "auto", "auto-bf16") and bf16_is_emulated():
        print(f"note: --precision {precision} computes in bf16, which this CPU emulates (no AMX or AVX512-BF16): "
              "about 6.5x slower than --precision no (fp32) here", file=sys.stderr)


def emit(result: dict, json_path: str | None) -> int:
    """Print a JSON result, and write it to --json too."""
    text = json.dumps(result, indent=1)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
    return 0


def files_dir(out_dir: str | None, json_path: str | None) -> str:
    """Where a report's figures go: --out-dir, else beside --json, else ./eval-out."""
    if out_dir:
        return out_dir
    return str(Path(json_path).with_suffix("")) + "-files" if json_path else "eval-out"
