"""`aetk encode MODEL --data D --out O`: a dataset -> latent or token shards + manifest.json (resumable)."""

from __future__ import annotations

import argparse

from aetk.verbs import add_video_args, bf16_is_emulated, note_emulated_bf16, positive_float, positive_int
from train.config import ConfigError


def add(sub, name: str) -> None:
    p = sub.add_parser(name, help="encode a dataset to latent or token shards + manifest.json (resumable)",
                       description="Writes safetensors shards and manifest.json (count, shape, per-channel mean/std "
                                   "and scaling factor 1/std for latents, codebook statistics for tokens, sources "
                                   "with hashes, model hash, unreadable files). Re-run the same command to resume; "
                                   "multi-process: torchrun --nproc_per_node N -m aetk encode ...",
                       epilog="examples:\n  aetk encode runs/quickstart --data builtin:skimage --out latents "
                              "--resolution 64\n  aetk encode runs/codec-tiny --data data/speech/train --out tokens "
                              "--kbps 6\n  aetk encode runs/video-digits --data builtin:moving-mnist --resolution 32 "
                              "--frames 9 --out video-latents", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run dir, checkpoint, exported model dir or SD single file: a KL-VAE, a VQ "
                                 "tokenizer, an audio codec or a video VAE")
    p.add_argument("--data", required=True, help="image folder, .tar shards, datasets.save_to_disk dir or "
                                                  "builtin:skimage (an audio folder for an audio codec; a video "
                                                  "folder or builtin:moving-mnist for a video VAE)")
    p.add_argument("--out", required=True, help="the encode directory (created; re-runs resume it)")
    p.add_argument("--resolution", type=positive_int, default=256,
                   help="centre crop size, a multiple of the model's downsampling factor (default 256)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--shard-size", type=positive_int, default=1024, help="items per shard (default 1024)")
    p.add_argument("--sample", action="store_true", help="KL-VAE: posterior samples instead of means")
    p.add_argument("--flip", action="store_true", help="also encode horizontally flipped copies")
    p.add_argument("--split", default="train", help="split of a builtin source or a saved DatasetDict (`val`: the "
                                                    "held-out items, for a prior's data.val_path)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                   help="KL-VAE: storage dtype of latents (default float16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["bf16", "fp16", "auto", "auto-fp16", "auto-bf16", "no"],
                   help="encoder compute (default: bf16 on a GPU or a CPU with AMX / AVX512-BF16, else fp32, as "
                        "emulated bf16 is about 6.5x slower): bf16 autocast, fp16 autocast, auto-fp16 / auto-bf16 "
                        "(that dtype with the modules that overflow it kept in fp32, as the export recorded or found "
                        "on the fly; "
                        "in the manifest), auto (auto-fp16 on a GPU, auto-bf16 on a CPU, where fp16 is hundreds of "
                        "times slower) or exact fp32 (no). Non-finite latents are an error naming the module")
    p.add_argument("--num-workers", type=int, default=None,
                   help="image-decoding workers (default: cores beyond 2, at most 4)")
    p.add_argument("--segment-seconds", type=positive_float, default=5.0,
                   help="audio codec: split every file into segments this long (default 5; the last is "
                        "zero-padded if at least half a segment, else dropped)")
    p.add_argument("--kbps", type=positive_float, help="audio codec: levels for this bitrate (default: all levels)")
    p.add_argument("--builtin-size", type=positive_int, default=512,
                   help="built-in sources: items to make (builtin:skimage crops, builtin:moving-mnist clips; 512)")
    add_video_args(p)
    p.add_argument("--tile", type=positive_int, help="encode in exact tiles of this many pixels: bounded memory "
                                                     "for large images, same result as untiled (to ~1e-5)")
    p.set_defaults(func=run)


def summary(m: dict, out: str) -> str:
    """One line about an encode's manifest."""
    if "n_quantizers" in m:  # audio token streams
        return (f"{m['count']} token sequences {m['token_shape']} ({m['n_quantizers']} levels, {m['kbps']:g} kbps, "
                f"{m['segment_seconds']:g} s segments); codebook usage {m['codebook_usage']:.1%}, perplexity "
                f"{m['perplexity']:.1f}; {len(m['shards'])} shards at {out}; {len(m['bad'])} unreadable, "
                f"{len(m['too_short'])} too short")
    if m["format"] == "aetk-tokens":
        detail = (f"{m['count']} token grids {m['token_shape']}; codebook usage {m['codebook_usage']:.1%}, "
                  f"perplexity {m['perplexity']:.1f}")
    else:
        detail = f"{m['count']} latents {m['latent_shape']}; scaling_factor {m['scaling_factor']:.5f}"
    return f"{detail}; {len(m['shards'])} shards at {out}; {len(m['bad'])} unreadable"


def run(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState

    import aetk
    from train.families import family_of, refuse_unread
    from train.families.base import EncodeRequest

    model = aetk.load(args.model)
    fam = family_of(model)
    if fam.encode is None:
        raise ConfigError(f"{args.model} holds a {fam.kind} model; aetk encode runs image and video tokenizers and "
                          "audio codecs")
    precision = args.precision
    if precision is None:  # bf16 where it is fast; a hook that does not read it keeps the request's default
        reads = "precision" in fam.reads.get("encode", ())
        precision = "no" if reads and bf16_is_emulated() else EncodeRequest.precision
    else:
        note_emulated_bf16(precision)
    req = EncodeRequest(data=args.data, out=args.out, resolution=args.resolution, batch_size=args.batch_size,
                        shard_size=args.shard_size, sample=args.sample, flip=args.flip, dtype=args.dtype,
                        seed=args.seed, precision=precision, num_workers=args.num_workers, tile=args.tile,
                        split=args.split, segment_seconds=args.segment_seconds, kbps=args.kbps,
                        frames=args.frames, frame_stride=args.frame_stride, builtin_size=args.builtin_size,
                        builtin_digits=args.builtin_digits, processes=PartialState(cpu=not torch.cuda.is_available()))
    refuse_unread(fam, "encode", req, args.model)
    print(summary(fam.encode(model, req), args.out))
    return 0
