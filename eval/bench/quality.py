"""`aetk bench quality`: held-out quality per second of training, aetk's recipe against the common
practice, on the same photos, the same architecture and the same wall-clock budget.

- aetk: `Trainer.step` (the code path of `aetk train`) on the recipe, evaluated with its EMA weights.
  A constant learning rate runs until the budget ends. A decaying one (wsd, cosine, linear) is fitted to
  the budget first: a short timed probe sets `train.max_steps` so that the decay ends with the budget, on
  whatever CPU runs the race (`fit_schedule`); the probe's weights are thrown away. A wsd race then re-fits
  that step count every REFIT_EVERY steps of its plateau from their measured time (`Refit`), so a slow
  spell during the probe, or after it, neither leaves budget unused nor cuts the cool-down off.
- reference: the latent-diffusion loop shipped in `eval/bench/reference_taming.py` (diffusers
  `AutoencoderKL` + `LPIPSWithDiscriminator`, two Adam optimizers, fp32) with latent-diffusion's kl-f4
  hyper-parameters: lr 4.5e-6 x batch size (its `scale_lr`), betas (0.5, 0.9), LPIPS weight 1,
  kl_weight 1e-6, disc_start 50001, no EMA. Its LPIPS has an untrained VGG trunk (nothing is downloaded):
  the cost of the real network, not its judgement. aetk's side uses whatever perceptual term the recipe sets.
  For a VQ recipe the reference is taming's VQGAN loop (`eval/bench/reference_vqgan.py`, the settings of its
  custom_vqgan.yaml: lr 4.5e-6 x batch size, betas (0.5, 0.9), LPIPS weight 1, codebook weight 1,
  disc_start 10000) on a diffusers VQModel, whose quantizer is taming's (a learned codebook); for FSQ, on
  the recipe's own FSQ model. Both sides then also report the fraction of codes the held-out images use.
- patch PCA with the recipe's stride and latent channels, fitted on training images: the floor a
  learned tokenizer has to clear.

Only training steps (data loading included) count against the budget; evaluations pause the clock.
Every evaluation runs the same code on both: the posterior mean (or the codes) decoded in fp32, on the held-out
images centre-cropped, scored with PSNR, MS-SSIM and HaarPSI (weight-free). Run it alone: a
concurrent job on the same cores changes the wall-clock, which is what is measured.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, VQModel
from torch.utils.data import DataLoader

from eval.baselines import PatchPCA
from eval.bench.machine import cpu_name
from eval.bench.reference_taming import LPIPSWithDiscriminator, ReferenceTrainer
from eval.bench.reference_vqgan import TAMING_VQGAN, VQLPIPSWithDiscriminator, VQReferenceTrainer, vqgan_forward
from eval.image import reconstruction_metrics
from tokenizers_ae.data.sources import build_image_dataset
from tokenizers_ae.files import atomic_write
from tokenizers_ae.precision import cpu_has_fast_bf16, training_precision
from train.config import Config, ConfigError
from train.families import family
from train.loop import Trainer

log = logging.getLogger("aetk.bench")
METRICS = ("psnr", "ms_ssim", "haarpsi")
TITLES = {"psnr": "PSNR (dB)", "ms_ssim": "MS-SSIM", "haarpsi": "HaarPSI"}
LDM_BASE_LR = 4.5e-6  # latent-diffusion's autoencoder configs; main.py multiplies it by the batch size
LDM_DISC_START = 50001  # latent-diffusion's kl-f4 / kl-f8 configs


def _images(path: str, resolution: int, n: int) -> torch.Tensor:
    ds = build_image_dataset(path, resolution=resolution, random_crop=False, random_flip=False, split="train")
    if len(ds) == 0:
        raise ValueError(f"{path}: no images")
    return torch.stack([ds[i]["x"] for i in range(min(n, len(ds)))])


def _reconstruct(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(reconstruction (B, C, H, W), token indices or None) of x in [-1, 1]: a diffusers AutoencoderKL from
    its posterior mean, a diffusers VQModel (the VQGAN reference) or aetk's VQVAE from their codes."""
    if isinstance(model, AutoencoderKL):
        return model.decode(model.encode(x).latent_dist.mode()).sample, None
    if isinstance(model, VQModel):
        rec, _, indices = vqgan_forward(model, x)
        return rec, indices
    q = model.encode(x)
    return model.decode(q.quantized), q.indices


