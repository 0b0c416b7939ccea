"""What a training run consumes: optimizer steps, samples, time points, FLOPs, wall time.

Runs of different models are compared fairly only when their budgets are known. The
engine keeps a :class:`Consumption` per run (saved in every checkpoint, so a resumed run
continues the count) and the checkpoint's ``budget`` is carried into embeddings and result
rows. FLOPs are the forward and backward passes of one training step as
:class:`torch.utils.flop_counter.FlopCounterMode` counts them (matrix products,
convolutions, attention; elementwise work and the optimizer are not counted), measured
on the first step of each stage and multiplied by the steps taken.

:func:`steps_for_budget` turns a budget in time points or FLOPs into a step count, so a
configuration can give every model the same amount of data or compute.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import asdict, dataclass, field

import torch

#: The budgets a run can be matched by.
BUDGET_UNITS = ("steps", "timepoints", "flops")


@dataclass
class Consumption:
    """Running totals of one training run (all processes together).

    Attributes
    ----------
    steps, samples : int
        Optimizer steps and training windows.
    timepoints : int
        Window time points seen (samples x window length; each point is an R-vector).
    flops : float or None
        Forward + backward FLOPs (None when they could not be counted).
    flops_per_step : dict
        Stage -> FLOPs of one optimizer step of that stage.
    wall_s : float
        Seconds of training (checkpoints and validation included).
    """

    steps: int = 0
    samples: int = 0
    timepoints: int = 0
    flops: float | None = 0.0
    flops_per_step: dict = field(default_factory=dict)
    wall_s: float = 0.0

    def add_step(self, stage, samples, window):
        """Count one optimizer step of ``stage`` over ``samples`` windows."""
        self.steps += 1
        self.samples += int(samples)
        self.timepoints += int(samples) * int(window)
        per_step = self.flops_per_step.get(stage)
        if per_step is None or self.flops is None:
            self.flops = None
        else:
            self.flops += float(per_step)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> Consumption:
        data = dict(data or {})
        known = {k: data[k] for k in ("steps", "samples", "timepoints", "flops",
                                      "flops_per_step", "wall_s") if k in data}
        known["flops_per_step"] = dict(known.get("flops_per_step") or {})
        return cls(**known)


class StepFlops(contextlib.AbstractContextManager):
    """Count the FLOPs of the code run inside (``.total``; None if counting failed)."""

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.total = None
        self._mode = None

    def __enter__(self):
        if self.enabled:
            from torch.utils.flop_counter import FlopCounterMode

            self._mode = FlopCounterMode(display=False)
            self._mode.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._mode is not None:
            self._mode.__exit__(exc_type, exc, tb)
            if exc_type is None:
                self.total = float(self._mode.get_total_flops())
        return False


def measure_step_flops(model, dataset, *, batch_size, stages, label=None) -> dict:
    """FLOPs of one forward + backward pass of each stage, on a copy of ``model``.

    Parameters
    ----------
    model : BrainModel
    dataset : Dataset
        Items as :class:`~bsym.data.dataset.WindowDataset` yields them.
    batch_size : int
    stages : sequence of str
        Stages to measure (``pretrain_loss(stage=...)``).

    Returns
    -------
    dict
        Stage -> FLOPs. The model, its RNG streams and the dataset are left untouched.
    """
    from torch.utils.data import DataLoader

    shadow = copy.deepcopy(model).cpu().train()
    batch = next(iter(DataLoader(dataset, batch_size=batch_size, shuffle=False)))
    batch = {k: v for k, v in batch.items() if k not in ("scan", "subject", "start", "labels")}
    out = {}
    with torch.random.fork_rng(devices=[]):
        for stage in stages:
            generator = torch.Generator().manual_seed(0)
            shadow.zero_grad(set_to_none=True)
            with StepFlops() as counter:
                loss = shadow.pretrain_loss(batch, generator=generator, stage=stage)
                loss.backward()
            out[str(stage)] = counter.total
    return out


def steps_for_budget(unit, amount, *, batch_size, window, flops_per_step=None,
                     n_stages=1) -> int:
    """Optimizer steps that spend ``amount`` of ``unit`` (rounded up).

    Parameters
    ----------
    unit : {"steps", "timepoints", "flops"}
    amount : float
    batch_size : int
        Windows per optimizer step (batch x accumulation x processes).
    window : int
        Time points per window.
    flops_per_step : dict, optional
        Stage -> FLOPs of one step (``unit="flops"``); the steps are split evenly
        across stages, so the mean over stages prices one step.
    n_stages : int
        Stages the steps are split across (every stage gets at least one step).
    """
    if unit not in BUDGET_UNITS:
        raise ValueError(f"budget unit must be one of {BUDGET_UNITS}, received {unit!r}")
    if not amount or float(amount) <= 0:
        raise ValueError(f"a budget must be positive, received {amount!r}")
    if unit == "steps":
        steps = math.ceil(float(amount))
    elif unit == "timepoints":
        steps = math.ceil(float(amount) / (int(batch_size) * int(window)))
    else:
        costs = [float(v) for v in (flops_per_step or {}).values() if v]
        if not costs:
            raise ValueError("a FLOPs budget needs the FLOPs of a step; they could not be "
                             "counted for this model")
        steps = math.ceil(float(amount) / (sum(costs) / len(costs)))
    return max(int(steps), int(n_stages))
