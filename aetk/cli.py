"""The `aetk` command line: a table of verbs, each a small module of `aetk.verbs` that parses its
flags, calls one library function and prints.

Verb modules import their library code inside `run`, so `aetk --help` and a bad recipe answer
without loading torch. A mistake a user can fix (a bad recipe or flag, a missing or wrong path, a
damaged file, a run the guardrails stopped) is one line on stderr and a non-zero exit code: 2 for
configuration errors, 1 for the rest. `--debug` (or AETK_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aetk.verbs import bench, codec, config, encode, evaluate, export, import_vae, sample, train
from train.config import ConfigError, RunError

VERBS = {"train": train, "config": config, "export": export, "import": import_vae, "encode": encode,
         "eval": evaluate, "sample": sample, "codec": codec, "bench": bench}
"""verb -> module with `add(subparsers, name)`; each parser sets `func` to the module's `run`."""

USER_ERRORS = (ValueError, OSError, RunError)
"""What a user can act on (ConfigError, LoadError, ContainerError are ValueErrors; a missing file or a
full disk an OSError; a stopped run a RunError): one line, not a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aetk", description="Train, encode, evaluate, sample and export the "
                                     "autoencoders behind generative models, and the priors over their latents.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    for name, module in VERBS.items():
        module.add(sub, name)
    return parser


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text += f": {e.filename}"
    return text


def _setup_logging() -> None:
    """INFO and up from the first process; under torchrun or `accelerate launch` the others log errors only,
    marked with their rank, so a 2-process run prints each line once, as a 1-process run does."""
    rank = int(os.environ.get("RANK", "0") or 0)
    prefix = f"[rank {rank}] " if rank else ""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.ERROR,
                        format=f"{prefix}%(levelname)s %(name)s: %(message)s")
    for noisy in ("accelerate", "diffusers", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING if rank == 0 else logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `aetk train CONFIG --flag X key=value`: argparse stops filling `overrides` at the first option, so
    # key=value pairs after the options are picked up here rather than refused.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = args.debug or os.environ.get("AETK_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except ConfigError as e:
        if debug:
            raise
        print(f"aetk: config error: {_one_line(e)}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"aetk: error: {_one_line(e)} (--debug shows the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aetk: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
