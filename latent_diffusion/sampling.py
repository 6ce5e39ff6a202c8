"""From a prior's samples to files: class labels to sample, the first stage's decode, PNG grids and WAVs.

Diffusion priors sample latents (`diffusion_prior.sample`) that a KL-VAE decodes; AR priors sample
tokens (`ar_prior.sample`) that a VQ tokenizer or an audio codec decodes. Both write a PNG grid of
images, or one WAV per sample for audio.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from audio_codec.files import write_wav
from audio_codec.model import SoundStream
from latent_diffusion.ar_prior import TokenLayout
from tokenizers_ae.models.kl_vae import KLVAE
from tokenizers_ae.models.video_vae import VideoVAE
from tokenizers_ae.models.vq_vae import VQVAE


def sample_labels(n: int, num_classes: int, label: int | str | None,
                  class_names: list[str] | None = None) -> torch.Tensor | None:
    """(n,) labels: `label` is a class index or name, or a comma-separated list of them cycled over
    the samples; None gives every class in turn. None for an unconditional prior (0 classes).
    ValueError naming the label when it is not a class of the prior."""
    if num_classes == 0:
        if label is not None:
            raise ValueError("--label: this prior is unconditional (its data carried no labels)")
        return None
    if label is None:
        return torch.arange(n) % num_classes
    ids = []
    for v in str(label).split(","):
        v = v.strip()
        if class_names and v in class_names:  # names first: digits' classes are named "0".."9"
            ids.append(class_names.index(v))
        elif v.lstrip("-").isdigit():
            ids.append(int(v))
        else:
            raise ValueError(f"--label {v!r}: not a class name of this prior ({class_names})")
        if not 0 <= ids[-1] < num_classes:
            raise ValueError(f"--label {ids[-1]}: must be in [0, {num_classes})")
    return torch.tensor([ids[i % len(ids)] for i in range(n)])


@torch.no_grad()
def decode_latents(vae: KLVAE | VideoVAE, z: torch.Tensor, scaling_factor: float,
                   tile: int | None = None, shift_factor: float = 0.0) -> torch.Tensor:
    """Scaled latents (n, c, h, w) = (z - shift_factor) * scaling_factor -> images (n, C, H, W) in [-1, 1];
    video latents (n, c, t, h, w) -> clips (n, C, T, H, W)."""
    p = next(vae.parameters())
    return vae.decode(z.to(p.device, p.dtype) / scaling_factor + shift_factor, tile=tile).float().clamp(-1, 1)


def video_frames(clips: torch.Tensor) -> torch.Tensor:
    """(n, C, T, H, W) -> (n*T, C, H, W): each clip's frames in a row of a grid (`nrow=T`)."""
    n, c, t, h, w = clips.shape
    return clips.transpose(1, 2).reshape(n * t, c, h, w)


def save_gif(clips: torch.Tensor, path: str | Path, *, fps: float = 6.0, scale: int = 4) -> Path:
    """(n, C, T, H, W) in [-1, 1] -> one animated GIF of the clips side by side, upscaled `scale`x
    (nearest), looping: moving samples are easier to judge moving."""
    from PIL import Image  # pillow: only GIFs need it here

    n, c, t, h, w = clips.shape
    frames = []
    for k in range(t):
        grid = make_grid((clips[:, :, k].float().cpu() + 1) / 2, nrow=min(n, 8), padding=2, pad_value=1.0)
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
        frames.append(Image.fromarray((grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    return path


def check_token_decoder(first_stage: torch.nn.Module, layout: TokenLayout, where: str) -> None:
    """ValueError unless `first_stage` decodes this layout's tokens (a VQ tokenizer for images, a codec for audio)."""
    want = SoundStream if layout.modality == "audio" else VQVAE
    if not isinstance(first_stage, want):
        raise ValueError(f"{where} is a {type(first_stage).__name__}, not a {want.__name__}: it cannot decode "
                         f"{layout.modality} tokens")


@torch.no_grad()
def decode_tokens(first_stage: VQVAE | SoundStream, layout: TokenLayout, tokens: torch.Tensor,
                  tile: int | None = None) -> torch.Tensor:
    """tokens (n, *shape) -> images (n, C, H, W) or audio (n, 1, T), in [-1, 1]."""
    tokens = tokens.to(next(first_stage.parameters()).device)
    out = first_stage.decode(tokens) if layout.modality == "audio" else first_stage.decode_indices(tokens, tile)
    return out.float().clamp(-1, 1)


def save_grid(images: torch.Tensor, path: str | Path, *, nrow: int = 8) -> Path:
    """(n, C, H, W) in [-1, 1] -> one PNG grid, `nrow` images per row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid((images + 1) / 2, nrow=nrow, padding=2, pad_value=1.0), path)
    return path


def save_samples(decoded: torch.Tensor, modality: str, out: str | Path, *, sample_rate: int | None = None,
                 nrow: int = 8) -> list[Path]:
    """Images -> one PNG grid at `out`; audio -> `out/sample-000.wav`, ... (16-bit)."""
    if modality == "image":
        return [save_grid(decoded, out, nrow=nrow)]
    return [write_wav(Path(out) / f"sample-{i:03d}.wav", clip, sample_rate) for i, clip in enumerate(decoded)]


def grid_columns(n: int, num_classes: int, label: int | str | None) -> int:
    """One class per column when classes cycle over the samples (2..16 of them), else up to 8."""
    period = len(str(label).split(",")) if label is not None else num_classes
    return period if 2 <= period <= 16 else min(8, n)
