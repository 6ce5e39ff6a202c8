"""The `aetk` command line: one dispatcher, a subcommand per job."""

from __future__ import annotations

import argparse
from pathlib import Path
import json
import logging
import sys

from train.config import ConfigError, load_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe, e.g. configs/kl-f4-tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override any config key with dotted.key=value, e.g. train.max_steps=100")


def _emit(result: dict, json_path: str | None) -> int:
    """Benchmarks print JSON, and write it to --json too."""
    text = json.dumps(result, indent=1)
    print(text)
    if json_path:
        with open(json_path, "w") as f:
            f.write(text + "\n")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from train.run import train

    cfg = load_config(args.config, args.overrides)
    trainer = train(cfg)
    if trainer.accelerator.is_main_process:
        print(f"run written to {trainer.run_dir}")
    trainer.close()
    return 0


def cmd_bench_train_step(args: argparse.Namespace) -> int:
    from eval.bench.train_step import bench_train_step

    cfg = load_config(args.config, args.overrides)
    return _emit(bench_train_step(cfg, steps=args.steps, warmup=args.warmup, reference=args.reference), args.json)


def cmd_bench_precision(args: argparse.Namespace) -> int:
    from eval.bench.precision import bench_precision

    cfg = load_config(args.config, args.overrides)
    return _emit(bench_precision(cfg, steps=args.steps, precisions=tuple(args.precisions.split(","))), args.json)


