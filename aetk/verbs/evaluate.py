"""`aetk eval MODEL [--data D]`: the family's quality report of a trained model, as JSON + figures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aetk.verbs import add_json, add_video_args, emit, files_dir, note_emulated_bf16, positive_float, positive_int
from tokenizers_ae.data import BUILTIN_DIGITS
from train.config import ConfigError


def add(sub, name: str) -> None:
    p = sub.add_parser(name, help="quality report: reconstruction metrics, rate, statistics, baselines, figures",
                       description="Image tokenizers: PSNR, SSIM, MS-SSIM (torchmetrics), LPIPS (when VGG weights are "
                                   "present), rFID (when Inception weights are present; else reported as "
                                   "unavailable), latent or codebook statistics and throughput, optionally beside "
                                   "JPEG at the same bits per pixel and patch PCA with the same number of latent "
                                   "values; a grid and a rate-distortion plot. Audio codecs: SI-SNR, mel/STFT "
                                   "distances, PESQ/STOI, achieved kbps per bitrate, beside Opus. Video VAEs: "
                                   "per-frame PSNR/SSIM, HaarPSI, the frame-difference error (flicker), beside "
                                   "space-time patch PCA, and a strip of frames. Classic models: their table row and "
                                   "figure, on their own data by default.",
                       epilog="examples:\n  aetk eval runs/quickstart --data builtin:skimage --resolution 64 "
                              "--baseline jpeg --baseline pca --json eval.json\n  aetk eval runs/codec-tiny --data "
                              "data/speech/val --kbps 6\n  aetk eval runs/video-digits --data builtin:moving-mnist "
                              "--resolution 32 --frames 9 --baseline pca\n  aetk eval runs/finetune-decoder --data "
                              "/my/images --compare /path/to/original-vae",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run dir, checkpoint, exported model dir or SD single file")
    p.add_argument("--data", help="evaluation data (required, except for classic models: their own data)")
    p.add_argument("--resolution", type=positive_int, default=256, help="images: centre crop size (default 256)")
    p.add_argument("--n", type=positive_int, default=None, help="evaluation items (default: 64 images, 16 clips, "
                                                                "up to 512 examples for classic models)")
    p.add_argument("--fit-n", type=positive_int, default=256,
                   help="items PCA is fitted on, evenly spaced over the fit source (default 256)")
    p.add_argument("--fit-data", help="where the PCA baseline is fitted: e.g. the training folder (default: the train "
                                      "split of a built-in --data, else the items of --data after the first --n)")
    p.add_argument("--baseline", action="append", choices=["jpeg", "pca"], default=[],
                   help="add a baseline (repeatable)")
    p.add_argument("--latent-bits", type=positive_int, default=16,
                   help="bits per stored latent value for the rate (16)")
    p.add_argument("--weights", choices=["ema", "raw"], default="ema", help="checkpoint weights to evaluate")
    p.add_argument("--lpips-weights", help="torchvision VGG16 weights for LPIPS")
    p.add_argument("--inception-weights", help="torch-fidelity Inception weights for rFID")
    p.add_argument("--precision-audit", action="store_true",
                   help="also run fp32/bf16/fp16: per-layer peak activations vs the fp16 range, the first "
                        "layer that overflows, each precision's output error")
    p.add_argument("--protocol", metavar="FILE",
                   help="re-run the protocol card of an earlier `aetk eval --json` output exactly: its data, split, "
                        "resolution, count and flags; refused when the data's content hash or a metric weight "
                        "differs")
    p.add_argument("--precision", choices=["no", "bf16", "fp16", "auto", "auto-fp16", "auto-bf16"], default="no",
                   help="image tokenizers: reconstruct in fp32 (no, default), bf16 or fp16 autocast, or auto-fp16 / "
                        "auto-bf16: that dtype with the modules that overflow it kept in fp32 (the plan an export "
                        "recorded, repaired as needed; reported); auto: auto-fp16 on a GPU, auto-bf16 on a CPU. A "
                        "non-finite output is an error naming the module, never a metric")
    add_json(p)
    p.add_argument("--out-dir", help="where the grid and plot go (default: beside --json)")
    p.add_argument("--kbps", type=positive_float, action="append",
                   help="audio codec: a bitrate to evaluate (repeatable; default 1.5, 3, 6, 12)")
    p.add_argument("--segment-seconds", type=positive_float, default=5.0, help="audio codec: clip length (default 5)")
    p.add_argument("--no-opus", action="store_true", help="audio codec: skip the Opus comparison")
    add_video_args(p)
    p.add_argument("--compare", metavar="ORIGINAL",
                   help="KL-VAE fine-tuned from ORIGINAL (a run, export or SD single file): add the latent drift "
                        "per channel and both decoders' metrics on ORIGINAL's latents (do its priors still work?)")
    p.add_argument("--tile", type=positive_int, help="encode/decode in exact tiles of this many pixels: bounded "
                                                     "memory for large images, same result as untiled (to ~1e-5)")
    p.set_defaults(func=run)


def follow(args: argparse.Namespace) -> dict:
    """`--protocol FILE`: the card, with its data and settings applied to `args` (they win over flags)."""
    from eval.protocol import load

    card = load(args.protocol)
    s = card["settings"]
    args.data, args.n = card["data"]["source"], s["n"]
    if card.get("kind") in ("image", "video"):
        args.resolution, args.fit_n, args.fit_data = s["resolution"], s["fit_n"], s.get("fit_data")
    if card.get("kind") == "audio":
        args.segment_seconds, args.kbps, args.no_opus = s["segment_seconds"], list(s["kbps"]), not s["opus"]
    if card.get("kind") == "image":
        args.baseline, args.latent_bits = list(s["baselines"]), s["latent_bits"]
        args.tile, args.precision = s["tile"], s["precision"]
    elif card.get("kind") == "video":
        args.frames, args.frame_stride = s["frames"], s["frame_stride"]
        args.builtin_digits = s.get("builtin_digits", BUILTIN_DIGITS)  # cards written before the option
    print(f"following the protocol in {args.protocol}: {card['data']['items']} items of {args.data} "
          f"({card['data']['split']} split), sha256 {card['data']['sha256'][:12]}...", file=sys.stderr)
    return card


def run(args: argparse.Namespace) -> int:
    import aetk
    from eval.protocol import evaluated
    from train.families import family_of, refuse_unread
    from train.families.base import ReportRequest

    card = follow(args) if args.protocol else None
    model = aetk.load(args.model, weights=args.weights)
    fam = family_of(model)
    if fam.report is None:
        raise ConfigError(f"{args.model} holds a {fam.kind} model, which has no aetk eval report (its training "
                          "run's metrics.jsonl and samples/ hold its evaluation)")
    if args.precision != "no" and fam.kind not in ("kl_vae", "vq_vae"):
        raise ConfigError(f"--precision {args.precision}: image tokenizers only ({args.model} holds a {fam.kind} "
                          "model, evaluated in fp32)")
    note_emulated_bf16(args.precision)
    req = ReportRequest(name=str(args.model), data=args.data, resolution=args.resolution, n=args.n, fit_n=args.fit_n,
                        fit_data=args.fit_data,
                        baselines=tuple(args.baseline), latent_bits=args.latent_bits, lpips_weights=args.lpips_weights,
                        inception_weights=args.inception_weights, precision_audit=args.precision_audit,
                        precision=args.precision, tile=args.tile, out_dir=files_dir(args.out_dir, args.json),
                        kbps=tuple(args.kbps or ()),
                        segment_seconds=args.segment_seconds, opus=not args.no_opus,
                        frames=args.frames, frame_stride=args.frame_stride, builtin_digits=args.builtin_digits,
                        protocol=card)
    if card is not None and card.get("kind") not in (None, {"kl_vae": "image", "vq_vae": "image",
                                                           "video_vae": "video", "soundstream": "audio"}.get(fam.kind)):
        raise ConfigError(f"--protocol {args.protocol}: a {card.get('kind')} protocol, and {args.model} holds a "
                          f"{fam.kind} model")
    refuse_unread(fam, "eval", req, args.model)
    # What `aetk export --eval` checks; hashed before the report, which may cast the model (--precision).
    weights = evaluated(model, str(args.model), args.weights)
    report = {**fam.report(model, req), "evaluated": weights}
    if args.compare:
        report["compare"] = compare(model, args)
    return emit(report, args.json)


def compare(model, args: argparse.Namespace) -> dict:
    """`--compare ORIGINAL` on the first --n (64) centre crops of --data."""
    import torch

    import aetk
    from eval.compare import latent_compatibility
    from tokenizers_ae.data.sources import build_image_dataset
    from tokenizers_ae.models.kl_vae import KLVAE

    original = aetk.load(args.compare)
    if not (isinstance(model, KLVAE) and isinstance(original, KLVAE)):
        raise ConfigError(f"--compare compares two KL-VAEs; {args.model} holds a {type(model).__name__} and "
                          f"{args.compare} a {type(original).__name__}")
    ds = build_image_dataset(args.data, resolution=args.resolution, random_crop=False, random_flip=False)
    n = min(args.n or 64, len(ds))
    batches = (torch.stack([ds[i]["x"] for i in range(s, min(s + 16, n))]) for s in range(0, n, 16))
    try:
        out = latent_compatibility(model.eval(), original.eval(), batches,
                                   figure=Path(files_dir(args.out_dir, args.json)) / "compare.png")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return {"original": str(args.compare), **out}
