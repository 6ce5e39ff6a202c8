"""`aetk bench precision`: train the same recipe in fp32 and in reduced precision for N steps and
compare the family's validation metrics (PSNR for tokenizers; a prior's denoising loss, a codec's
SI-SNR and mel distance), so a faster precision is shown not to cost quality."""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

from train.config import Config
from train.run import train


def bench_precision(cfg: Config, *, steps: int = 200, precisions: tuple[str, ...] = ("no", "bf16")) -> dict:
    out: dict = {"steps": steps, "psnr_db": {}, "ssim": {}, "eval": {}, "seconds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for prec in precisions:
            run_dir = Path(tmp) / prec
            t = dataclasses.replace(cfg.train, mixed_precision=prec, max_steps=steps, eval_every=steps,
                                    checkpoint_every=steps, log_every=max(1, steps // 10), progress=False)
            c = dataclasses.replace(cfg, output_dir=str(run_dir), resume="never", train=t)
            start = time.perf_counter()
            train(c).close()
            out["seconds"][prec] = time.perf_counter() - start
            rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
            evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
            if not evals:
                raise RuntimeError(f"the {prec} run logged no evaluation in {steps} steps")
            last = evals[-1]
            out["eval"][prec] = {k.removeprefix("eval/"): v for k, v in last.items()
                                 if k.startswith("eval/") and isinstance(v, (int, float))}
            if "eval/psnr" in last:
                out["psnr_db"][prec], out["ssim"][prec] = last["eval/psnr"], last.get("eval/ssim")
    base = out["psnr_db"].get("no")
    if base is not None:
        out["psnr_delta_db_vs_fp32"] = {p: v - base for p, v in out["psnr_db"].items() if p != "no"}
    return out
