"""Datasets: `build_image_dataset(path, resolution=...)` and `collate_images` for the DataLoader."""

from train.data.images import (
    HFImageDataset,
    ImageDataset,
    ImageFolder,
    ImageTransform,
    SkimagePhotos,
    build_image_dataset,
    collate_images,
)

__all__ = [
    "HFImageDataset",
    "ImageDataset",
    "ImageFolder",
    "ImageTransform",
    "SkimagePhotos",
    "build_image_dataset",
    "collate_images",
]
