"""Where does a codec lose PESQ against Opus? By band, and magnitude against phase (eval.pesq_breakdown).

Scores the same held-out clips `aetk eval` scores (the first N files of each folder, centre crops of
5 s) decoded at one bitrate, by the codec and by Opus at the same nominal rate, each also with part of
it replaced by the reference. Writes a JSON and one bar chart per folder:

    .venv/bin/python scripts/pesq_breakdown.py runs/codec-real \\
        --data data/audio-real/val/speech/tuxpaint data/audio-real/val/speech/hedgewars --out pesq-breakdown

About 15 s per folder of 16 clips on 2 cores. Needs the `pesq` package (the `speech` extra); Opus needs
opusenc/opusdec (Debian: opus-tools) or an ffmpeg with libopus, and is left out, said once, without.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aetk  # noqa: E402
from audio_codec.model import SoundStream  # noqa: E402
from eval import pesq_breakdown as pb  # noqa: E402
from eval.audio_report import heldout_clips, opus_round_trip, opus_tool  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a trained codec (its run or model directory)")
    p.add_argument("--data", nargs="+", required=True, help="folders of held-out speech, each scored apart")
    p.add_argument("--n", type=int, default=16, help="clips per folder (16, as aetk eval)")
    p.add_argument("--kbps", type=float, default=6.0, help="the codec's bitrate, and Opus's nominal one (6)")
    p.add_argument("--cutoff-hz", type=float, default=4000.0, help="where the bands split (4000)")
    p.add_argument("--out", default="pesq-breakdown", help="folder for pesq-breakdown.json and the charts")
    args = p.parse_args(argv)
    try:
        from pesq import pesq  # noqa: F401
    except ImportError:
        raise SystemExit("PESQ needs the `pesq` package: .venv/bin/pip install pesq") from None
    try:
        model = aetk.load(args.model).eval()
    except ValueError as e:  # LoadError: a missing path, or not an aetk model
        raise SystemExit(str(e)) from None
    if not isinstance(model, SoundStream):
        raise SystemExit(f"{args.model} holds a {type(model).__name__}, not a codec")
    rates = [model.bitrate(q) / 1000 for q in range(1, model.num_quantizers + 1)]
    if not rates[0] * (1 - 1e-9) <= args.kbps <= rates[-1] * (1 + 1e-9):
        raise SystemExit(f"--kbps {args.kbps:g}: this codec runs at {rates[0]:g} to {rates[-1]:g} kbps")
    tool, why = opus_tool()
    if tool is None:
        print(f"Opus left out: {why}", file=sys.stderr)
    sr, q = model.sample_rate, model.n_quantizers_for(args.kbps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"model": args.model, "kbps": args.kbps, "levels": q, "cutoff_hz": args.cutoff_hz,
                    "n_fft": 512, "sources": {}}
    for data in args.data:
        try:
            x, lengths, unreadable = heldout_clips(data, sample_rate=sr, n=args.n, segment=5 * sr)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"--data {data}: {e}") from None
        with torch.no_grad():
            recon = model.decode(model.encode(x, q))[..., : x.shape[-1]].clamp(-1, 1)  # (B, 1, S)
        refs = [x[i, 0, :t].double().numpy() for i, t in enumerate(lengths)]
        estimates = {"codec": [recon[i, 0, :t].double().numpy() for i, t in enumerate(lengths)]}
        if tool is not None:
            estimates["Opus"] = [opus_round_trip(r.astype("float32"), sr, args.kbps, tool)[0] for r in refs]
        name = Path(data).name
        result = {"data": data, "clips": len(refs), "unreadable": unreadable, "cutoff_hz": args.cutoff_hz,
                  "title": f"{args.model} at {args.kbps:g} kbps beside Opus, held out: {name}",
                  "controls": pb.control_scores(refs, sr, cutoff_hz=args.cutoff_hz),
                  "estimates": {k: pb.breakdown(v, refs, sr, cutoff_hz=args.cutoff_hz) for k, v in estimates.items()}}
        result["figure"] = str(out / f"pesq-breakdown-{name}.png")
        pb.plot(result, result["figure"])
        report["sources"][name] = result
        print(f"{name}: " + "; ".join(f"{k} " + ", ".join(f"{v}={r[v]:.2f}" for v in pb.VIEWS)
                                      + f", quiet bins {r['quiet_bins_db']:+.1f} dB"
                                      for k, r in result["estimates"].items()), flush=True)
    (out / "pesq-breakdown.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"written: {out / 'pesq-breakdown.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