@torch.no_grad()
def score(model: torch.nn.Module, x: torch.Tensor, batch: int = 32, codebook_size: int | None = None) -> dict:
    """PSNR, MS-SSIM and HaarPSI of `model`'s reconstructions of x (B, 3, H, W) in [-1, 1], fp32 (see
    `_reconstruct`); with `codebook_size`, also `usage`: the fraction of codes the held-out images use."""
    was_training = model.training
    model.eval()
    parts = [_reconstruct(model, x[s:s + batch]) for s in range(0, x.shape[0], batch)]
    model.train(was_training)
    recon = torch.cat([r.float().clamp(-1, 1) for r, _ in parts])
    m = reconstruction_metrics(x, recon)
    out = {k: float(m[k]) for k in METRICS}
    if codebook_size:
        used = torch.cat([i.reshape(-1) for _, i in parts]).unique().numel()
        out["usage"] = used / codebook_size
    return out


def _race(step: Callable[[], int], evaluate: Callable[[], dict], budget_s: float, evals: int,
          name: str, max_steps: Callable[[], int | None] = lambda: None,
          after_step: Callable[[int, float], None] = lambda steps, clock: None) -> list[dict]:
    """Run `step` (one optimizer step; returns the step count) until `budget_s` seconds of it have
    passed (or `max_steps()` steps, a recipe whose schedule ends sooner), evaluating at 0 and after every
    budget_s / evals seconds; the clock stops during evals. `after_step(steps, clock)` sees the clock."""
    points = [{"train_s": 0.0, "step": 0, **evaluate()}]
    clock, steps, nxt = 0.0, 0, budget_s / evals
    while clock < budget_s and (max_steps() is None or steps < max_steps()):
        t = time.perf_counter()
        steps = step()
        clock += time.perf_counter() - t
        after_step(steps, clock)
        if clock >= nxt or clock >= budget_s or steps == max_steps():
            points.append({"train_s": clock, "step": steps, **evaluate()})
            log.info("%s: %.0f s, step %d, PSNR %.2f dB", name, clock, steps, points[-1]["psnr"])
            while nxt <= clock:
                nxt += budget_s / evals
    return points


PROBE_STEPS = 24
"""Steps timed to fit a decaying learning-rate schedule to the budget (after 3 untimed ones, which pay
one-off costs: weight packing, data-loader start-up)."""
FIT_MARGIN = 0.97
"""The fitted schedule ends at this fraction of the budget: step times jitter by a percent or two, and a
decay cut off by the clock would leave the rate high at the final evaluation."""


def fit_schedule(cfg: Config, budget_s: float, probe_steps: int = PROBE_STEPS) -> tuple[Config, dict | None]:
    """A recipe whose learning rate decays (wsd, cosine, linear) is raced with its decay ending as the
    budget does, on whatever CPU runs it: time `probe_steps` steps of a throwaway trainer (its weights are
    discarded: the race starts from step 0) and set `train.max_steps` to FIT_MARGIN x budget / seconds
    per step. Returns (the recipe to race, {"s_per_step", "max_steps"}); a constant schedule comes back
    unchanged with None."""
    t = cfg.train
    if t.lr_schedule == "constant":
        return cfg, None
    trainer = Trainer(cfg)
    try:
        for _ in range(3):
            trainer.step(trainer.next_micro_batches())
        start = time.perf_counter()
        for _ in range(probe_steps):
            trainer.step(trainer.next_micro_batches())
        s_per_step = (time.perf_counter() - start) / probe_steps
    finally:
        trainer.close()
    steps = int(FIT_MARGIN * budget_s / s_per_step)
    try:
        fitted = dataclasses.replace(t, max_steps=steps)
    except ConfigError as e:  # e.g. a wsd warm-up that would run into the decay
        raise ValueError(f"a {budget_s:g} s budget fits only {steps} steps at {s_per_step:.3f} s a step, too few for "
                         f"the recipe's {t.lr_schedule} schedule ({e}); give more minutes") from None
    log.info("fitting the %s schedule to the budget: %.3f s a step over %d probe steps, so train.max_steps=%d",
             t.lr_schedule, s_per_step, probe_steps, steps)
    return dataclasses.replace(cfg, train=fitted), {
        "s_per_step": s_per_step, "max_steps": steps}


