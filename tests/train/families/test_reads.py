"""No flag is silently ignored: each family declares the request options its verb hooks read
(`Family.reads`), the declaration matches the code, and the verbs refuse any other option a user set,
naming the flag and the kinds of model it is for."""

import ast
import inspect

import pytest

from train.config import ConfigError
from train.families import FAMILIES, refuse_unread
from train.families.base import (
    IMAGE_REPORT_READS,
    EncodeRequest,
    ExportRequest,
    ReportRequest,
    SampleRequest,
    unread_options,
)


def req_reads(fn) -> set[str]:
    """The attributes of `req` that a hook's source reads."""
    tree = ast.parse(inspect.getsource(fn))
    return {n.attr for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "req"}


def hooks(fam):
    """(verb, hook) pairs whose reads are declared."""
    if fam.encode:
        yield "encode", fam.encode
    if fam.sample:
        yield "sample", fam.sample
    for fn in fam.exports.values():
        yield "export", fn
    if fam.report:
        yield "eval", fam.report


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_every_option_a_hook_reads_is_declared(kind):
    fam = FAMILIES[kind]
    for verb, fn in hooks(fam):
        assert verb in fam.reads, f"{kind}: {verb} has a hook and no declared reads"
        read = req_reads(fn)
        if "_set_scaling(" in inspect.getsource(fn):  # the KL exports measure or set the scaling factor there
            read |= req_reads(inspect.getmodule(fn)._set_scaling)
        assert read <= fam.reads[verb], f"{kind} {verb}: reads {read - fam.reads[verb]} without declaring it"
    # Declared and never read would let a flag through unused. (The image report is checked below; the
    # verbs, not the hooks, hand over `processes`.)
    for verb, fn in hooks(fam):
        if verb != "export" and fam.reads[verb] is not IMAGE_REPORT_READS:
            assert fam.reads[verb] - {"processes"} <= req_reads(fn), (kind, verb)


def test_the_image_report_reads_exactly_its_declared_options():
    from train.parts import image_report

    read = req_reads(image_report)
    assert read <= IMAGE_REPORT_READS and IMAGE_REPORT_READS - read <= {"name"}  # name: required, never refused


def test_unread_options_are_those_set_away_from_their_defaults():
    req = EncodeRequest(data="d", out="o", frames=9, kbps=6.0, resolution=256)
    assert unread_options(req, {"data", "out", "resolution"}) == ["kbps", "frames"]
    assert unread_options(req, {"kbps", "frames"}) == []


@pytest.mark.parametrize("kind, verb, req, flag, users", [
    ("diffusion_prior", "sample", SampleRequest(out="x.png", top_k=50), "--top-k", "ar_prior"),
    ("ar_prior", "sample", SampleRequest(out="x.png", steps=10), "--steps", "diffusion_prior"),
    ("ar_prior", "sample", SampleRequest(out="x.png", guidance=5.0), "--guidance", "diffusion_prior"),
    ("soundstream", "encode", EncodeRequest(data="d", out="o", resolution=64), "--resolution",
     "kl_vae and vq_vae and video_vae"),
    ("vq_vae", "encode", EncodeRequest(data="d", out="o", sample=True), "--sample", "kl_vae and video_vae"),
    ("kl_vae", "eval", ReportRequest(name="m", opus=False), "--no-opus", "soundstream"),
    ("classic", "eval", ReportRequest(name="m", baselines=("pca",)), "--baseline", "kl_vae and vq_vae and video_vae"),
    ("soundstream", "eval", ReportRequest(name="m", frames=9), "--frames", "video_vae"),
])
def test_a_flag_the_family_does_not_read_is_refused_by_name(kind, verb, req, flag, users):
    with pytest.raises(ConfigError) as e:
        refuse_unread(FAMILIES[kind], verb, req, "runs/x")
    assert str(e.value) == (f"{flag} does nothing for runs/x, which holds a {kind} model; it is for {users} "
                            "models: drop it")


def test_defaults_and_read_flags_pass():
    refuse_unread(FAMILIES["ar_prior"], "sample", SampleRequest(out="x", top_k=5, temperature=0.9), "r")
    refuse_unread(FAMILIES["soundstream"], "encode", EncodeRequest(data="d", out="o", kbps=6.0), "r")
    refuse_unread(FAMILIES["video_vae"], "eval", ReportRequest(name="m", frames=9, builtin_digits=1), "r")
    refuse_unread(FAMILIES["kl_vae"], "eval", ReportRequest(name="m"), "r")


@pytest.mark.parametrize("req, text", [
    (ExportRequest(out="x", data="d", scaling_factor=0.2), "--scaling-factor and --data: give one"),
    (ExportRequest(out="x", n=64), "--n sets the images --data measures"),
    (ExportRequest(out="x", resolution=128), "--resolution sets the images --data measures"),
])
def test_a_kl_export_refuses_measurement_flags_it_would_not_use(req, text):
    from train.families.kl_vae import _set_scaling

    with pytest.raises(ValueError, match=text):
        _set_scaling(None, req)  # refused before the model is touched
