"""The family table: `model.kind` -> everything that kind decides (`train.families.base.Family`).

| kind              | model                          | data                    | exports                        |
| ----------------- | ------------------------------ | ----------------------- | ------------------------------ |
| `kl_vae`          | KLVAE (diffusers AutoencoderKL)| images                  | diffusers dir, SD single file  |
| `vq_vae`          | VQVAE (diffusers VQModel parts)| images                  | diffusers VQModel or native    |
| `soundstream`     | SoundStream                    | audio                   | native, transformers Encodec   |
| `diffusion_prior` | DiffusionPrior (UNet / DiT)    | latent shards or images | diffusers pipeline             |
| `ar_prior`        | ARPrior (GPT-2 / Llama)        | token shards            | transformers + prior.json      |
| `classic`         | 18 classic variants            | images, digits, LM acts | native                         |
| `video_vae`       | VideoVAE (diffusers Wan VAE)   | video files, digits     | diffusers dir or native (FSQ)  |

Adding a family: write its module here (sections + hooks, see `base.py`) and add its row below;
nothing else in the loop, the command line or the evaluation changes.
"""

from __future__ import annotations

from train.config import ConfigError
from train.families import ar_prior, classic, diffusion_prior, kl_vae, soundstream, video_vae, vq_vae
from train.families.base import Family, unread_options

FAMILIES: dict[str, Family] = {f.kind: f for f in (
    kl_vae.FAMILY, vq_vae.FAMILY, soundstream.FAMILY, diffusion_prior.FAMILY, ar_prior.FAMILY, classic.FAMILY,
    video_vae.FAMILY)}


def family(kind: str) -> Family:
    """The family of `model.kind`; ConfigError listing the kinds when there is none."""
    if kind not in FAMILIES:
        raise ConfigError(f"model.kind: {kind!r} is not one of {list(FAMILIES)}")
    return FAMILIES[kind]


def family_of(model) -> Family:
    """The family a loaded model (`aetk.load`) belongs to, by its class's `saved_name`."""
    name = getattr(model, "saved_name", None)
    for f in FAMILIES.values():
        if name in f.saved_names:
            return f
    raise ValueError(f"{type(model).__name__} belongs to no aetk family")


# Request options whose flag is not `--` + the name with dashes.
FLAG_OF = {"baselines": "--baseline", "opus": "--no-opus", "first_stage": "--vae"}


def refuse_unread(fam: Family, verb: str, req, source: str) -> None:
    """ConfigError when a user set an option of `req` that `fam`'s hook for `verb` does not read
    (`Family.reads`), naming the flag and the kinds of model it is for."""
    unread = unread_options(req, fam.reads.get(verb, frozenset()))
    if not unread:
        return
    name = unread[0]
    flag = FLAG_OF.get(name, "--" + name.replace("_", "-"))
    users = [k for k, f in FAMILIES.items() if name in f.reads.get(verb, ())]
    where = f"; it is for {' and '.join(users)} models" if users else ""
    raise ConfigError(f"{flag} does nothing for {source}, which holds a {fam.kind} model{where}: drop it")