REFIT_EVERY = 100
"""A wsd race re-fits its step count to the budget every this many steps, from their measured time."""


class Refit:
    """Keeps a wsd race's cool-down ending with the budget while the machine's speed drifts: every
    REFIT_EVERY steps on the plateau, `train.max_steps` becomes the steps so far plus what the rest of
    FIT_MARGIN x budget holds at the last REFIT_EVERY steps' pace (`Trainer.replan`). The one-off probe
    alone left budget unused after a slow spell during it, and a slowdown after it cut the cool-down off.
    Once the cool-down has begun the plan stands."""

    def __init__(self, trainer: Trainer, budget_s: float) -> None:
        self.trainer, self.budget_s = trainer, budget_s
        self.mark = (0, 0.0)  # (steps, clock) at the last re-fit
        self.fits: list[int] = []  # max_steps after each re-fit that changed the plan

    def __call__(self, steps: int, clock: float) -> None:
        s0, c0 = self.mark
        if steps - s0 < REFIT_EVERY:
            return
        self.mark = (steps, clock)
        s_per_step = (clock - c0) / (steps - s0)
        target = steps + int((FIT_MARGIN * self.budget_s - clock) / s_per_step)
        try:
            changed = self.trainer.replan(target)
        except ConfigError:  # too little budget left for the cool-down at this pace: keep the plan
            changed = False
        if changed and (not self.fits or self.fits[-1] != target):
            self.fits.append(target)


def _aetk_curve(cfg: Config, x_val: torch.Tensor, budget_s: float, evals: int) -> tuple[list[dict], list[int]]:
    """(held-out scores along the race, the max_steps of each re-fit that changed it)."""
    trainer = Trainer(cfg)
    refit = Refit(trainer, budget_s) if cfg.train.lr_schedule == "wsd" else None
    try:
        def step() -> int:
            trainer.step(trainer.next_micro_batches())
            return trainer.step_idx

        def evaluate() -> dict:
            m = trainer.averaged_model()
            return score(m.vae if cfg.kind == "kl_vae" else m, x_val, codebook_size=_codebook_size(cfg))

        curve = _race(step, evaluate, budget_s, evals, "aetk", max_steps=lambda: trainer.cfg.train.max_steps,
                      after_step=refit or (lambda steps, clock: None))
        if refit and refit.fits:
            log.info("re-fitted the wsd schedule %d times as the step time drifted: max_steps %d",
                     len(refit.fits), refit.fits[-1])
        return curve, refit.fits if refit else []
    finally:
        trainer.close()


def _codebook_size(cfg: Config) -> int | None:
    """Codes a VQ recipe's tokens can take (FSQ: the product of its levels); None for a KL-VAE."""
    if cfg.kind != "vq_vae":
        return None
    q = cfg.model.quantizer
    return math.prod(q.fsq_levels) if q.type == "fsq" else q.codebook_size


def _reference_name(cfg: Config) -> str:
    return "latent-diffusion" if cfg.kind == "kl_vae" else "taming VQGAN"


def _reference_base_lr(cfg: Config) -> float:
    return LDM_BASE_LR if cfg.kind == "kl_vae" else TAMING_VQGAN["base_lr"]


def check_raceable(cfg: Config) -> None:
    """ValueError naming what is wrong unless the recipe has a reference loop: KL-VAE, VQ or FSQ."""
    if cfg.kind not in ("kl_vae", "vq_vae"):
        raise ValueError(f"aetk bench quality races KL-VAE and VQ recipes against latent-diffusion's and taming's "
                         f"loops; {cfg.kind} has no reference loop here")
    if cfg.kind == "vq_vae" and cfg.model.quantizer.type not in ("vq", "fsq"):
        raise ValueError(f"aetk bench quality has reference loops for KL, VQ and FSQ recipes; model.quantizer.type "
                         f"{cfg.model.quantizer.type} has none")


