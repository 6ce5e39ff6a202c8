"""Guardrails for the onset of adversarial training, where first-stage runs most often go wrong:
reconstructions degrade, or the discriminator wins outright and the generator stalls.

Fed each step's logged scalars, the guard keeps the mean reconstruction loss of the `window`
steps before onset as a baseline and, after onset, compares the mean of the last `window` steps
with it; it also counts consecutive steps in which the discriminator is >= 99% right on both
real and fake images. A trip warns, halves the adversarial weight (then re-arms), or stops.
"""

from __future__ import annotations

import logging
from collections import deque

from train.config import GANLoss, RunError

log = logging.getLogger("aetk.guard")
REC_KEY = "rec/nll"


class GanGuardError(RunError):
    """The GAN guard stopped the run."""


class GanGuard:
    def __init__(self, cfg: GANLoss) -> None:
        self.cfg = cfg
        self.before: deque[float] = deque(maxlen=cfg.guard_window)
        self.after: deque[float] = deque(maxlen=cfg.guard_window)
        self.baseline: float | None = None
        self.saturated = 0
        self.trips = 0
        self.told_no_baseline = False

    def update(self, step: int, logs: dict[str, float], task) -> str | None:
        """Observe one optimizer step; act on a trip. Returns the reason of a trip, else None."""
        c = self.cfg
        if c.guard == "off" or REC_KEY not in logs:
            return None
        onset = c.disc_start + c.disc_warmup_steps  # the generator's first adversarial step
        if step < onset:
            self.before.append(logs[REC_KEY])
            return None
        if self.baseline is None and self.before:
            self.baseline = sum(self.before) / len(self.before)
        if self.baseline is None and not self.told_no_baseline:
            # A GAN from step 0 (a fine-tune from released weights) leaves nothing to compare with.
            self.told_no_baseline = True  # once: a saturation trip clears `after`, this stays said
            log.warning("GAN guard: no reconstruction baseline, since the adversarial term starts at step %d with "
                        "no step before it; only discriminator saturation is watched. Set loss.disc_warmup_steps "
                        "(>= loss.guard_window=%d) so D learns first and the baseline is measured meanwhile",
                        onset, c.guard_window)
        self.after.append(logs[REC_KEY])
        sat = logs.get("disc/acc_real", 0.0) >= 0.99 and logs.get("disc/acc_fake", 0.0) >= 0.99
        self.saturated = self.saturated + 1 if sat else 0
        reason = None
        if self.baseline is not None and len(self.after) == self.after.maxlen:
            now = sum(self.after) / len(self.after)
            if now > self.baseline * (1 + c.guard_rec_increase):
                reason = (f"reconstruction loss rose from {self.baseline:.4g} before the discriminator started "
                          f"(step {onset}) to {now:.4g} (mean of the last {len(self.after)} steps, "
                          f"+{now / self.baseline - 1:.0%} > {c.guard_rec_increase:.0%})")
        if reason is None and self.saturated >= c.guard_saturation_steps:
            reason = (f"the discriminator has been >= 99% right on real and fake images for {self.saturated} "
                      "steps: the generator gets no useful adversarial signal")
        if reason is None:
            return None
        self.trips += 1
        advice = "lower loss.disc_weight or the discriminator's lr, ramp it in (loss.disc_ramp_steps), " \
                 "add loss.r1_weight, or start it later (loss.disc_start)"
        if c.guard == "stop":
            raise GanGuardError(f"GAN guard at step {step}: {reason}. Stopping; {advice}.")
        if c.guard == "lower":
            task.adv_scale *= 0.5
            log.warning("GAN guard at step %d: %s; adversarial weight halved to x%.3g", step, reason, task.adv_scale)
        else:
            log.warning("GAN guard at step %d: %s; consider: %s", step, reason, advice)
        self.after.clear()  # re-arm: judge the next window afresh
        self.saturated = 0
        return reason

    def state(self) -> dict:
        return {"before": list(self.before), "after": list(self.after), "baseline": self.baseline,
                "saturated": self.saturated, "trips": self.trips}

    def load_state(self, s: dict) -> None:
        self.before.extend(s["before"])
        self.after.extend(s["after"])
        self.baseline, self.saturated, self.trips = s["baseline"], s["saturated"], s["trips"]
