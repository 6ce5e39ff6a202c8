"""`aetk train`: a Trainer driven to max_steps with logging, evaluation, checkpoints and export.

Run directory:
  config.yaml          resolved config (resume/reproduce from it)
  checkpoints/step-N/  full resumable state (atomic)
  model/               EMA weights: a diffusers AutoencoderKL / VQModel, aetk's native format, or a prior
  metrics.jsonl        one JSON object per log/eval event
  samples/             reconstruction grids (PNG)
  logs/                TensorBoard
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from eval.image import reconstruction_metrics, save_reconstruction_grid
from eval.latents import latent_statistics, set_scaling_factor
from eval.precision import precision_audit
from tokenizers_ae.models.kl_vae import KLVAE
from train.checkpoint import fault_point
from train.config import Config
from train.loop import Trainer

log = logging.getLogger("aetk.train")


class MetricsLog:
    """Appends JSON lines to metrics.jsonl (main process) and mirrors scalars to the trackers."""

    def __init__(self, trainer: Trainer) -> None:
        self.acc = trainer.accelerator
        self.path = trainer.run_dir / "metrics.jsonl"

    def write(self, step: int, values: dict) -> None:
        if not self.acc.is_main_process:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        self.acc.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)


@torch.no_grad()
def evaluate(trainer: Trainer, step: int) -> dict[str, float]:
    """Reconstruct the validation batch with the averaged model; metrics + grid (main process).
    A diffusion or AR prior instead samples latents or tokens and, with a first stage, decodes them."""
    if trainer.cfg.model.kind == "diffusion_prior":
        return _evaluate_prior(trainer, step)
    if trainer.cfg.model.kind == "ar_prior":
        from train.ar_sample import evaluate_ar

        return evaluate_ar(trainer, step)
    if trainer.cfg.model.kind == "soundstream":
        return _evaluate_audio(trainer, step)
    if trainer.cfg.model.kind == "classic":
        from eval.classic import evaluate_batch

        batch = {k: v.to(trainer.accelerator.device) if torch.is_tensor(v) else v
                 for k, v in trainer.loaders.val_batch().items()}
        return evaluate_batch(trainer.averaged_model(), batch, grid=trainer.run_dir / "samples" / f"recon-{step:07d}.png")
    model = trainer.averaged_model()
    was_training = model.training
    model.eval()
    batch = trainer.loaders.val_batch()
    x = batch["x"].to(trainer.accelerator.device)
    with trainer.accelerator.autocast():
        recon = model(x).recon.float().clamp(-1, 1)
    model.train(was_training)
    lp = trainer.task.rec_loss.perceptual
    metrics = reconstruction_metrics(x, recon, lpips=lp if lp is not None and lp.pretrained else None)
    save_reconstruction_grid(x, recon, path=trainer.run_dir / "samples" / f"recon-{step:07d}.png")
    return {f"eval/{k}": v for k, v in metrics.items()}


def _evaluate_audio(trainer: Trainer, step: int) -> dict[str, float]:
    """Codec: SI-SNR and mel distance of the validation clips at the full rate and at each standard
    bitrate the model has (1.5/3/6/12 kbps at 24 kHz); WAVs and a spectrogram figure."""
    from eval.audio import audio_metrics, save_audio_examples, save_spectrogram_grid

    model = trainer.averaged_model()
    was_training = model.training
    model.eval()
    x = trainer.loaders.val_batch()["x"].to(trainer.accelerator.device)
    sr = model.sample_rate
    out = {}
    levels = sorted({n for n in (2, 4, 8, 16, model.num_quantizers) if n <= model.num_quantizers})
    for n in levels:
        with trainer.accelerator.autocast():
            recon = model(x, n_quantizers=n).recon.float().clamp(-1, 1)
        m = audio_metrics(recon, x, sample_rate=sr)
        tag = f"{model.bitrate(n) / 1000:g}kbps"
        out.update({f"eval/{k}@{tag}": v for k, v in m.items()})
    out.update({f"eval/{k}": v for k, v in m.items()})  # at the full rate
    model.train(was_training)
    samples = trainer.run_dir / "samples"
    save_audio_examples(x, recon, samples / f"audio-{step:07d}", sample_rate=sr)
    save_spectrogram_grid(x, recon, samples / f"spectrogram-{step:07d}.png", sample_rate=sr)
    return out


def _first_stage(trainer: Trainer):
    if not trainer.cfg.model.first_stage:
        return None
    if not hasattr(trainer, "_vae"):
        from train.export import load_vae

        trainer._vae = load_vae(trainer.cfg.model.first_stage).to(trainer.accelerator.device)
    return trainer._vae


def _evaluate_prior(trainer: Trainer, step: int) -> dict[str, float]:
    """Seeded samples (classes in turn, guided, when conditional) -> images: decoded by the first
    stage, or the samples themselves for the pixel-space baseline -> samples/sample-STEP.png; the
    held-out denoising loss; nearest-neighbour distances of samples and of held-out images to the
    training images (samples far below the held-out distance are copies)."""
    from latent_diffusion.diffusion_prior import sample
    from torchvision.utils import make_grid, save_image

    from eval.prior import denoising_loss, nn_rms
    from train.data.latents import PixelItems

    prior = trainer.averaged_model()
    prior.eval()
    data, m = trainer.loaders.train_dataset, trainer.cfg.model
    n = trainer.cfg.data.val_size
    device = trainer.accelerator.device
    labels = torch.arange(n) % prior.num_classes if prior.num_classes else None
    z = sample(prior, n=n, shape=data.latent_shape, seed=trainer.cfg.seed, steps=25, labels=labels,
               guidance=m.guidance_scale)
    val = trainer.loaders.val_batch()
    val_x, val_y = val["x"].to(device), val.get("y") if prior.num_classes else None
    out = {"eval/sample_mean": float(z.mean()), "eval/sample_std": float(z.std()),
           "eval/val_denoise_loss": denoising_loss(prior, val_x, val_y, seed=trainer.cfg.seed)}
    prior.train()
    vae = _first_stage(trainer)
    pixel = isinstance(data, PixelItems)
    if not pixel and vae is None:
        return out
    to_images = (lambda t: t.float().clamp(-1, 1)) if pixel else \
        (lambda t: vae.decode(t.to(device) / data.scaling_factor).sample.float().clamp(-1, 1))
    if not hasattr(trainer, "_prior_reference"):  # training images for the copy check, decoded once
        k = min(256, len(data))
        trainer._prior_reference = torch.cat([to_images(torch.stack([data[i]["x"] for i in range(s, min(s + 32, k))]))
                                              for s in range(0, k, 32)])
    images = to_images(z)
    out["eval/nn_rms_sample_to_train"] = float(nn_rms(images, trainer._prior_reference).median())
    out["eval/nn_rms_val_to_train"] = float(nn_rms(to_images(val_x), trainer._prior_reference).median())
    path = trainer.run_dir / "samples" / f"sample-{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = prior.num_classes if prior.num_classes and prior.num_classes <= 16 else 8
    save_image(make_grid((images + 1) / 2, nrow=nrow, padding=2, pad_value=1.0), path)
    return out


def export_model(trainer: Trainer, out_dir: Path) -> Path:
    """The averaged weights in the ecosystem's format: a diffusers AutoencoderKL (KL-VAE) or VQModel
    (VQ with a plain codebook), else aetk's native format with the reason logged."""
    model = trainer.averaged_model()
    if isinstance(model, KLVAE):
        return _export_kl(trainer, model.vae, out_dir)
    if trainer.cfg.model.kind == "diffusion_prior":  # a diffusers pipeline directory when one fits
        from train.data.latents import PixelItems
        from train.prior_export import export_prior

        data = trainer.loaders.train_dataset
        export_prior(model, out_dir, latent_shape=data.latent_shape, scaling_factor=data.scaling_factor,
                     pixel=isinstance(data, PixelItems), first_stage=trainer.cfg.model.first_stage,
                     class_names=data.class_names if model.num_classes else [])
        return out_dir
    if trainer.cfg.model.kind == "ar_prior":  # transformers' save_pretrained + prior.json
        from train.ar_sample import export_ar

        a = trainer.cfg.model.ar
        return export_ar(model, out_dir, first_stage=trainer.cfg.model.first_stage,
                         sampling={"top_k": a.top_k, "top_p": a.top_p, "temperature": a.temperature},
                         class_names=trainer.loaders.train_dataset.manifest.get("class_names"))
    if trainer.cfg.model.kind == "soundstream":  # aetk's native format (+ the recipe to rebuild it)
        from train.export import save_native

        save_native(model, out_dir, model_config={"recipe": model.recipe})
        return out_dir
    if trainer.cfg.model.kind == "classic":  # plain nn.Modules: aetk's native format, with model + data keys
        from train.config import config_to_dict
        from train.export import save_native

        cfg = config_to_dict(trainer.cfg)
        save_native(model, out_dir, model_config={"recipe": cfg["model"], "data": cfg["data"]})
        return out_dir
    from train.export import export_vq

    written = export_vq(model, out_dir)
    if "native" in written:
        log.warning("model/ is in %s", written)
    return out_dir


