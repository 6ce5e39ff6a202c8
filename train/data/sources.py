"""A recipe's `data` section -> (training, validation) datasets, one function per kind of data.

Families pick the one their data is: images (tokenizers, classic models, the pixel-space prior),
audio (codecs), latent or token shards (priors), a language model's activations (the SAE). A path
that holds no such data is a `ConfigError` naming `data.path` or `data.val_path`.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from audio_codec.data import AudioFolder
from tokenizers_ae.data.activations import LMActivations
from tokenizers_ae.data.images import ImageDataset
from tokenizers_ae.data.sources import build_image_dataset
from train.config import AudioData, Config, ConfigError, ImageData, ShardData
from train.data.shards import LatentItems, PixelItems, TokenItems, is_latent_dir


def image_datasets(cfg: Config) -> tuple[ImageDataset, ImageDataset]:
    """data.path / data.val_path as image datasets (train split augmented, validation plain)."""
    d: ImageData = cfg.data
    common = dict(resolution=d.resolution, seed=cfg.seed, image_column=d.image_column, builtin_size=d.builtin_size,
                  holdout_class=d.holdout_class)
    try:
        train = build_image_dataset(d.path, random_crop=d.random_crop, random_flip=d.random_flip,
                                    split="train", **common)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"data.path: {e}") from None
    val_path = d.val_path or d.path
    try:
        val = build_image_dataset(val_path, random_crop=False, random_flip=False,
                                  split="val" if val_path.startswith("builtin:") else "train", **common)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"data.val_path: {e}") from None
    return train, val


def audio_datasets(cfg: Config, sample_rate: int) -> tuple[AudioFolder, AudioFolder]:
    """Crops of data.segment_seconds at the model's rate (random for training, centred for validation)."""
    d: AudioData = cfg.data
    common = dict(sample_rate=sample_rate, segment_samples=round(d.segment_seconds * sample_rate), seed=cfg.seed,
                  silence_db=d.silence_db)
    try:
        train = AudioFolder(d.path, random_crop=d.random_crop, silence_prob=d.silence_prob, **common)
    except ValueError as e:
        raise ConfigError(f"data.path: {e}") from None
    try:
        val = AudioFolder(d.val_path or d.path, random_crop=False, **common)
    except ValueError as e:
        raise ConfigError(f"data.val_path: {e}") from None
    return train, val


def prior_datasets(cfg: Config) -> tuple[LatentItems | PixelItems, LatentItems | PixelItems]:
    """A diffusion prior's data: the scaled latents of an `aetk encode` directory, or images for the
    pixel-space baseline. Validation latents are scaled like the training latents they sit beside."""
    d: ImageData = cfg.data
    if is_latent_dir(d.path):
        train = LatentItems(d.path)
        return train, LatentItems(d.val_path or d.path, scaling_factor=train.scaling_factor,
                                  shift_factor=train.shift_factor, key="data.val_path")
    train, val = image_datasets(cfg)
    return PixelItems(train), PixelItems(val)


def token_datasets(cfg: Config) -> tuple[TokenItems, TokenItems]:
    """An AR prior's data: the token shards of an `aetk encode` directory."""
    d: ShardData = cfg.data
    return TokenItems(d.path), TokenItems(d.val_path or d.path, key="data.val_path")


def activation_datasets(lm: str | None, layer: int, n_tokens: int) -> tuple[Dataset, Dataset]:
    """A language model's residual-stream activations on offline text (`builtin:lm-activations`)."""
    return tuple(LMActivations(lm=lm, layer=layer, n_tokens=n_tokens, split=s) for s in ("train", "val"))
