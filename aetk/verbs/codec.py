"""`aetk codec compress | decompress | stream`: an audio codec on files."""

from __future__ import annotations

import argparse

from aetk.verbs import add_json, emit, positive_float, positive_int


def add(sub, name: str) -> None:
    codec = sub.add_parser(name, help="audio codec: compress, decompress, stream",
                           description="Compress audio to .aetk files, decompress them, or run the streaming "
                                       "demo; each prints a JSON summary. --model: an audio codec run dir, "
                                       "checkpoint or exported model/ dir (model.kind: soundstream).",
                           epilog="examples:\n  aetk codec compress speech.wav speech.aetk --model runs/codec-tiny "
                                  "--kbps 6\n  aetk codec decompress speech.aetk out.wav --model runs/codec-tiny",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = codec.add_subparsers(dest="codec", required=True, metavar="ACTION")
    for action, help_text, out_help in (
            ("compress", "audio file -> .aetk (mono, at the model rate)", "OUT.aetk"),
            ("decompress", ".aetk -> 16-bit WAV (refuses files made by another model)", "OUT.wav"),
            ("stream", "streaming demo: chunks through the streaming encoder and decoder -> WAV, with "
                       "per-chunk latency and a check against a whole-file encode", "OUT.wav")):
        p = csub.add_parser(action, help=help_text, description=help_text)
        p.add_argument("input", help="IN.aetk" if action == "decompress" else "IN.wav (or FLAC / OGG)")
        p.add_argument("output", help=out_help)
        p.add_argument("--model", required=True, help="audio codec run dir, checkpoint or exported model/ dir")
        p.add_argument("--weights", choices=["ema", "raw"], default="ema", help="checkpoint weights to use")
        add_json(p)
        if action != "decompress":
            p.add_argument("--kbps", type=positive_float, default=6.0,
                           help="target bitrate: the most levels at or under it (default 6)")
        if action == "stream":
            p.add_argument("--chunk-ms", type=positive_float, default=20.0, help="audio per push, ms (default 20)")
            p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
        p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audio_codec import files
    from audio_codec.model import SoundStream

    model = SoundStream.from_pretrained(args.model, weights=args.weights)
    if args.codec == "compress":
        result = files.compress(model, args.input, args.output, kbps=args.kbps)
    elif args.codec == "decompress":
        result = files.decompress(model, args.input, args.output)
    else:
        result = files.stream(model, args.input, args.output, kbps=args.kbps, chunk_ms=args.chunk_ms,
                              threads=args.threads)
    return emit(result, args.json)