def cmd_export(args: argparse.Namespace) -> int:
    from diffusers import AutoencoderKL

    from eval.latents import set_scaling_factor
    from train.codec import is_codec
    from train.export import export_vae, export_vq, load_tokenizer, measure_scaling, warn_if_unmeasured

    if is_codec(args.source):
        from train.export import export_codec_encodec, load_codec

        if args.format != "encodec":
            raise ConfigError(f"{args.source} is an audio codec: export it with --format encodec (a transformers "
                              "EncodecModel directory); its native model/ directory is written by training")

        def run() -> int:
            out = export_codec_encodec(load_codec(args.source, weights=args.weights), args.out)
            print(f"wrote EncodecModel to {out}")
            return 0

        return _audio_command(run)
    if args.format == "encodec":
        raise ConfigError(f"--format encodec is for audio codecs (model.kind: soundstream); {args.source} is not one")
    model = load_tokenizer(args.source, weights=args.weights)
    if not isinstance(model, AutoencoderKL):  # a VQ tokenizer
        if args.format != "diffusers":
            raise ConfigError(f"--format {args.format} is for KL-VAEs; VQ tokenizers export as diffusers VQModel")
        print(f"wrote {export_vq(model, args.out)} to {args.out}")
        return 0
    vae = model
    if args.scaling_factor is not None:
        set_scaling_factor(vae, args.scaling_factor)
    elif args.data:
        stats = measure_scaling(vae, args.data, resolution=args.resolution, n=args.n)
        set_scaling_factor(vae, stats["scaling_factor"])
        print(f"measured scaling_factor {stats['scaling_factor']:.5f} on {stats['n']} images")
    else:
        warn_if_unmeasured(vae)
    out = export_vae(vae, args.format, args.out)
    print(f"wrote {args.format} to {out} (scaling_factor {vae.config.scaling_factor:.5f})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from tokenizers_ae.export import load_sd_single_file

    vae = load_sd_single_file(args.file, config=args.config)
    vae.save_pretrained(args.out, safe_serialization=True)
    print(f"wrote a diffusers AutoencoderKL to {args.out}; fine-tune it with model.init_from={args.out}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from train.codec import is_codec
    from train.encode import EncodeOptions, encode

    if is_codec(args.model):
        return _audio_command(lambda: _encode_audio(args))

    opts = EncodeOptions(resolution=args.resolution, batch_size=args.batch_size, shard_size=args.shard_size,
                         sample=args.sample, flip=args.flip, dtype=args.dtype, seed=args.seed,
                         precision=args.precision, num_workers=args.num_workers, tile=args.tile,
                         split=args.split)
    m = encode(args.model, args.data, args.out, opts)
    if m["format"] == "aetk-tokens":
        detail = (f"{m['count']} token grids {m['token_shape']}; codebook usage {m['codebook_usage']:.1%}, "
                  f"perplexity {m['perplexity']:.1f}")
    else:
        detail = f"{m['count']} latents {m['latent_shape']}; scaling_factor {m['scaling_factor']:.5f}"
    print(f"{detail}; {len(m['shards'])} shards at {args.out}; {len(m['bad'])} unreadable")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from eval.report import evaluate, write_json
    from train.codec import is_codec
    from train.data import build_image_dataset
    from train.export import load_classic, load_tokenizer

    if is_codec(args.model):
        return _audio_command(lambda: _eval_audio(args))
    classic = load_classic(args.model, weights=args.weights)
    if classic is not None:
        return _eval_classic(args, *classic)
    if not args.data:
        raise ConfigError("--data is required (only classic runs default to their own data)")
    vae = load_tokenizer(args.model, weights=args.weights)
    builtin = args.data.startswith("builtin:")

    def images(split: str, start: int, n: int):
        ds = build_image_dataset(args.data, resolution=args.resolution, random_crop=False, random_flip=False,
                                 split=split)
        idx = range(start, min(start + n, len(ds)))
        return torch.stack([ds[i]["x"] for i in idx]) if len(idx) else None

    # Held-out images for the metrics; PCA is fitted on other images of the same source.
    args.n = args.n or 64
    x = images("val" if builtin else "train", 0, args.n)
    fit = images("train", 0 if builtin else args.n, args.fit_n) if "pca" in args.baseline else None
    out_dir = args.out_dir or (str(Path(args.json).with_suffix("")) + "-files" if args.json else "eval-out")
    result = evaluate(vae, x, fit_x=fit, baselines=tuple(args.baseline), latent_bits=args.latent_bits, tile=args.tile,
                      lpips_weights=args.lpips_weights, inception_weights=args.inception_weights, out_dir=out_dir)
    if args.precision_audit:
        from diffusers import AutoencoderKL

        from eval.precision import precision_audit

        fn = (lambda m, t: m(t, sample_posterior=False).sample) if isinstance(vae, AutoencoderKL) else \
            (lambda m, t: m(t).recon)
        result["precision_audit"] = precision_audit(vae, x[:8], fn)
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(result, args.json)
    return 0


def _eval_classic(args: argparse.Namespace, model, cfg) -> int:
    """A classic run: its metrics (table row), reconstructions / samples / interpolations figure."""
    from eval.classic import TABLE_HEADER, evaluate_classic, save_rows_figure, table_row
    from eval.report import write_json

    if args.data and args.data != cfg.data.path:
        cfg.data.path = args.data  # same input shape required; the model decides
    result = evaluate_classic(model, cfg, n=args.n or 512)
    out_dir = Path(args.out_dir or (str(Path(args.json).with_suffix("")) + "-files" if args.json else "eval-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    name = Path(args.model).resolve().name
    (out_dir / "table.md").write_text(TABLE_HEADER + "\n" + table_row(name, result["metrics"]) + "\n")
    files = {"table": str(out_dir / "table.md")}
    if result["rows"]:
        files["figure"] = str(save_rows_figure([(name, result["rows"])], out_dir / "figure.png"))
    out = {**result["metrics"], "files": files}
    print(json.dumps(out, indent=1))
    if args.json:
        write_json(out, args.json)
    return 0


def cmd_bench_encode(args: argparse.Namespace) -> int:
    from eval.bench.encode import bench_encode

    return _emit(bench_encode(args.model, args.data, resolution=args.resolution, n=args.n), args.json)


def cmd_bench_quantizer(args: argparse.Namespace) -> int:
    from eval.bench.quantizer import bench_quantizer

    return _emit(bench_quantizer(codebook_size=args.codebook_size, dim=args.dim, n_vectors=args.n_vectors,
                                 steps=args.steps, reference=not args.no_reference), args.json)


def cmd_bench_tiling(args: argparse.Namespace) -> int:
    from eval.bench.tiling import bench_tiling

    return _emit(bench_tiling(sizes=tuple(args.sizes), tile=args.tile, ops=tuple(args.ops), threads=args.threads),
                 args.json)


def cmd_bench_codec(args: argparse.Namespace) -> int:
    from eval.bench.codec import bench_codec

    return _emit(bench_codec(seconds=args.seconds, repeats=args.repeats, precision=args.precision, kbps=args.kbps,
                             arch=args.arch, chunk_ms=tuple(args.chunk_ms), threads=args.threads), args.json)


def cmd_bench_prior(args: argparse.Namespace) -> int:
    from eval.bench.prior import bench_prior

    return _emit(bench_prior(resolution=args.resolution, factor=args.factor, widths=tuple(args.widths),
                             batch=args.batch, n=args.n, sample_steps=args.sample_steps, repeats=args.repeats,
                             precision=args.precision, threads=args.threads), args.json)


def cmd_bench_classic(args: argparse.Namespace) -> int:
    from eval.bench.classic import bench_classic

    res = bench_classic(recipes=args.recipes, out=args.out, steps=args.steps,
                        only=args.only.split(",") if args.only else None, threads=args.threads)
    print(res["table"])
    print(f"table, figure and results in {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch
    from torchvision.utils import make_grid, save_image

    from latent_diffusion.diffusion_prior import sample
    from tokenizers_ae.tiling import vae_decode
    from train.export import load_vae
    from train.labels import sample_labels
    from train.prior_export import load_prior

    model_dir = Path(args.run) / "model" if (Path(args.run) / "model" / "prior.json").is_file() else Path(args.run)
    if (model_dir / "prior.json").is_file() and json.loads((model_dir / "prior.json").read_text()).get("kind") == \
            "ar_prior":
        from train.ar_sample import sample_command

        return sample_command(model_dir, args)
    prior, meta = load_prior(args.run)
    labels = sample_labels(args.n, prior.num_classes, args.label, meta.get("class_names"))
    z = sample(prior, n=args.n, shape=meta["latent_shape"], seed=args.seed, steps=args.steps,
               sampler=args.sampler, labels=labels, guidance=args.guidance, progress=True)
    if meta.get("space") == "pixel":
        images = z.float().clamp(-1, 1)
    else:
        vae_path = args.vae or meta.get("first_stage")
        if not vae_path:
            raise ConfigError("no first stage to decode with: pass --vae PATH")
        vae = load_vae(vae_path)
        with torch.no_grad():
            images = vae_decode(vae, z / meta["scaling_factor"], args.tile).float().clamp(-1, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    period = len(args.label.split(",")) if args.label else prior.num_classes
    nrow = period if 2 <= period <= 16 else min(8, args.n)  # one class per column when classes cycle
    save_image(make_grid((images + 1) / 2, nrow=nrow, padding=2, pad_value=1.0), args.out)
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def _audio_command(run) -> int:
    """Audio codec commands: a missing file, a model that is not a codec, a malformed `.aetk` or one
    made by another model is one line on stderr and exit code 1 (config errors keep exit code 2)."""
    try:
        return run()
    except ConfigError:
        raise
    except (FileNotFoundError, ValueError) as e:  # ContainerError and CodecMismatchError are ValueErrors
        print(f"aetk: error: {e}", file=sys.stderr)
        return 1


def cmd_codec(args: argparse.Namespace) -> int:
    from train import codec

    def run() -> dict:
        if args.codec == "compress":
            return codec.compress(args.model, args.input, args.output, kbps=args.kbps, weights=args.weights)
        if args.codec == "decompress":
            return codec.decompress(args.model, args.input, args.output, weights=args.weights)
        return codec.stream(args.model, args.input, args.output, kbps=args.kbps, chunk_ms=args.chunk_ms,
                            threads=args.threads, weights=args.weights)

    return _audio_command(lambda: _emit(run(), args.json))


def _encode_audio(args: argparse.Namespace) -> int:
    from train.codec import encode_audio

    m = encode_audio(args.model, args.data, args.out, segment_seconds=args.segment_seconds,
                     shard_size=args.shard_size, kbps=args.kbps, batch_size=args.batch_size,
                     num_workers=args.num_workers)
    print(f"{m['count']} token sequences {m['token_shape']} ({m['n_quantizers']} levels, {m['kbps']:g} kbps, "
          f"{m['segment_seconds']:g} s segments); codebook usage {m['codebook_usage']:.1%}, perplexity "
          f"{m['perplexity']:.1f}; {len(m['shards'])} shards at {args.out}; {len(m['bad'])} unreadable, "
          f"{len(m['too_short'])} too short")
    return 0


def _eval_audio(args: argparse.Namespace) -> int:
    from train.codec import evaluate_audio

    if not args.data:
        raise ConfigError("--data is required: a folder of held-out audio files")
    out_dir = args.out_dir or (str(Path(args.json).with_suffix("")) + "-files" if args.json else "eval-out")
    result = evaluate_audio(args.model, args.data, n=args.n or 16, segment_seconds=args.segment_seconds,
                            kbps_list=tuple(args.kbps or (1.5, 3, 6, 12)), opus=not args.no_opus,
                            out_dir=out_dir, weights=args.weights)
    return _emit(result, args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aetk", description="Train, benchmark and export first-stage autoencoders.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML recipe",
                       description="Train from a recipe; resumes from the newest checkpoint in output_dir "
                                   "(resume=auto). Multi-process: torchrun --nproc_per_node N -m train.cli train ...")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="write a trained KL-VAE as a diffusers directory or an SD single file, "
                                      "a VQ tokenizer as a diffusers VQModel, an audio codec as an EncodecModel",
                       description="SOURCE: a run directory (newest checkpoint), a checkpoint directory, a "
                                   "diffusers AutoencoderKL directory, a .safetensors single file, or an audio "
                                   "codec run / model directory (with --format encodec).")
    p.add_argument("source")
    p.add_argument("--format", choices=["diffusers", "sd-single-file", "encodec"], default="diffusers")
    p.add_argument("--out", required=True, help="directory (diffusers, encodec) or FILE.safetensors (sd-single-file)")
    p.add_argument("--weights", choices=["ema", "raw"], default="ema", help="checkpoint weights to export")
    p.add_argument("--scaling-factor", type=float, help="set the latent scaling factor explicitly")
    p.add_argument("--data", help="measure the scaling factor (1/std of latents) on these images")
    p.add_argument("--resolution", type=int, default=256, help="crop size for --data (default 256)")
    p.add_argument("--n", type=int, default=256, help="images used by --data (default 256)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="turn an SD / latent-diffusion single-file VAE into a diffusers directory",
                       description="Reads a .safetensors file with latent-diffusion key names (first_stage_model. "
                                   "prefixes accepted) and writes a diffusers AutoencoderKL directory to fine-tune.")
    p.add_argument("file")
    p.add_argument("--out", required=True)
    p.add_argument("--config", help="diffusers AutoencoderKL directory or config.json giving the architecture "
                                    "(not needed for files aetk wrote)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("encode", help="encode a dataset to latent shards + manifest.json (resumable)",
                       description="Writes safetensors shards and manifest.json (count, shape, per-channel mean/std, "
                                   "scaling factor 1/std, sources with hashes, model hash, unreadable files). "
                                   "Re-run the same command to resume; multi-process: torchrun --nproc_per_node N "
                                   "-m train.cli encode ...")
    p.add_argument("model", help="run dir, checkpoint, diffusers AutoencoderKL/VQModel dir, aetk model dir or SD single file")
    p.add_argument("--data", required=True, help="image folder, datasets.save_to_disk dir or builtin:skimage "
                                                  "(an audio folder for an audio codec: token shards for priors)")
    p.add_argument("--out", required=True)
    p.add_argument("--resolution", type=int, default=256, help="centre crop size (default 256)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=1024, help="items per shard (default 1024)")
    p.add_argument("--sample", action="store_true", help="posterior samples instead of means")
    p.add_argument("--flip", action="store_true", help="also encode horizontally flipped copies")
    p.add_argument("--split", default="train", help="split of a builtin source or a saved DatasetDict (`val`: the "
                                                    "held-out items, for a prior's data.val_path)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["bf16", "no"], default="bf16",
                   help="encoder compute: bf16 autocast (default) or exact fp32")
    p.add_argument("--num-workers", type=int, default=None,
                   help="image-decoding workers (default: cores beyond 2, at most 4)")
    p.add_argument("--segment-seconds", type=float, default=5.0,
                   help="audio codec: split every file into segments this long (default 5; the last is "
                        "zero-padded if at least half a segment, else dropped)")
    p.add_argument("--kbps", type=float, help="audio codec: levels for this bitrate (default: all levels)")
    p.add_argument("--tile", type=int, help="encode/decode in exact tiles of this many pixels: bounded memory for "
                                           "large images, same result as untiled (to ~1e-5)")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("eval", help="reconstruction metrics, rate, latent stats; JPEG/PCA baselines; grid + RD plot",
                       description="PSNR, SSIM, MS-SSIM (torchmetrics), LPIPS (when VGG weights are present), rFID "
                                   "(when Inception weights are present; else reported as unavailable), latent "
                                   "statistics and throughput, optionally beside JPEG at the same bits per pixel and "
                                   "patch PCA with the same number of latent values.")
    p.add_argument("model", help="run dir, checkpoint, diffusers AutoencoderKL/VQModel dir, aetk model dir or SD single "
                                 "file; a classic run (model.kind: classic) gets its own report (eval/classic.py)")
    p.add_argument("--data", help="evaluation data (required, except for classic runs: their own data)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--n", type=int, default=None, help="evaluation images (default 64; classic runs: up to 512 "
                                                       "held-out examples)")
    p.add_argument("--fit-n", type=int, default=256, help="images PCA is fitted on (default 256)")
    p.add_argument("--baseline", action="append", choices=["jpeg", "pca"], default=[],
                   help="add a baseline (repeatable)")
    p.add_argument("--latent-bits", type=int, default=16, help="bits per stored latent value for the rate (16)")
    p.add_argument("--weights", choices=["ema", "raw"], default="ema")
    p.add_argument("--lpips-weights", help="torchvision VGG16 weights for LPIPS")
    p.add_argument("--inception-weights", help="torch-fidelity Inception weights for rFID")
    p.add_argument("--precision-audit", action="store_true",
                   help="also run fp32/bf16/fp16: per-layer peak activations vs the fp16 range, the first "
                        "layer that overflows, each precision's output error")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--out-dir", help="where the grid and plot go (default: beside --json)")
    p.add_argument("--kbps", type=float, action="append",
                   help="audio codec: a bitrate to evaluate (repeatable; default 1.5, 3, 6, 12)")
    p.add_argument("--segment-seconds", type=float, default=5.0, help="audio codec: clip length (default 5)")
    p.add_argument("--no-opus", action="store_true", help="audio codec: skip the Opus comparison")
    p.add_argument("--tile", type=int, help="encode/decode in exact tiles of this many pixels: bounded memory for "
                                           "large images, same result as untiled (to ~1e-5)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="sample images (or audio) from a trained prior through its first stage",
                       description="Diffusion prior: latents (seeded; DDIM, DDPM or DPM-Solver++; classifier-free "
                                   "guidance when class-conditional) decoded by the KL-VAE recorded in the run (or "
                                   "--vae; pixel-space priors need none), written as a PNG grid. AR prior: tokens "
                                   "(seeded; temperature, top-k, top-p) decoded by the VQ tokenizer -> PNG grid, or "
                                   "by the audio codec -> one WAV per sample in the --out directory.")
    p.add_argument("run", help="a diffusion_prior or ar_prior run directory (or its model/)")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--out", required=True, help="PNG grid path (AR prior over audio tokens: a directory for WAVs)")
    p.add_argument("--steps", type=int, default=50, help="diffusion: sampler steps (default 50)")
    p.add_argument("--sampler", choices=["ddim", "ddpm", "dpm++"], default="ddim", help="diffusion: the scheduler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, help="AR: keep the k likeliest codes at each step (0: all; default: "
                                             "the recipe's model.ar.top_k)")
    p.add_argument("--top-p", type=float, help="AR: nucleus sampling mass (1: off; default: model.ar.top_p)")
    p.add_argument("--temperature", type=float, help="AR: softmax temperature (default: model.ar.temperature)")
    p.add_argument("--label", help="class-conditional priors: a class index or name, or a comma-separated list "
                                   "cycled over the samples (default: every class in turn)")
    p.add_argument("--guidance", type=float, default=3.0,
                   help="diffusion: classifier-free guidance scale for class-conditional priors (1: none)")
    p.add_argument("--vae", help="first stage to decode with (default: the run's model.first_stage): a KL-VAE "
                                 "(diffusion), a VQ tokenizer or an audio codec (AR)")
    p.add_argument("--tile", type=int, help="encode/decode in exact tiles of this many pixels: bounded memory for "
                                           "large images, same result as untiled (to ~1e-5)")
    p.set_defaults(func=cmd_sample)

    codec = sub.add_parser("codec", help="audio codec: compress, decompress, stream",
                           description="Compress audio to .aetk files, decompress them, or run the streaming "
                                       "demo; each prints a JSON summary. --model: an audio codec run dir, "
                                       "checkpoint or exported model/ dir (model.kind: soundstream).")
    csub = codec.add_subparsers(dest="codec", required=True)
    for name, help_text, out_help in (
            ("compress", "audio file -> .aetk (mono, at the model rate)", "OUT.aetk"),
            ("decompress", ".aetk -> 16-bit WAV (refuses files made by another model)", "OUT.wav"),
            ("stream", "streaming demo: chunks through the streaming encoder and decoder -> WAV, with "
                       "per-chunk latency and a check against a whole-file encode", "OUT.wav")):
        p = csub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("input", help="IN.aetk" if name == "decompress" else "IN.wav (or FLAC / OGG)")
        p.add_argument("output", help=out_help)
        p.add_argument("--model", required=True, help="audio codec run dir, checkpoint or exported model/ dir")
        p.add_argument("--weights", choices=["ema", "raw"], default="ema")
        p.add_argument("--json", help="also write the summary here")
        if name != "decompress":
            p.add_argument("--kbps", type=float, default=6.0,
                           help="target bitrate: the most levels at or under it (default 6)")
        if name == "stream":
            p.add_argument("--chunk-ms", type=float, default=20.0, help="audio per push, ms (default 20)")
            p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
        p.set_defaults(func=cmd_codec)

    bench = sub.add_parser("bench", help="benchmarks", description="Benchmarks that print JSON.")
    bsub = bench.add_subparsers(dest="bench", required=True)
    p = bsub.add_parser("train-step", help="steady-state training images/s of `aetk train`'s code path",
                        description="Times Trainer.step (the code path of `aetk train`) on the recipe's data "
                                    "and, with --reference, the taming-style reference loop on the same model.")
    _add_config_args(p)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--reference", action="store_true",
                   help="also time diffusers AutoencoderKL + taming LPIPSWithDiscriminator and report the ratio")
    p.add_argument("--json", help="also write the result to this file")
    p.set_defaults(func=cmd_bench_train_step)

    p = bsub.add_parser("precision", help="validation PSNR after N steps in fp32 vs reduced precision",
                        description="Trains the recipe once per precision (from the same seed) and "
                                    "reports validation PSNR/SSIM and wall time of each.")
    _add_config_args(p)
    p.add_argument("--steps", type=int, default=200, help="training steps per precision (default 200)")
    p.add_argument("--precisions", default="no,bf16", help="comma-separated (default no,bf16)")
    p.add_argument("--json", help="also write the result to this file")
    p.set_defaults(func=cmd_bench_precision)

    p = bsub.add_parser("encode", help="`aetk encode` vs a plain diffusers encode loop: images/s, error, memory",
                        description="Times `aetk encode` (fp32 and bf16) and a plain diffusers loop (PIL decode, "
                                    "AutoencoderKL.encode fp32, batch 8) on the same PNG folder, each in a fresh "
                                    "process; reports images/s, latent error vs fp32 and peak RSS.")
    p.add_argument("model", help="run dir, checkpoint, diffusers AutoencoderKL/VQModel dir, aetk model dir or SD single file")
    p.add_argument("--data", help="PNG/JPEG folder (default: write N crops of the built-in photos)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--n", type=int, default=128, help="images in the default folder")
    p.add_argument("--json")
    p.set_defaults(func=cmd_bench_encode)

    p = bsub.add_parser("quantizer", help="VectorQuantizer (EMA) vs vector_quantize_pytorch: vectors/s, memory",
                        description="Forward + backward training steps of aetk's VectorQuantizer and, when "
                                    "vector-quantize-pytorch is installed, its VectorQuantize (same codebook size, "
                                    "dim, EMA decay, commitment weight), each in a fresh process.")
    p.add_argument("--codebook-size", type=int, default=16384)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--n-vectors", type=int, default=16384)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--no-reference", action="store_true", help="time aetk only")
    p.add_argument("--json")
    p.set_defaults(func=cmd_bench_quantizer)

    p = bsub.add_parser("tiling", help="VAE decode/encode of large images: untiled vs aetk --tile vs diffusers tiling",
                        description="Time, peak memory and max abs error against untiled, each in a fresh process, "
                                    "for the kl-f8 (Stable Diffusion VAE) architecture with random weights.")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="image sides (default 512 1024)")
    p.add_argument("--tile", type=int, default=256, help="tile side, pixels (default 256)")
    p.add_argument("--ops", nargs="+", choices=["decode", "encode"], default=["decode", "encode"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    p.set_defaults(func=cmd_bench_tiling)

    p = bsub.add_parser("codec", help="audio codec encode+decode speed vs transformers' EncodecModel (24 kHz, 6 kbps)",
                        description="Real-time factors of EncodecModel (default config, random weights; also with "
                                    "weight norm folded) and aetk's SoundStream (whole file and streaming chunks), "
                                    "alternating in one run; medians. Run on a quiet machine.")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    p.add_argument("--kbps", type=float, default=6.0)
    p.add_argument("--arch", choices=["fast", "encodec"], default="fast",
                   help="ours: the fast architecture (configs/soundstream-24k.yaml) or EnCodec's own widths")
    p.add_argument("--chunk-ms", type=float, nargs="+", default=[20, 80, 320, 640, 1280, 2560])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    p.set_defaults(func=cmd_bench_codec)

    p = bsub.add_parser("prior", help="latent vs pixel-space diffusion cost, and aetk's sampler vs diffusers' pipeline",
                        description="Training step and sampling time of the same UNet over KL latents (f-times "
                                    "smaller, random VAE) and over pixels, on the same photos; and aetk's sample + "
                                    "decode against diffusers' LDMPipeline with the same UNet and DDIM scheduler. "
                                    "Variants alternate; medians.")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--factor", type=int, default=8, help="VAE downsampling factor (latent side = resolution / f)")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128], help="UNet block_out_channels")
    p.add_argument("--batch", type=int, default=8, help="training batch")
    p.add_argument("--n", type=int, default=8, help="samples per sampling call")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int)
    p.add_argument("--json")
    p.set_defaults(func=cmd_bench_prior)

    p = bsub.add_parser("classic", help="train + evaluate every classic autoencoder recipe: one table, one figure",
                        description="Trains each recipe in configs/classic through `aetk train`'s code path, "
                                    "evaluates it as `aetk eval` does (held-out MSE/PSNR, PCA with the same code "
                                    "size, ELBO, sparsity, denoising gain, inpainting, anomaly AUC, SAE dead "
                                    "latents) and writes table.md, figure.png and results.json to --out.")
    p.add_argument("--recipes", default="configs/classic", help="directory of recipes (default configs/classic)")
    p.add_argument("--out", default="runs/bench-classic", help="run directories, table and figure go here")
    p.add_argument("--steps", type=int, help="train every recipe this many steps (default: each recipe's own)")
    p.add_argument("--only", help="comma-separated recipe names, e.g. vae,beta-vae")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the models are tiny)")
    p.add_argument("--json", help="also write the results here")
    p.set_defaults(func=cmd_bench_classic)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("accelerate", "diffusers", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"aetk: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