def _export_kl(trainer: Trainer, vae, out_dir: Path) -> Path:
    """With the latent scaling factor measured on the training data (1/std of posterior samples, as
    Stable Diffusion's 0.18215 was derived)."""
    ds = trainer.loaders.train_dataset
    n = min(trainer.cfg.train.latent_stats_images, len(ds))
    device = trainer.accelerator.device
    batches = (torch.stack([ds[i]["x"] for i in range(s, min(s + 16, n))]).to(device) for s in range(0, n, 16))
    stats = latent_statistics(vae, batches, seed=trainer.cfg.seed)
    set_scaling_factor(vae, stats["scaling_factor"])
    # diffusers pipelines upcast a VAE to fp32 when `force_upcast` is set: record whether it must.
    audit = precision_audit(vae, torch.stack([ds[i]["x"] for i in range(min(8, n))]).to(device),
                            lambda m, t: m(t, sample_posterior=False).sample)
    vae.register_to_config(force_upcast=not audit["fp16_safe"])
    stats["fp16_safe"] = audit["fp16_safe"]
    vae.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "latent_stats.json").write_text(json.dumps(stats, indent=1))
    return out_dir


def train(cfg: Config) -> Trainer:
    trainer = Trainer(cfg)
    acc = trainer.accelerator
    run_dir = trainer.run_dir
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(trainer.config_yaml())
    acc.init_trackers("aetk")
    resumed = trainer.maybe_resume()
    if resumed is not None:
        log.info("resumed from %s at step %d", resumed, trainer.step_idx)
    metrics = MetricsLog(trainer)
    t = cfg.train
    bar = tqdm(total=t.max_steps, initial=trainer.step_idx, desc="train", unit="step",
               disable=not (t.progress and acc.is_local_main_process), dynamic_ncols=True, mininterval=1.0)
    window_start, window_images = time.perf_counter(), 0
    try:
        while trainer.step_idx < t.max_steps:
            fault_point("kill_at_step", trainer.step_idx)
            batches = trainer.next_micro_batches()
            logs = trainer.step(batches)
            step = trainer.step_idx  # steps completed
            window_images += t.batch_size
            bar.update(1)
            if step % t.log_every == 0 or step == t.max_steps:
                dt = time.perf_counter() - window_start
                logs["images_per_s"] = window_images / max(dt, 1e-9)
                logs["bad_items"] = len(trainer.bad_items)
                metrics.write(step, logs)
                bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k.endswith("loss")})
                window_start, window_images = time.perf_counter(), 0
            if step % t.eval_every == 0 or step == t.max_steps:
                if acc.is_main_process:
                    metrics.write(step, evaluate(trainer, step))
                acc.wait_for_everyone()
            if step % t.checkpoint_every == 0 or step == t.max_steps:
                trainer.save()
        if acc.is_main_process:
            export_model(trainer, run_dir / "model")
            summary = {"steps": trainer.step_idx, "bad_items": len(trainer.bad_items),
                       "bad_paths": [trainer.loaders.train_dataset.describe(i) for i in sorted(trainer.bad_items)]}
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        acc.wait_for_everyone()
    except BaseException:
        trainer.close()  # free accelerate's process-wide state, so the next run in this process can start
        raise
    finally:
        bar.close()
    return trainer
