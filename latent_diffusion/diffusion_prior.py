"""A diffusion prior over first-stage latents (or pixels): a diffusers UNet2DModel or DiT + DDPM;
over video latents (B, c, t, h, w), a DiT on spatio-temporal patches (`latent_diffusion.video_dit`).

Maths only: the training objective for given noise and timesteps, and seeded sampling with any
diffusers scheduler, with classifier-free guidance when class-conditioned. Latents are in the
scaled space ((z - shift_factor) * scaling_factor, unit variance). Class labels 0..K-1 index `num_classes` classes;
index K is the null class that label dropout trains and guidance contrasts against (DiT's
convention, so the same weights run in diffusers' DiTPipeline).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DiTTransformer2DModel, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.models.embeddings import LabelEmbedding
from torch import nn
from tqdm.auto import tqdm

from latent_diffusion.video_dit import ClassVideoDiT
from tokenizers_ae.pretrained import Pretrained, Saved, check_finite, expect, prepare_dir

log = logging.getLogger("aetk.export")

SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}
BETAS = {"scaled_linear": (0.00085, 0.012), "linear": (0.0001, 0.02)}
"""Stable Diffusion's betas suit unit-variance latents; DDPM's linear ones suit pixels in [-1, 1]."""


def build_unet(*, latent_channels: int, sample_size: int, block_out_channels: Sequence[int] = (64, 128),
               layers_per_block: int = 1, norm_num_groups: int = 32, attention: bool = True,
               num_classes: int = 0) -> UNet2DModel:
    """A UNet2DModel with attention at the lowest resolution (when `attention`); with `num_classes`,
    a class embedding of num_classes + 1 rows (the last is the null class)."""
    n = len(block_out_channels)
    down = ("DownBlock2D",) * (n - 1) + (("AttnDownBlock2D",) if attention else ("DownBlock2D",))
    up = (("AttnUpBlock2D",) if attention else ("UpBlock2D",)) + ("UpBlock2D",) * (n - 1)
    return UNet2DModel(sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
                       down_block_types=down, up_block_types=up, block_out_channels=tuple(block_out_channels),
                       layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
                       num_class_embeds=(num_classes + 1) if num_classes else None)


def build_dit(*, latent_channels: int, sample_size: int, num_layers: int = 6, num_heads: int = 4,
              head_dim: int = 32, patch_size: int = 2, num_classes: int = 0) -> DiTTransformer2DModel:
    """diffusers' DiT (adaLN-zero). DiT always embeds a class: an unconditional one has a single
    class, 0. Its table has num_classes + 1 rows, the last the null class."""
    dit = DiTTransformer2DModel(num_attention_heads=num_heads, attention_head_dim=head_dim,
                                in_channels=latent_channels, out_channels=latent_channels, num_layers=num_layers,
                                sample_size=sample_size, patch_size=patch_size,
                                num_embeds_ada_norm=max(num_classes, 1))
    _no_internal_label_dropout(dit)
    return dit


def _no_internal_label_dropout(net: nn.Module) -> None:
    # diffusers' LabelEmbedding drops labels in training mode with the global RNG; the task drops
    # them instead, seeded by position, so resume and multi-process runs stay exact.
    for m in net.modules():
        if isinstance(m, LabelEmbedding):
            m.dropout_prob = 0.0


DENOISERS = {"UNet2DModel": UNet2DModel, "DiTTransformer2DModel": DiTTransformer2DModel,
             "ClassVideoDiT": ClassVideoDiT}
DIT_NULL = 1000
"""The null class diffusers' DiTPipeline uses for guidance (ImageNet's 1000 classes)."""


class DiffusionPrior(Pretrained, nn.Module):
    """epsilon- or v-prediction denoising objective on (B, c, h, w) scaled latents or pixels.

    `net` is a UNet2DModel or DiTTransformer2DModel called as net(x_t, t (B,), class_labels).
    `num_classes` > 0 makes it class-conditional (labels (B,) in 0..K-1, K = null).
    `clip_sample` clamps predicted x0 to [-1, 1] while sampling: for pixels only.

    What sampling needs besides the weights travels with the model: `latent_shape` (c, h, w) of one
    sample, `scaling_factor` and `shift_factor` (latents were (z - shift) * scale), `space` ("latent" or "pixel"),
    `first_stage` (the KL-VAE whose decoder makes images of latents) and `class_names`.
    Saved as a diffusers pipeline directory (see `save_pretrained`).
    """

    saved_name, saved_what = "DiffusionPrior", "a diffusion prior"

    def __init__(self, net: nn.Module, *, prediction_type: str = "epsilon", num_train_timesteps: int = 1000,
                 beta_schedule: str = "scaled_linear", num_classes: int = 0, clip_sample: bool = False,
                 latent_shape: Sequence[int] = (), scaling_factor: float = 1.0, space: str = "latent",
                 first_stage: str | None = None, class_names: Sequence[str] = (), shift_factor: float = 0.0) -> None:
        super().__init__()
        if space not in ("latent", "pixel"):
            raise ValueError(f"space must be latent or pixel, got {space!r}")
        self.latent_shape, self.scaling_factor, self.space = [int(s) for s in latent_shape], scaling_factor, space
        self.first_stage, self.class_names, self.shift_factor = first_stage, list(class_names), float(shift_factor)
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")
        if beta_schedule not in BETAS:
            raise ValueError(f"beta_schedule must be one of {sorted(BETAS)}, got {beta_schedule!r}")
        self.net = net
        self.num_classes = num_classes
        self.null_label = num_classes
        """Class index guidance contrasts against (1000 in a DiTPipeline export's padded table)."""
        lo, hi = BETAS[beta_schedule]
        # clip_sample clamps each predicted x0 to [-1, 1]: right for pixels, wrong for unit-variance
        # latents (diffusers' default is True; it shrank latent samples to half their spread).
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                       beta_start=lo, beta_end=hi, prediction_type=prediction_type,
                                       clip_sample=clip_sample)

    # --- saving and loading ---------------------------------------------------------------------

    def pretrained_config(self) -> dict:
        sched = self.scheduler.config
        return {"denoiser": type(self.net).__name__, "net": dict(self.net.config),
                "prediction_type": sched.prediction_type, "num_train_timesteps": sched.num_train_timesteps,
                "beta_schedule": sched.beta_schedule, "clip_sample": sched.clip_sample, "num_classes": self.num_classes,
                "null_label": self.null_label, "latent_shape": self.latent_shape,
                "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor, "space": self.space,
                "first_stage": self.first_stage, "class_names": self.class_names}

    @classmethod
    def from_config(cls, config: dict) -> DiffusionPrior:
        net = DENOISERS[config["denoiser"]].from_config(config["net"])
        _no_internal_label_dropout(net)
        prior = cls(net, **{k: config[k] for k in ("prediction_type", "num_train_timesteps", "beta_schedule",
                                                   "num_classes", "clip_sample", "latent_shape", "scaling_factor",
                                                   "space", "first_stage", "class_names")},
                    shift_factor=config.get("shift_factor", 0.0))
        prior.null_label = config["null_label"]
        return prior

    @classmethod
    def from_saved(cls, saved: Saved) -> DiffusionPrior:
        expect(saved, cls.saved_name, cls.saved_what)
        if saved.source != "prior":
            return super().from_saved(saved)
        p = saved.path
        meta = json.loads((p / "prior.json").read_text())
        net = DENOISERS.get(meta.get("denoiser_class"), UNet2DModel).from_pretrained(p / meta.get("denoiser", "unet"))
        sched = DDPMScheduler.from_pretrained(p / "scheduler")
        prior = cls(net, prediction_type=sched.config.prediction_type,
                    num_train_timesteps=sched.config.num_train_timesteps, beta_schedule=sched.config.beta_schedule,
                    num_classes=meta.get("num_classes", 0), clip_sample=sched.config.clip_sample,
                    latent_shape=meta["latent_shape"], scaling_factor=meta["scaling_factor"],
                    space=meta.get("space", "latent"), first_stage=meta.get("first_stage"),
                    class_names=meta.get("class_names", []), shift_factor=meta.get("shift_factor", 0.0))
        prior.scheduler = sched
        prior.null_label = meta.get("null_label", prior.num_classes)
        return prior.eval()

    def save_pretrained(self, out: str | Path, *, first_stage: nn.Module | None = None) -> str:
        """A diffusers pipeline directory when one fits, plus `prior.json` for aetk; returns the pipeline
        class written ("" when none fits: the reason is logged and aetk still samples from it).

        Layout of `out`:
          prior.json            aetk's metadata: denoiser, space, latent shape, scaling factor, classes, null label
          unet/ or transformer/ the denoiser (diffusers UNet2DModel / DiTTransformer2DModel / aetk's
                                ClassVideoDiT; `transformer` in a DiTPipeline whichever it is)
          scheduler/            DDIMScheduler with the training noise schedule
          vqvae/ or vae/        `first_stage`, its scaling_factor set to the latents' (latent priors)
          model_index.json      which diffusers pipeline this is:
            unconditional UNet over latents -> LDMPipeline (vqvae, unet, scheduler)
            class-conditional UNet, or DiT  -> DiTPipeline (transformer, vae, scheduler, id2label)
            unconditional UNet over pixels  -> DDPMPipeline (unet, scheduler)
            video DiT                       -> none (aetk samples; the transformer loads with
                                               ClassVideoDiT.from_pretrained)
        so `DiffusionPipeline.from_pretrained(out)` samples offline with the same weights.

        DiTPipeline hard-codes ImageNet's null class (index 1000), so a class-conditional export pads
        the class table to 1001 rows: rows 0..K-1 are the classes, every later row the null embedding.
        aetk reads `null_label` from prior.json and samples identically.
        """
        check_finite(self.state_dict(), f"diffusion prior for {out}")
        out = prepare_dir(out)
        net, k = self.net, self.num_classes
        is_dit = isinstance(net, DiTTransformer2DModel)
        video = isinstance(net, ClassVideoDiT)
        pixel = self.space == "pixel"
        vae = None
        if not pixel and first_stage is not None and not video:
            vae = copy.deepcopy(first_stage.vae).float()  # a copy: safe to re-configure
            vae.register_to_config(scaling_factor=self.scaling_factor)  # the pipelines divide latents by it
            if self.shift_factor:  # where SD3/FLUX pipelines read it; DiT/LDM pipelines ignore it (below)
                vae.register_to_config(shift_factor=self.shift_factor)
        pipeline, null = "", self.null_label
        if video:
            log.info("a video prior: no diffusers pipeline takes a class-token Wan transformer; %s holds the "
                     "transformer and scheduler, and aetk samples from it", out)
        elif self.shift_factor and not pixel:
            log.info("latents shifted by %g before scaling: DiTPipeline and LDMPipeline decode z / scaling_factor "
                     "without a shift, so no pipeline is written; %s holds the denoiser, scheduler and vae, and aetk "
                     "samples from it", self.shift_factor, out)
        elif (k or is_dit) and vae is not None and k <= DIT_NULL:
            pipeline, null = "DiTPipeline", DIT_NULL
            net = _pad_classes(net, max(k, 1))
        elif not k and not is_dit and vae is not None:
            pipeline = "LDMPipeline"
        elif pixel and not k and not is_dit:
            pipeline = "DDPMPipeline"
        else:
            log.info("no diffusers pipeline fits (%s prior%s); %s holds the denoiser and scheduler only",
                     "DiT" if is_dit else "UNet", ", no first stage" if vae is None and not pixel else "", out)
        # DiTPipeline calls its denoiser `transformer` whatever it is (a UNet2DModel takes the same call).
        net_name = "transformer" if is_dit or video or pipeline == "DiTPipeline" else "unet"
        net.save_pretrained(out / net_name, safe_serialization=True)
        DDIMScheduler.from_config(self.scheduler.config).save_pretrained(out / "scheduler")
        if pipeline:
            components = {net_name: ["diffusers", type(net).__name__], "scheduler": ["diffusers", "DDIMScheduler"]}
            if vae is not None:
                vae_name = "vqvae" if pipeline == "LDMPipeline" else "vae"
                vae.save_pretrained(out / vae_name, safe_serialization=True)
                components[vae_name] = ["diffusers", "AutoencoderKL"]
            index = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__, **components}
            if pipeline == "DiTPipeline":
                index["id2label"] = {str(i): n for i, n in enumerate(self.class_names or ["unconditional"])}
            (out / "model_index.json").write_text(json.dumps(index, indent=1))
        meta = {"kind": "diffusion_prior", "denoiser": net_name, "denoiser_class": type(net).__name__,
                "space": self.space, "latent_shape": self.latent_shape, "scaling_factor": self.scaling_factor,
                "shift_factor": self.shift_factor, "first_stage": self.first_stage, "num_classes": k,
                "class_names": self.class_names, "null_label": null, "pipeline": pipeline}
        (out / "prior.json").write_text(json.dumps(meta, indent=1))
        return pipeline

    def class_input(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        """What the denoiser's class input is: labels, or DiT's one class for unconditional priors."""
        if labels is not None:
            return labels.to(device)
        if isinstance(self.net, DiTTransformer2DModel):
            return torch.zeros(batch, dtype=torch.long, device=device)
        return None

    def forward(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample loss (B,): mse between the denoiser's prediction and its target."""
        xt = self.scheduler.add_noise(x0, noise, timesteps)
        pred = self.net(xt, timesteps, class_labels=self.class_input(labels, len(x0), x0.device)).sample
        target = noise if self.scheduler.config.prediction_type == "epsilon" else \
            self.scheduler.get_velocity(x0, noise, timesteps)
        err = F.mse_loss(pred.float(), target.float(), reduction="none")
        return err.mean(dim=tuple(range(1, err.ndim)))


@torch.no_grad()
def sample(prior: DiffusionPrior, *, n: int, shape: Sequence[int] | None = None, seed: int = 0, steps: int = 50,
           sampler: str = "ddim", labels: torch.Tensor | None = None, guidance: float = 1.0,
           progress: bool = False) -> torch.Tensor:
    """n latents (n, *shape) in the scaled space, deterministic for a seed.

    With labels (n,) and guidance != 1, classifier-free guidance: one batched forward of the
    conditional and null-class halves, out = uncond + guidance * (cond - uncond), as diffusers'
    DiTPipeline computes it (so an exported pipeline gives the same sample).
    """
    shape = prior.latent_shape if shape is None else shape
    net = prior.net
    device, dtype = next(net.parameters()).device, next(net.parameters()).dtype
    if labels is not None and not prior.num_classes:
        raise ValueError("labels given, but this prior is unconditional")
    if labels is not None and not (0 <= int(labels.min()) and int(labels.max()) < prior.num_classes):
        raise ValueError(f"labels must lie in 0..{prior.num_classes - 1}, got {labels.tolist()}")
    sched = SAMPLERS[sampler].from_config(prior.scheduler.config)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g).to(device, dtype) * sched.init_noise_sigma
    guided = labels is not None and guidance != 1.0
    cls = prior.class_input(labels, n, device)
    if guided:
        cls = torch.cat([cls, torch.full_like(cls, prior.null_label)])
    for t in tqdm(sched.timesteps, desc="sample", disable=not progress, leave=False):
        inp = sched.scale_model_input(torch.cat([x, x]) if guided else x, t)
        out = net(inp, t.to(device).expand(len(inp)), class_labels=cls).sample
        if guided:
            cond, uncond = out.chunk(2)
            out = uncond + guidance * (cond - uncond)
        x = sched.step(out, t, x, generator=g).prev_sample
    return x


def _pad_classes(net: nn.Module, num_classes: int) -> nn.Module:
    """A copy of `net` whose class table has DIT_NULL + 1 rows, the null row repeated after the classes."""
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
