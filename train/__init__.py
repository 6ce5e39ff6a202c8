"""The one trainer, configs, data, checkpoints and the `aetk` CLI."""