def reference_for(cfg: Config) -> ReferenceTrainer | VQReferenceTrainer:
    """The common practice's training of the recipe's architecture, from the same initial weights as aetk's:
    latent-diffusion's kl-f* loop for a KL-VAE; taming's VQGAN loop (custom_vqgan.yaml) for a VQ recipe,
    on a diffusers VQModel with taming's learned codebook (VQ) or on the recipe's own FSQ model."""
    check_raceable(cfg)
    torch.manual_seed(cfg.seed)
    model = family(cfg.kind).build_model(cfg)
    if cfg.kind == "kl_vae":
        loss = LPIPSWithDiscriminator(disc_start=LDM_DISC_START, kl_weight=1e-6, disc_weight=0.5,
                                      disc_in_channels=cfg.model.in_channels, pnet_rand=True)
        return ReferenceTrainer(model.vae, loss, lr=_reference_base_lr(cfg) * cfg.train.batch_size, betas=(0.5, 0.9))
    q = cfg.model.quantizer
    if q.type == "vq":
        # taming's VectorQuantizer2 is diffusers' VectorQuantizer: same networks, taming's codebook.
        generator = VQModel.from_config(model.backbone_config)
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("quantizer.")}
        missing, unexpected = generator.load_state_dict(state, strict=False)
        if unexpected or missing != ["quantize.embedding.weight"]:
            raise RuntimeError(f"VQ reference weights do not match aetk's: missing {missing}, unexpected {unexpected}")
    else:  # fsq
        generator = model
    loss = VQLPIPSWithDiscriminator(disc_start=TAMING_VQGAN["disc_start"], disc_weight=TAMING_VQGAN["disc_weight"],
                                    codebook_weight=TAMING_VQGAN["codebook_weight"],
                                    disc_in_channels=cfg.model.in_channels, pnet_rand=True)
    return VQReferenceTrainer(generator, loss, lr=_reference_base_lr(cfg) * cfg.train.batch_size, betas=(0.5, 0.9))


def _reference_curve(cfg: Config, x_val: torch.Tensor, budget_s: float, evals: int) -> list[dict]:
    ref = reference_for(cfg)
    d = cfg.data
    ds = build_image_dataset(d.path, resolution=d.resolution, seed=cfg.seed, random_crop=True, random_flip=True,
                             split="train")
    loader = DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    batches = iter(())
    count = 0

    def step() -> int:
        nonlocal batches, count
        try:
            b = next(batches)
        except StopIteration:
            batches = iter(loader)
            b = next(batches)
        ref.step(b["x"], global_step=count)
        count += 1
        return count

    model = ref.vae if isinstance(ref, ReferenceTrainer) else ref.model
    return _race(step, lambda: score(model, x_val, codebook_size=_codebook_size(cfg)), budget_s, evals, "reference")


def time_to_reach(curve: list[dict], target: float, key: str = "psnr") -> float | None:
    """Training seconds at which `curve` first reaches `target` (linear between evaluations), or None."""
    for a, b in zip(curve, curve[1:]):
        if b[key] >= target:
            if a[key] >= target:
                return a["train_s"]
            return a["train_s"] + (target - a[key]) / (b[key] - a[key]) * (b["train_s"] - a["train_s"])
    return None if not curve or curve[0][key] < target else curve[0]["train_s"]


