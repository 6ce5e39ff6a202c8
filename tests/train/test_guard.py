"""GAN onset guardrails: ramp, R1, monitoring, and a guard that trips on an overpowered
discriminator but not on a healthy run."""


import pytest

from train.config import GANLoss as LossConfig
from train.guard import GanGuard, GanGuardError
from train.loop import Trainer


class _Task:
    adv_scale = 1.0


def feed(guard, steps, task=None):
    task = task or _Task()
    reasons = []
    for step, logs in steps:
        reasons.append(guard.update(step, logs, task))
    return reasons


def test_guard_trips_on_degrading_reconstruction_and_lowers_the_weight():
    cfg = LossConfig(disc_start=4, guard="lower", guard_window=2, guard_rec_increase=0.25)
    task = _Task()
    before = [(s, {"rec/nll": 1.0}) for s in range(4)]
    after = [(s, {"rec/nll": 1.5, "disc/acc_real": 0.6, "disc/acc_fake": 0.6}) for s in range(4, 6)]
    reasons = feed(GanGuard(cfg), before + after, task)
    assert reasons[-1] and "rose from 1" in reasons[-1] and task.adv_scale == 0.5


def test_no_baseline_is_said_once_even_after_a_saturation_trip(caplog):
    cfg = LossConfig(disc_start=0, guard="warn", guard_saturation_steps=2, guard_window=50)
    sat = {"rec/nll": 1.0, "disc/acc_real": 1.0, "disc/acc_fake": 1.0}
    with caplog.at_level("WARNING", logger="aetk.guard"):
        reasons = feed(GanGuard(cfg), [(s, sat) for s in range(6)])
    assert sum(r is not None for r in reasons) >= 2  # tripped, re-armed, tripped again
    assert caplog.text.count("no reconstruction baseline") == 1


def test_guard_trips_on_saturation_and_can_stop():
    cfg = LossConfig(disc_start=0, guard="stop", guard_saturation_steps=3, guard_window=50)
    sat = {"rec/nll": 1.0, "disc/acc_real": 1.0, "disc/acc_fake": 1.0}
    guard = GanGuard(cfg)
    feed(guard, [(0, sat), (1, sat)])
    with pytest.raises(GanGuardError, match="99% right"):
        guard.update(2, sat, _Task())


def test_guard_stays_quiet_on_a_healthy_run():
    cfg = LossConfig(disc_start=3, guard="stop", guard_window=3, guard_saturation_steps=3)
    steps = [(s, {"rec/nll": 1.0 - 0.01 * s, "disc/acc_real": 0.7, "disc/acc_fake": 0.6}) for s in range(20)]
    assert not any(feed(GanGuard(cfg), steps))


GUARD = ["loss.disc_start=4", "loss.guard=stop", "loss.guard_window=4", "loss.guard_rec_increase=0.5",
         "loss.guard_saturation_steps=8", "train.max_steps=40", "train.mixed_precision=no", "loss.disc_norm=group"]


def test_overpowered_discriminator_trips_the_guard_in_training(tmp_path, tiny_config):
    # A fixed adversarial weight of 1e4 (no adaptive balance), a discriminator trained 100x faster
    # and a large generator lr: reconstructions degrade by more than half within ~15 steps.
    t = Trainer(tiny_config(tmp_path / "bad", *GUARD, "loss.adaptive_weight=false", "loss.disc_weight=10000",
                            "train.disc_lr=0.1", "train.lr=1e-2"))
    with pytest.raises(GanGuardError, match="reconstruction loss rose"):
        for _ in range(40):
            t.step(t.next_micro_batches())
    t.close()


def test_healthy_run_with_ramp_and_r1_does_not_trip(tmp_path, tiny_config):
    # The same guard settings on the default (adaptive-weight) loss, with a ramp and R1.
    t = Trainer(tiny_config(tmp_path / "ok", *GUARD, "loss.disc_ramp_steps=4", "loss.r1_weight=1.0"))
    ramps, logs = [], {}
    for _ in range(30):
        logs = t.step(t.next_micro_batches())
        ramps.append(logs.get("gan/ramp", 0.0))
    assert ramps[:9] == [0, 0, 0, 0, 0.25, 0.5, 0.75, 1, 1]
    assert logs["disc/r1"] > 0 and 0 <= logs["disc/acc_real"] <= 1 and "gan/guard_trip" not in logs
    t.close()


def test_the_guard_watches_from_the_onset_after_the_discriminator_warmup():
    cfg = LossConfig(disc_start=2, disc_warmup_steps=3, guard="stop", guard_saturation_steps=2, guard_window=2)
    sat = {"rec/nll": 1.0, "disc/acc_real": 1.0, "disc/acc_fake": 1.0}
    guard = GanGuard(cfg)
    # D alone, right about everything (expected while it warms up): neither baseline nor saturation yet.
    assert feed(guard, [(s, sat) for s in range(5)]) == [None] * 5 and guard.baseline is None
    with pytest.raises(GanGuardError, match="99% right"):
        feed(guard, [(5, sat), (6, sat)])
