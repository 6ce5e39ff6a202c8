"""Config: typed, validated at load, overridable from the command line."""

from pathlib import Path

import pytest

from train.config import Config, ConfigError
from train.families import FAMILIES
from train.recipe import RENAMED, config_from_dict, load_config, save_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(recipe, tmp_path):
    cfg = load_config(recipe)
    assert isinstance(cfg, Config) and isinstance(cfg.model, FAMILIES[cfg.kind].model)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg  # what config.yaml records loads back to the same recipe


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": {"latent_chanels": 4}})
    msg = str(e.value)
    assert "model.latent_chanels" in msg and "latent_channels" in msg and "block_out_channels" in msg


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="unknown key trian"):
        config_from_dict({"trian": {}})


@pytest.mark.parametrize("raw,key", [
    ({"train": {"max_steps": "ten"}}, "train.max_steps"),
    ({"train": {"max_steps": 1.5}}, "train.max_steps"),
    ({"model": {"block_out_channels": [32, "x"]}}, "model.block_out_channels[1]"),
    ({"model": {"block_out_channels": 32}}, "model.block_out_channels"),
    ({"train": {"mixed_precision": "fp8"}}, "train.mixed_precision"),
    ({"data": {"random_flip": "yes"}}, "data.random_flip"),
    ({"loss": {"kl_weight": "small"}}, "loss.kl_weight"),
])
def test_wrong_type_names_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    assert key in str(e.value)


def test_semantic_checks():
    with pytest.raises(ConfigError, match="data.resolution"):
        config_from_dict({"data": {"resolution": 30}})
    with pytest.raises(ConfigError, match="norm_num_groups"):
        config_from_dict({"model": {"block_out_channels": [30, 64], "norm_num_groups": 32}})
    # a wsd warm-up that runs into the final decay is refused, naming both numbers
    with pytest.raises(ConfigError, match=r"train.warmup_steps: .*100 - 20"):
        config_from_dict({"train": {"lr_schedule": "wsd", "max_steps": 100, "warmup_steps": 90}})
    # a weight-free distance on images smaller than it accepts is refused at load, not mid-step
    with pytest.raises(ConfigError, match="ms_ssim needs images of at least 20 pixels, but data.resolution is 16"):
        config_from_dict({"data": {"resolution": 16}, "model": {"block_out_channels": [32, 64]},
                          "loss": {"perceptual_backbone": "ms_ssim", "perceptual_weight": 0.1}})
    config_from_dict({"data": {"resolution": 16}, "model": {"block_out_channels": [32, 64]},
                      "loss": {"perceptual_backbone": "ms_ssim", "perceptual_weight": 0.0}})
    # the colour term needs colour
    with pytest.raises(ConfigError, match="loss.chroma_weight: must be >= 0"):
        config_from_dict({"loss": {"chroma_weight": -1.0}})
    with pytest.raises(ConfigError, match="loss.chroma_weight weighs the colour part .* model.in_channels is 1"):
        config_from_dict({"model": {"in_channels": 1}, "loss": {"chroma_weight": 4.0}})
    assert config_from_dict({"loss": {"chroma_weight": 4.0}}).loss.chroma_weight == 4.0


def test_codec_dead_code_threshold_must_be_below_the_mean_cluster_size():
    """8 clips x 0.5 s at 75 Hz = 300 frames per step over 1024 codes: a code's EMA cluster size
    tends to 0.29 under uniform use, so a threshold of 2 restarts every code every step."""
    def recipe(threshold, **train):
        return {"model": {"kind": "soundstream", "quantizer": {"codebook_size": 1024, "ema_decay": 0.99,
                                                               "dead_code_threshold": threshold}},
                "data": {"segment_seconds": 0.5}, "train": {"batch_size": 8, **train}}

    with pytest.raises(ConfigError, match=r"model.quantizer.dead_code_threshold: .*0.297"):
        config_from_dict(recipe(2.0))
    assert config_from_dict(recipe(0.25))
    # Twice the clips per forward doubles the mean size; accumulation halves it back.
    assert config_from_dict(recipe(0.5, batch_size=16))
    with pytest.raises(ConfigError, match="model.quantizer.dead_code_threshold"):
        config_from_dict(recipe(0.5, batch_size=16, grad_accum=2))


