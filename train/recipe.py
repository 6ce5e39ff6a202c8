"""Load a recipe: YAML + `dotted.key=value` overrides -> a validated `Config` of its family's sections.

`model.kind` picks the family (`train.families`), and with it the classes of `data`, `model` and
`loss`. A key another family has is an error naming both kinds; a key renamed since aetk 0.1 is an
error giving its new name. Any key can be overridden as `dotted.key=value` (the value is parsed as
YAML, so `train.max_steps=10`, `model.block_out_channels=[32,64]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from train.config import Config, ConfigError, TrainConfig, build, section_keys, to_dict
from train.families import FAMILIES, family
from train.families.base import Family

SECTIONS = ("data", "model", "loss")
TOP_LEVEL = {"output_dir", "seed", "resume", "data", "model", "loss", "train"}

RENAMED: dict[str, dict[str, str]] = {
    "soundstream": {
        **{f"model.codec.{k}": f"model.{k}" for k in ("sample_rate", "ratios", "n_filters", "stage_channels",
                                                      "dimension", "lstm_layers", "n_residual_layers",
                                                      "dilation_base")},
        "model.codec": "model.<key> (the SEANet keys moved up into model)",
        "model.rvq_levels": "model.quantizer.levels", "model.quantizer_dropout": "model.quantizer.dropout",
        "loss.audio_discriminators": "loss.discriminators", "loss.disc_channels": "loss.msstft_filters",
    },
    "vq_vae": {"model.rvq_levels": "model.quantizer.levels", "model.quantizer_dropout": "model.quantizer.dropout",
               "model.fsq_levels": "model.quantizer.fsq_levels", "model.lfq_bits": "model.quantizer.lfq_bits"},
    "diffusion_prior": {"model.block_out_channels": "model.unet.block_out_channels",
                        "model.layers_per_block": "model.unet.layers_per_block",
                        "model.norm_num_groups": "model.unet.norm_num_groups",
                        "model.mid_block_attention": "model.unet.attention"},
    "ar_prior": {"model.ar": "model.<key> (the keys of model.ar moved up into model)"},
    "classic": {"model.classic": "model.<key> (the keys of model.classic moved up into model)"},
}
"""Keys renamed since aetk 0.1, per kind: old dotted key -> new one."""
for _kind in ("soundstream", "vq_vae"):
    RENAMED[_kind].update({f"model.{k}": f"model.quantizer.{new}" for k, new in (
        ("codebook_size", "codebook_size"), ("vq_ema_decay", "ema_decay"),
        ("dead_code_threshold", "dead_code_threshold"), ("kmeans_init", "kmeans_init"), ("cosine", "cosine"),
        ("codebook_dim", "codebook_dim"))})


def _apply_override(raw: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected dotted.key=value")
    key, text = override.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: {text!r} is not valid YAML ({' '.join(str(e).split())})") from None
    node = raw
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {p} is not a section")
    node[parts[-1]] = value


def _flat_keys(raw: dict, prefix: str) -> list[str]:
    out = []
    for k, v in raw.items():
        key = f"{prefix}.{k}"
        out.append(key)
        if isinstance(v, dict):
            out += _flat_keys(v, key)
    return out


def _check_names(raw: dict, fam: Family) -> None:
    """ConfigError for a renamed key (giving the new name) or a key of another family (naming it)."""
    renamed = RENAMED.get(fam.kind, {})
    for section in SECTIONS:
        values = raw.get(section)
        if not isinstance(values, dict):
            continue
        if section == "model" and fam.kind == "vq_vae" and isinstance(values.get("quantizer"), str):
            raise ConfigError(f"model.quantizer is now a section: write model.quantizer.type={values['quantizer']}")
        for key in sorted(_flat_keys(values, section), key=len, reverse=True):  # the most specific first
            if key in renamed:
                raise ConfigError(f"{key} was renamed: use {renamed[key]} (model.kind={fam.kind})")
        own = section_keys(getattr(fam, section))
        for key in values:
            if key in own:
                continue
            others = [f.kind for f in FAMILIES.values() if key in section_keys(getattr(f, section))]
            if others:
                raise ConfigError(f"{section}.{key} is a key of model.kind={' / '.join(others)}, not of this "
                                  f"recipe's model.kind={fam.kind}; remove it")


def config_from_dict(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Validate a recipe given as plain data (see the module docstring)."""
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for o in overrides:
        _apply_override(raw, o)
    unknown = sorted(set(raw) - TOP_LEVEL)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]}; allowed top-level keys: {', '.join(sorted(TOP_LEVEL))}")
    model = raw.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError(f"model: expected a mapping, got {model!r}")
    fam = family(model.get("kind", "kl_vae"))
    if fam.loss is None and raw.get("loss"):
        raise ConfigError(f"loss: model.kind={fam.kind} has no loss section (its loss is set by the model section); "
                          f"remove loss.{next(iter(raw['loss']))}")
    _check_names(raw, fam)
    sections = {"data": build(fam.data, raw.get("data"), "data"), "model": build(fam.model, model, "model"),
                "loss": build(fam.loss, raw.get("loss"), "loss") if fam.loss is not None else None,
                "train": build(TrainConfig, raw.get("train"), "train")}
    top = {k: raw[k] for k in ("output_dir", "seed", "resume") if k in raw}
    cfg = build(Config, top, "")
    for k, v in sections.items():
        setattr(cfg, k, v)
    cfg.check_sections()
    fam.check(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML recipe, apply `dotted.key=value` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return config_from_dict(raw, overrides)


def config_yaml(cfg: Config) -> str:
    """The resolved recipe as YAML (what `config.yaml` in a run holds), `model.kind` first."""
    d = to_dict(cfg)
    d["model"] = {"kind": d["model"].pop("kind"), **d["model"]}
    return yaml.safe_dump(d, sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(config_yaml(cfg))
