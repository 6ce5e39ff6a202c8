"""`aetk bench train-step`: steady-state training throughput of `aetk train`'s own code path
(`Trainer.step`, data loading included) and, with `reference=True`, of the common practice
(diffusers AutoencoderKL + latent-diffusion's LPIPSWithDiscriminator loop, shipped in
`eval/bench/reference_taming.py`) on the same model configuration, data and machine.

Both phases are timed: before `disc_start` (the reference still runs its discriminator and
adaptive weight; aetk does no discriminator work) and after it (full GAN step). The reference
runs in fp32, as the common loop does; aetk runs in the recipe's precision and in fp32.
Run one benchmark at a time: on a shared 2-core machine a concurrent job distorts both sides.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time

import torch

from eval.bench.machine import cpu_name
from eval.bench.reference_taming import LPIPSWithDiscriminator, ReferenceTrainer, reference_gradients
from tokenizers_ae.precision import training_precision
from train.config import Config
from train.families import family
from train.loop import Trainer
from train.tasks import StepContext


def _time(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def _time_aetk(cfg: Config, steps: int, warmup: int) -> dict[str, float]:
    trainer = Trainer(cfg)
    out = {}
    try:
        for phase, start in (("pre_disc", 0), ("gan", cfg.loss.disc_start)):
            trainer.step_idx = start
            trainer.data_iter = None

            def one():
                trainer.step(trainer.next_micro_batches())

            out[phase] = cfg.train.batch_size / _time(one, steps, warmup)
    finally:
        trainer.close()
    return out


def _reference_for(cfg: Config, vae) -> ReferenceTrainer:
    m, loss = cfg.model, cfg.loss
    ref_loss = LPIPSWithDiscriminator(disc_start=loss.disc_start, kl_weight=loss.kl_weight,
                                      disc_weight=loss.disc_weight, perceptual_weight=loss.perceptual_weight,
                                      disc_num_layers=loss.disc_layers, disc_ndf=loss.disc_channels,
                                      disc_in_channels=m.in_channels, pnet_rand=True)
    return ReferenceTrainer(vae, ref_loss, lr=cfg.train.lr, betas=tuple(cfg.train.betas))


def _time_reference(cfg: Config, batches: list[torch.Tensor], steps: int, warmup: int) -> dict[str, float]:
    torch.manual_seed(cfg.seed)
    ref = _reference_for(cfg, family(cfg.kind).build_model(cfg).vae)
    out = {}
    for phase, start in (("pre_disc", 0), ("gan", cfg.loss.disc_start)):
        it = iter(range(10**9))

        def one(it=it, start=start):
            i = next(it)
            ref.step(batches[i % len(batches)], global_step=start + i)

        out[phase] = cfg.train.batch_size / _time(one, steps, warmup)
    return out


def gradient_agreement(cfg: Config) -> dict[str, float]:
    """Max difference between aetk's generator gradient (x C*H*W: ours are means, LDM's sums) and
    the reference's, relative to the largest gradient element, on the same weights, batch and posterior
    noise, both phases, fp32."""
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mixed_precision="no"))
    torch.manual_seed(cfg.seed)
    fam = family(cfg.kind)
    task = fam.build_task(cfg, fam.build_model(cfg))
    ae = task.generator.autoencoder
    ref = _reference_for(cfg, copy.deepcopy(ae.vae))
    ref.loss.perceptual_loss.load_state_dict(task.rec_loss.perceptual.net.state_dict())
    ref.loss.discriminator.load_state_dict(task.discriminator.state_dict())
    r = cfg.data.resolution
    x = torch.rand(2, cfg.model.in_channels, r, r) * 2 - 1
    with torch.no_grad():
        mean, _ = ae.encode_moments(x)
    noise = torch.randn_like(mean)
    models = {"generator": task.generator, "discriminator": task.discriminator}
    out = {}
    for phase, step in (("pre_disc", 0), ("gan", cfg.loss.disc_start)):
        ref_g = reference_gradients(ref.vae, ref.loss, x, global_step=step, noise=noise)
        task.generator.zero_grad()
        ctx = StepContext(step=step, noise=lambda shape: noise)
        fwd = task.forward(models, {"x": x}, ctx)
        loss, _ = task.loss("generator", models, fwd, {"x": x}, ctx)
        loss.backward()
        scale = x[0].numel()
        # Relative to the largest gradient element: some gradients are exactly zero in theory
        # (attention key bias), so per-tensor ratios would compare rounding noise to rounding noise.
        err = max((p.grad * scale - ref_g[n]).abs().max().item() for n, p in ae.vae.named_parameters())
        top = max(ref_g[n].abs().max().item() for n, _ in ae.vae.named_parameters())
        out[phase] = err / top
    return out


def bench_train_step(cfg: Config, *, steps: int = 10, warmup: int = 2, reference: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = dataclasses.replace(cfg, output_dir=tmp, resume="never",
                                   train=dataclasses.replace(cfg.train, progress=False))
        first = training_precision(cfg.train.mixed_precision)  # what the recipe trains in here
        precisions = [first] + (["no"] if first != "no" else [])
        result = {
            "setting": {"resolution": cfg.data.resolution, "batch_size": cfg.train.batch_size,
                        "block_out_channels": cfg.model.block_out_channels,
                        "layers_per_block": cfg.model.layers_per_block, "disc_start": cfg.loss.disc_start,
                        "steps": steps, "warmup": warmup, "threads": torch.get_num_threads(),
                        "cpu": cpu_name(), "torch": torch.__version__},
            "aetk_images_per_s": {},
        }
        batches = None
        for prec in precisions:
            c = dataclasses.replace(base, train=dataclasses.replace(base.train, mixed_precision=prec))
            result["aetk_images_per_s"][prec] = _time_aetk(c, steps, warmup)
        if reference:
            t = Trainer(base)
            batches = [torch.cat([b["x"] for b in t.next_micro_batches()]) for _ in range(4)]
            t.close()
            ref = _time_reference(base, batches, steps, warmup)
            result["reference_fp32_images_per_s"] = ref
            result["speedup_vs_reference"] = {
                prec: {ph: v / ref[ph] for ph, v in ips.items()}
                for prec, ips in result["aetk_images_per_s"].items()}
            result["gradient_max_rel_error_vs_reference"] = gradient_agreement(base)
    return result
