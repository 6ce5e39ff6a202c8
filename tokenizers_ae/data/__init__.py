"""Datasets the models train and are evaluated on: images (folders, tar shards, saved Hugging Face
datasets, built-in photos and digits) and a language model's activations. Items are dicts
{"x": tensor, "index": int, "bad": [unreadable indices served around]}; `sources.build_image_dataset`
picks the dataset for a path."""
