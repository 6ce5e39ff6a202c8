"""`aetk config show RECIPE [key=value ...]`: the resolved recipe, each key with what it means."""

from __future__ import annotations

import argparse
import dataclasses
import textwrap

import yaml

from aetk.verbs import add_config_args
from train.config import field_docs
from train.recipe import load_config


def add(sub, name: str) -> None:
    p = sub.add_parser(name, help="show a recipe resolved, every key with its meaning",
                       description="Prints the recipe after defaults and overrides, as YAML, each key preceded "
                                   "by its documentation; the sections are those of the recipe's model.kind.",
                       epilog="example: aetk config show configs/vq-f4-tiny.yaml model.quantizer.type=fsq")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = csub.add_parser("show", help="print the resolved recipe with each key's documentation")
    add_config_args(show)
    show.set_defaults(func=run)


def _scalar(value) -> str:
    """A value as one line of YAML."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _lines(obj, indent: int) -> list[str]:
    pad = "  " * indent
    docs = field_docs(type(obj))
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        for line in textwrap.wrap(docs.get(f.name, ""), 96 - len(pad)):
            out.append(f"{pad}# {line}")
        if dataclasses.is_dataclass(value):
            out.append(f"{pad}{f.name}:")
            out += _lines(value, indent + 1)
        else:
            out.append(f"{pad}{f.name}: {_scalar(value)}")
    return out


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    lines = [f"# {args.config}, model.kind={cfg.kind}"]
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None and f.name == "loss":
            lines.append(f"# loss: model.kind={cfg.kind} has no loss section")
            continue
        if dataclasses.is_dataclass(value):
            lines.append(f"{f.name}:")
            lines += _lines(value, 1)
        else:
            lines += [f"# {line}" for line in textwrap.wrap(docs.get(f.name, ""), 96)]
            lines.append(f"{f.name}: {_scalar(value)}")
    print("\n".join(lines))
    return 0