def test_overrides_parse_yaml_values_and_win():
    cfg = config_from_dict({"train": {"max_steps": 5}}, [
        "train.max_steps=7", "model.block_out_channels=[16, 32]", "model.norm_num_groups=8", "loss.kl_weight=1e-4",
        "train.ema_decay=null", "data.path=/x/y", "train.mixed_precision=no"])
    assert cfg.train.max_steps == 7
    assert cfg.model.block_out_channels == [16, 32]
    assert cfg.loss.kl_weight == pytest.approx(1e-4)  # PyYAML reads '1e-4' as a string; accepted
    assert cfg.train.ema_decay is None
    assert cfg.data.path == "/x/y"
    assert cfg.train.mixed_precision == "no"  # YAML 1.1 reads `no` as false; mapped back


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        config_from_dict({}, ["train.max_steps"])
    with pytest.raises(ConfigError, match="unknown key train.max_stepz"):
        config_from_dict({}, ["train.max_stepz=3"])


def test_round_trip_through_yaml(tmp_path):
    cfg = config_from_dict({}, ["model.latent_channels=8", "loss.disc_norm=group"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_cli_reports_missing_data_path(tmp_path, capsys):
    from aetk.cli import main

    code = main(["train", str(REPO / "configs/kl-f4-tiny.yaml"), f"output_dir={tmp_path}",
                 f"data.path={tmp_path}/nope"])
    assert code == 2
    err = capsys.readouterr().err
    assert "data.path" in err and "nope" in err


def test_cli_reports_unknown_key(tmp_path, capsys):
    from aetk.cli import main

    assert main(["train", str(REPO / "configs/kl-f4-tiny.yaml"), "train.bogus=1"]) == 2
    assert "unknown key train.bogus" in capsys.readouterr().err


# --- one family, its own sections ------------------------------------------------------------------

@pytest.mark.parametrize("kind, section, key, owner", [
    ("kl_vae", "loss", "mel_weight", "soundstream"),
    ("kl_vae", "model", "codebook_size", None),  # a key of no family's model section (quantizer keys moved)
    ("vq_vae", "loss", "kl_weight", "kl_vae"),
    ("soundstream", "data", "resolution", "kl_vae"),
    ("soundstream", "model", "block_out_channels", "kl_vae"),
    ("diffusion_prior", "model", "latent_channels", "kl_vae"),
    ("ar_prior", "model", "denoiser", "diffusion_prior"),
    ("classic", "model", "quantizer", "vq_vae"),
])
def test_a_key_of_another_family_names_both_kinds(kind, section, key, owner):
    raw = {"model": {"kind": kind}}
    raw.setdefault(section, {})[key] = 1
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    msg = str(e.value)
    assert f"{section}.{key}" in msg
    if owner:
        assert owner in msg and kind in msg


@pytest.mark.parametrize("kind", [k for k, f in FAMILIES.items() if f.loss is None])
def test_families_without_a_loss_section_refuse_one(kind):
    with pytest.raises(ConfigError, match=f"model.kind={kind} has no loss section"):
        config_from_dict({"model": {"kind": kind}, "loss": {"disc_start": 3}})


@pytest.mark.parametrize("kind, old, new", [(k, o, n) for k, table in RENAMED.items() for o, n in table.items()
                                            if "<key>" not in n])
def test_a_renamed_key_gives_its_new_name(kind, old, new):
    with pytest.raises(ConfigError, match=f"{old} was renamed: use {new}"):
        config_from_dict({"model": {"kind": kind}}, [f"{old}=1"])


def test_a_renamed_section_points_to_its_keys():
    for kind, old in (("soundstream", "model.codec.ratios=[2]"), ("ar_prior", "model.ar.width=8"),
                      ("classic", "model.classic.code_size=4")):
        with pytest.raises(ConfigError, match="was renamed"):
            config_from_dict({"model": {"kind": kind}}, [old])
    with pytest.raises(ConfigError, match="model.quantizer.type=fsq"):
        config_from_dict({"model": {"kind": "vq_vae", "quantizer": "fsq"}})


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(ConfigError, match="model.kind: 'vae' is not one of"):
        config_from_dict({"model": {"kind": "vae"}})


@pytest.mark.parametrize("override, key", [
    ("seed=-1", "seed"), ("train.betas=[0.5,1.0]", "train.betas"), ("train.ema_decay=1.0", "train.ema_decay"),
    ("data.builtin_size=0", "data.builtin_size"), ("train.lr=.inf", "train.lr"), ("train.lr=-1", "train.lr"),
    ("train.warmup_steps=-2", "train.warmup_steps"), ("train.lr=.nan", "train.lr")])
def test_values_the_schema_lets_through_are_checked_at_load(override, key):
    with pytest.raises(ConfigError, match=key):
        config_from_dict({}, [override])
