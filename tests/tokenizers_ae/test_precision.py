"""AutoPrecision: fp16 with only the overflowing modules in fp32 gives finite outputs close to fp32."""

import pytest
import torch

from tokenizers_ae.models.kl_vae import build_autoencoder_kl
from tokenizers_ae.precision import AutoPrecision


def tiny():
    torch.manual_seed(0)
    return build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2).eval()


def decode(vae, z):
    return vae.decode(z).sample


def overflowing():
    """One decoder block's conv scaled far past fp16's range; the GroupNorm after it brings the
    activations back, so the fp32 model is healthy (as SD's VAE decoder is)."""
    vae = tiny()
    with torch.no_grad():
        vae.decoder.up_blocks[0].resnets[0].conv1.weight.mul_(3e5)
    return vae


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@torch.no_grad()
def test_overflowing_block_is_repaired_with_one_module_in_fp32():
    vae = overflowing()
    z = torch.randn(2, 2, 8, 8)
    ref = decode(vae, z)
    assert torch.isfinite(ref).all()
    with torch.autocast("cpu", dtype=torch.float16):
        assert not torch.isfinite(decode(vae, z)).all()  # plain fp16 breaks: the bug being fixed

    plan = AutoPrecision(vae, "fp16")
    y = plan(decode, vae, z)
    assert torch.isfinite(y).all()
    assert plan.fp32_modules == ["decoder.up_blocks.0.resnets.0.conv1"]
    assert rel(y, ref) < 1e-2  # fp16's error, not a broken image
    d = plan.describe()
    assert d["dtype"] == "fp16" and d["repairs"] == 1 and 0 < d["fp32_parameter_fraction"] < 0.1

    # The plan is kept: the next batch runs once, and the class's forward is restored outside it.
    y2 = plan(decode, vae, torch.randn(2, 2, 8, 8))
    assert torch.isfinite(y2).all() and plan.repairs == 1
    assert "forward" not in vars(vae.decoder.up_blocks[0].resnets[0].conv1)


@torch.no_grad()
def test_recorded_plan_runs_without_repairs_and_healthy_model_needs_none():
    vae = overflowing()
    z = torch.randn(1, 2, 8, 8)
    plan = AutoPrecision(vae, "fp16", ["decoder.up_blocks.0.resnets.0.conv1"])
    assert torch.isfinite(plan(decode, vae, z)).all() and plan.repairs == 0

    healthy = tiny()
    p = AutoPrecision(healthy, "fp16")
    y = p(decode, healthy, z)
    assert p.fp32_modules == [] and rel(y, decode(healthy, z)) < 1e-2
    with pytest.raises(ValueError, match="not in the model"):
        AutoPrecision(healthy, "fp16", ["decoder.no_such_block"])


class Doubling(torch.nn.Module):
    """a(x) fits fp16; a(x) + a(x), an add that no module owns, does not; b then sees inf."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        return self.b(h + h)


@torch.no_grad()
def test_overflow_between_modules_escalates_to_the_parent():
    torch.manual_seed(0)
    net = torch.nn.Sequential(Doubling(), torch.nn.LayerNorm(4))
    with torch.no_grad():
        net[0].a.weight.fill_(0.0)
        net[0].a.bias.fill_(40000.0)  # fp16 holds 40000, not 80000
    x = torch.randn(3, 4)
    ref = net(x)
    with torch.autocast("cpu", dtype=torch.float16):
        assert not torch.isfinite(net(x)).all()
    plan = AutoPrecision(net, "fp16")
    y = plan(lambda m, t: m(t), net, x)
    # b first (the first module with an inf output), then, b in fp32 still seeing inf, its parent.
    assert plan.fp32_modules == ["0.b", "0"]
    assert torch.isfinite(y).all() and rel(y, ref) < 1e-2


@pytest.mark.parametrize("flags, fast", [("fpu avx2 avx512f amx_bf16", True), ("fpu avx512f avx512_bf16", True),
                                         ("fpu avx avx2 fma", False), (None, True)])
def test_fast_bf16_is_read_from_the_cpu_flags(monkeypatch, flags, fast):
    """Where bf16 is emulated (slower than fp32) `aetk bench quality` and `aetk encode` fall back to fp32 and
    the trainer warns; where the flags cannot be read they trust the recipe."""
    from tokenizers_ae import precision

    text = None if flags is None else f"processor\t: 0\nmodel name\t: CPU\nflags\t\t: {flags}\n"
    monkeypatch.setattr(precision, "cpuinfo", lambda: text)
    assert precision.cpu_has_fast_bf16() is fast


@pytest.mark.parametrize("flags, auto", [("fpu avx2 avx512f amx_bf16", "bf16"), ("fpu avx512f avx512_bf16", "bf16"),
                                         ("fpu avx avx2 fma", "no")])
def test_training_precision_auto_is_bf16_only_where_the_cpu_computes_it(monkeypatch, flags, auto):
    """`train.mixed_precision: auto` (the recipes' setting) trains fp32 where bf16 would be emulated; an
    explicit precision is kept whatever the CPU."""
    from tokenizers_ae import precision

    monkeypatch.setattr(precision, "cpuinfo", lambda: f"model name\t: CPU\nflags\t\t: {flags}\n")
    assert precision.training_precision("auto", cuda=False) == auto
    for explicit in ("no", "bf16", "fp16"):
        assert precision.training_precision(explicit, cuda=False) == explicit
