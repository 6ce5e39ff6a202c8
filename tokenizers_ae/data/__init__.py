"""Datasets the models train and are evaluated on: images (folders, tar shards, saved Hugging Face
datasets, built-in photos and digits) and a language model's activations. Items are dicts
{"x": tensor, "index": int, "bad": [unreadable indices served around]}; `sources.build_image_dataset`
picks the dataset for a path."""

BUILTIN_DIGITS = 2
"""Digits per clip of builtin:moving-mnist / builtin:moving-digits unless asked otherwise. Kept here, where
nothing imports torch, so configs and command-line flags read the same default before torch loads."""