def plot(result: dict, path: Path) -> Path:
    import matplotlib  # heavy: only the figure needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg")

    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4))
    for ax, key in zip(axes, METRICS):
        for name, style in (("aetk", "-o"), ("reference", "-s")):
            pts = result["curves"][name]
            ax.plot([p["train_s"] / 60 for p in pts], [p[key] for p in pts], style, label=result["labels"][name])
        ax.axhline(result["pca"][key], color="grey", ls="--", label=result["labels"]["pca"])
        ax.set_xlabel("training wall-clock, minutes")
        ax.set_title(f"held-out {TITLES[key]}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(result["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bench_quality(cfg: Config, *, budget_s: float = 1800.0, evals: int = 6, val_n: int = 256, fit_n: int = 1024,
                  out_dir: str | Path = "runs/bench-quality", only: tuple[str, ...] = ("aetk", "reference")) -> dict:
    """The race of the module docstring. Writes quality.png (and the returned dict) under `out_dir`."""
    check_raceable(cfg)  # before any training: a recipe with no reference loop fails now, not after its half
    d = cfg.data
    if not d.val_path:
        raise ValueError("the recipe needs data.val_path: held-out images no training step sees")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x_val = _images(d.val_path, d.resolution, val_n)
    fit = _images(d.path, d.resolution, fit_n)
    factor = 2 ** (len(cfg.model.block_out_channels) - 1)
    pca = PatchPCA(factor=factor, channels=cfg.model.latent_channels).fit(fit)
    pca_m = reconstruction_metrics(x_val, pca.reconstruct(x_val))
    precision = training_precision(cfg.train.mixed_precision)
    if precision == "bf16" and not torch.cuda.is_available() and not cpu_has_fast_bf16():
        log.info("this CPU has no native bf16: aetk runs fp32, as the reference does")
        precision = "no"
    with tempfile.TemporaryDirectory() as tmp:
        run = dataclasses.replace(cfg, output_dir=tmp, resume="never", train=dataclasses.replace(
            cfg.train, mixed_precision=precision, progress=False, eval_every=10**9,
            checkpoint_every=10**9))
        curves, fitted = {}, None
        partial = out / "quality.partial.json"  # a finished side survives an interrupted race
        if "aetk" in only:
            run, fitted = fit_schedule(run, budget_s)
            curves["aetk"], refits = _aetk_curve(run, x_val, budget_s, evals)
            if fitted is not None:
                fitted |= {"refits": refits, "ran_steps": curves["aetk"][-1]["step"]}
            atomic_write(partial, lambda p: p.write_text(json.dumps({"pca": pca_m, "schedule_fitted": fitted,
                                                                     "curves": curves}, indent=1)))
        if "reference" in only:
            curves["reference"] = _reference_curve(run, x_val, budget_s, evals)
        partial.unlink(missing_ok=True)
    result = {
        "setting": {"data": d.path, "val": d.val_path, "val_n": int(x_val.shape[0]), "fit_n": int(fit.shape[0]),
                    "resolution": d.resolution, "factor": factor, "latent_channels": cfg.model.latent_channels,
                    "block_out_channels": list(cfg.model.block_out_channels), "batch_size": cfg.train.batch_size,
                    "budget_s": budget_s, "aetk_precision": precision, "aetk_lr": cfg.train.lr,
                    "reference_lr": _reference_base_lr(cfg) * cfg.train.batch_size, "threads": torch.get_num_threads(),
                    "cpu": cpu_name(), "torch": torch.__version__, "aetk_lr_schedule": cfg.train.lr_schedule,
                    "aetk_schedule_fitted": fitted},
        "pca": {k: float(pca_m[k]) for k in METRICS},
        "curves": curves,
    }
    if "aetk" in curves and "reference" in curves:
        ref_final = curves["reference"][-1]
        reach = time_to_reach(curves["aetk"], ref_final["psnr"])
        final = curves["aetk"][-1]
        result["targets"] = {
            "reference_final_psnr": ref_final["psnr"],
            "aetk_seconds_to_reference_final_psnr": reach,
            "time_ratio": None if reach is None else reach / ref_final["train_s"],
            "half_the_time": reach is not None and reach <= 0.5 * ref_final["train_s"],
            "beats_pca_psnr": final["psnr"] > result["pca"]["psnr"],
            "beats_pca_ms_ssim": final["ms_ssim"] > result["pca"]["ms_ssim"],
        }
        shown = "fp32" if precision == "no" else precision
        result["labels"] = {"aetk": f"aetk ({shown}, EMA)", "reference": f"{_reference_name(cfg)} loop (fp32)",
                            "pca": f"patch PCA f{factor}, {cfg.model.latent_channels} ch"}
        if "usage" in final:
            # taming's codebooks are known to collapse; a tokenizer that uses few of its codes wastes its rate.
            result["targets"]["codebook_usage"] = final["usage"]
            result["targets"]["usage_at_least_90_percent"] = final["usage"] >= 0.9
            for name in ("aetk", "reference"):
                result["labels"][name] += f", {curves[name][-1]['usage']:.0%} of codes used"
        result["title"] = (f"{d.path} at {d.resolution} px, held-out {x_val.shape[0]} crops, "
                           f"{budget_s / 60:g} min each on {torch.get_num_threads()} threads of "
                           f"{result['setting']['cpu']}")
        result["figure"] = str(plot(result, out / "quality.png"))
    return result
