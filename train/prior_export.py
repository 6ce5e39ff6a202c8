"""A trained diffusion prior as one diffusers pipeline directory (plus `prior.json` for aetk).

Layout of `model/`:
  prior.json            aetk's metadata: denoiser, space, latent shape, scaling factor, classes, null label
  unet/ or transformer/ the denoiser (diffusers UNet2DModel / DiTTransformer2DModel; `transformer`
                        in a DiTPipeline whichever it is)
  scheduler/            DDIMScheduler with the training noise schedule
  vqvae/ or vae/        the first-stage KL-VAE, its scaling_factor set to the latents' (latent priors)
  model_index.json      which diffusers pipeline this is:
    unconditional UNet over latents -> LDMPipeline (vqvae, unet, scheduler)
    class-conditional UNet, or DiT  -> DiTPipeline (transformer, vae, scheduler, id2label)
    unconditional UNet over pixels  -> DDPMPipeline (unet, scheduler)
so `DiffusionPipeline.from_pretrained(model_dir)` samples offline with the same weights.

DiTPipeline hard-codes ImageNet's null class (index 1000), so a class-conditional export pads the
class table to 1001 rows: rows 0..K-1 are the classes, every later row the null embedding. aetk
reads `null_label` from prior.json and samples identically.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiTTransformer2DModel, UNet2DModel
from torch import nn

from latent_diffusion.diffusion_prior import DiffusionPrior

log = logging.getLogger("aetk.export")
DIT_NULL = 1000
"""The null class diffusers' DiTPipeline uses for guidance (ImageNet's 1000 classes)."""


def _pad_classes(net: nn.Module, num_classes: int) -> nn.Module:
    """A copy of `net` whose class table has DIT_NULL + 1 rows, the null row repeated after the classes."""
    from diffusers.models.embeddings import LabelEmbedding

    net = copy.deepcopy(net)

    def padded(table: torch.Tensor) -> torch.Tensor:
        rows = table[num_classes:num_classes + 1].expand(DIT_NULL + 1 - num_classes, -1)
        return torch.cat([table[:num_classes], rows]).clone()

    if isinstance(net, DiTTransformer2DModel):
        for m in net.modules():
            if isinstance(m, LabelEmbedding):
                emb = nn.Embedding.from_pretrained(padded(m.embedding_table.weight.data), freeze=False)
                m.embedding_table, m.num_classes = emb, DIT_NULL
        net.register_to_config(num_embeds_ada_norm=DIT_NULL)
    else:
        net.class_embedding = nn.Embedding.from_pretrained(padded(net.class_embedding.weight.data), freeze=False)
        net.register_to_config(num_class_embeds=DIT_NULL + 1)
    return net


def export_prior(prior: DiffusionPrior, out_dir: Path, *, latent_shape: list[int], scaling_factor: float,
                 pixel: bool, first_stage: str | None, class_names: list[str]) -> str:
    """Write `out_dir` (see the module docstring); returns the diffusers pipeline class written, or
    "" when none fits (the reason is logged; aetk still samples from it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    net, k = prior.net, prior.num_classes
    is_dit = isinstance(net, DiTTransformer2DModel)
    vae = None
    if not pixel and first_stage:
        from train.export import load_vae

        vae = load_vae(first_stage).float()  # a fresh copy: safe to re-configure
        vae.register_to_config(scaling_factor=scaling_factor)  # the pipelines divide latents by it
    pipeline, null = "", prior.null_label
    if (k or is_dit) and vae is not None and k <= DIT_NULL:
        pipeline, null = "DiTPipeline", DIT_NULL
        net = _pad_classes(net, max(k, 1))
    elif not k and not is_dit and vae is not None:
        pipeline = "LDMPipeline"
    elif pixel and not k and not is_dit:
        pipeline = "DDPMPipeline"
    else:
        log.info("no diffusers pipeline fits (%s prior%s); model/ holds the denoiser and scheduler only",
                 "DiT" if is_dit else "UNet", ", no first stage" if vae is None and not pixel else "")
    # DiTPipeline calls its denoiser `transformer` whatever it is (a UNet2DModel takes the same call).
    net_name = "transformer" if is_dit or pipeline == "DiTPipeline" else "unet"
    net.save_pretrained(out_dir / net_name, safe_serialization=True)
    DDIMScheduler.from_config(prior.scheduler.config).save_pretrained(out_dir / "scheduler")
    if pipeline:
        components = {net_name: ["diffusers", type(net).__name__], "scheduler": ["diffusers", "DDIMScheduler"]}
        if vae is not None:
            vae_name = "vqvae" if pipeline == "LDMPipeline" else "vae"
            vae.save_pretrained(out_dir / vae_name, safe_serialization=True)
            components[vae_name] = ["diffusers", "AutoencoderKL"]
        index = {"_class_name": pipeline, "_diffusers_version": _diffusers_version(), **components}
        if pipeline == "DiTPipeline":
            index["id2label"] = {str(i): n for i, n in enumerate(class_names or ["unconditional"])}
        (out_dir / "model_index.json").write_text(json.dumps(index, indent=1))
    meta = {"kind": "diffusion_prior", "denoiser": net_name, "denoiser_class": type(net).__name__, "space": "pixel" if pixel else "latent",
            "latent_shape": list(latent_shape), "scaling_factor": scaling_factor, "first_stage": first_stage,
            "num_classes": k, "class_names": list(class_names), "null_label": null, "pipeline": pipeline}
    (out_dir / "prior.json").write_text(json.dumps(meta, indent=1))
    return pipeline


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def load_prior(model_dir: str | Path) -> tuple[DiffusionPrior, dict]:
    """(prior in eval mode, prior.json) from an exported model/ directory or its run directory."""
    from train.config import ConfigError

    p = Path(model_dir)
    if (p / "model" / "prior.json").is_file():
        p = p / "model"
    if not (p / "prior.json").is_file():
        raise ConfigError(f"{model_dir}: no prior.json (train a model.kind=diffusion_prior run first)")
    meta = json.loads((p / "prior.json").read_text())
    cls = DiTTransformer2DModel if meta.get("denoiser_class") == "DiTTransformer2DModel" else UNet2DModel
    net = cls.from_pretrained(p / meta.get("denoiser", "unet"))
    sched = DDPMScheduler.from_pretrained(p / "scheduler")
    prior = DiffusionPrior(net, prediction_type=sched.config.prediction_type,
                           num_train_timesteps=sched.config.num_train_timesteps,
                           beta_schedule=sched.config.beta_schedule, num_classes=meta.get("num_classes", 0),
                           clip_sample=sched.config.clip_sample)
    prior.scheduler = sched
    prior.null_label = meta.get("null_label", prior.num_classes)
    return prior.eval(), meta
