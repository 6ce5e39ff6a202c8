"""`aetk train RECIPE [key=value ...]`: train from a recipe (resuming from the newest checkpoint)."""

from __future__ import annotations

import argparse

from aetk.verbs import add_config_args
from train.families import FAMILIES

EXAMPLES = """examples:
  aetk train configs/kl-f4-tiny.yaml
  aetk train configs/kl-f8.yaml data.path=/data/photos train.max_steps=20000
  torchrun --nproc_per_node 2 -m aetk train configs/vq-f4-tiny.yaml

recipe sections: data, model, loss, train, and output_dir / seed / resume at the top.
model.kind picks the family, which decides the data, model and loss sections:
""" + "\n".join(f"  {k:16s} {f.summary}" for k, f in FAMILIES.items()) + """

`aetk config show RECIPE` prints the resolved recipe with every key's meaning."""


def add(sub, name: str) -> None:
    p = sub.add_parser(name, help="train a model from a YAML recipe", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train from a recipe; resumes from the newest checkpoint in output_dir "
                                   "(resume=auto). Multi-process: torchrun --nproc_per_node N -m aetk train ...")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from train.recipe import load_config

    cfg = load_config(args.config, args.overrides)  # validated before anything heavy loads
    from train.run import train  # torch, accelerate, diffusers: deferred so a bad recipe fails fast

    trainer = train(cfg)
    if trainer.accelerator.is_main_process:
        print(f"run written to {trainer.run_dir}")
    trainer.close()
    return 0
