"""Learning-rate schedule: linear warm-up, then cosine decay."""

from __future__ import annotations

import math


def warmup_cosine(step, *, total_steps, warmup_steps=0, min_ratio=0.0) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based).

    Warm-up rises linearly, ``(step + 1) / warmup_steps``, reaching 1 at step
    ``warmup_steps - 1``; the cosine then falls from 1 to ``min_ratio`` at the last
    step ``total_steps - 1``.

    Parameters
    ----------
    step : int
        Index of the optimizer step the rate is used for.
    total_steps : int
        Steps in the schedule.
    warmup_steps : int
        Warm-up steps (capped at ``total_steps``).
    min_ratio : float
        Final multiplier, as a fraction of the peak.

    Returns
    -------
    float
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0 or step < 0:
        raise ValueError(f"step and warmup_steps must be >= 0, got {step} and {warmup_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    warmup_steps = min(warmup_steps, total_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay = total_steps - warmup_steps
    if decay <= 1:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (decay - 1))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """Sets an optimizer's learning rate from :func:`warmup_cosine` each step.

    The state is the step counter alone, so it checkpoints as a plain dict.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Its groups' ``lr`` is overwritten; each group's peak is kept in ``base_lr``.
    total_steps, warmup_steps, min_ratio
        See :func:`warmup_cosine`.
    """

    def __init__(self, optimizer, *, total_steps, warmup_steps=0, min_ratio=0.0):
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_ratio = float(min_ratio)
        self.step_count = 0
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        warmup_cosine(0, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                      min_ratio=self.min_ratio)  # validates the arguments
        self._apply()

    def factor(self, step=None) -> float:
        step = self.step_count if step is None else step
        return warmup_cosine(min(step, self.total_steps - 1), total_steps=self.total_steps,
                             warmup_steps=self.warmup_steps, min_ratio=self.min_ratio)

    def _apply(self):
        factor = self.factor()
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def get_last_lr(self) -> list:
        """Learning rate of each group for the next optimizer step."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self):
        """Advance one optimizer step."""
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "min_ratio": self.min_ratio}

    def load_state_dict(self, state):
        for key in ("total_steps", "warmup_steps"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(f"schedule {key} differs: checkpoint has {state[key]}, "
                                 f"this run has {getattr(self, key)}")
        self.min_ratio = float(state["min_ratio"])
        self.step_count = int(state["step_count"])
        self._apply()
