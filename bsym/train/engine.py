"""The one training loop every model uses: pretraining (staged) and supervised training.

AdamW with warm-up + cosine decay, gradient clipping and accumulation; CUDA with bf16
autocast when present, else CPU; optional ``torch.compile``; DistributedDataParallel
under torchrun; deterministic seeding; atomic checkpoints and exact resume; MLflow
tracking through :mod:`bsym.track`.

Reproducibility: the data order of epoch ``e`` is a permutation drawn from
``(seed, e)``, and a checkpoint records how many batches were consumed, so a resumed
run skips exactly those and continues with the same batches, masks (the mask
generator's state is saved) and RNG states as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data._utils.collate import default_collate

from bsym import __version__
from bsym.errors import BsymError, UsageError
from bsym.io import CHECKSUM_SUFFIX, atomic_write_text, check_writable, guard_output
from bsym.track import NullTracker
from bsym.train import devices
from bsym.train.budget import Consumption, StepFlops
from bsym.train.checkpoint import (
    CHECKPOINT_DIR,
    FINAL_NAME,
    FORMAT,
    FORMAT_VERSION,
    SNAPSHOT_DIR,
    CheckpointError,
    RunExistsError,
    check_data,
    check_model,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    list_snapshots,
    load_checkpoint,
    model_identity,
    prune_checkpoints,
    save_checkpoint,
    snapshot_path,
)
from bsym.train.schedule import WarmupCosine

RUN_SUMMARY = "run.json"
#: ``format`` of the run record (``run.json``), written when a run starts and completed
#: when it ends: what makes a folder a bsym run directory.
RUN_FORMAT = "bsym-run"

# Seed purposes (derive_seed(seed, PURPOSE, a, b) keeps the streams apart).
_SEED_GLOBAL, _SEED_MASKS, _SEED_LOADER, _SEED_EVAL = 1, 2, 3, 4


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    Parameters
    ----------
    steps : int
        Optimizer steps in total, split evenly across the model's stages (the last
        stage takes the remainder) unless ``stage_steps`` sets each stage's budget.
    stage_steps : dict, optional
        Stage name -> optimizer steps, for every stage of ``model.stages()`` (0 skips one).
    batch_size : int
        Samples per micro-batch and process.
    lr, weight_decay, betas
        AdamW settings (no weight decay on biases and norm weights: tensors with < 2 dims).
    warmup_steps : int
        Linear warm-up steps at the start of each stage, then cosine decay.
    min_lr_ratio : float
        Final learning rate as a fraction of ``lr``.
    grad_clip : float or None
        Clip the global gradient norm to this value.
    accumulate : int
        Micro-batches per optimizer step.
    checkpoint_every : int
        Write a checkpoint every this many optimizer steps (0: only at stage ends).
    snapshots : tuple of float
        Fractions of the run's steps (0 <= f < 1) whose weights are kept for good in
        ``snapshots/step-N.pt`` (0: the initial weights, the random-initialisation
        control); the final weights are ``final.pt``.
    count_flops : bool
        Count the FLOPs of the first step of each stage (see :mod:`bsym.train.budget`).
    keep_checkpoints : int
        Periodic checkpoints kept (the newest).
    seed : int
        Seeds data order, masks, and the python/numpy/torch RNGs.
    device : str
        ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:N``.
    precision : {"auto", "fp32", "bf16"}
        ``auto``: bf16 autocast on CUDA, fp32 on CPU.
    compile : bool or str
        ``torch.compile`` the loss computation (a string names the backend).
    num_workers : int
        DataLoader worker processes.
    log_every : int
        Log metrics every this many optimizer steps.
    eval_every : int
        Validation loss every this many steps (0: at the end of each stage only).
    eval_batches : int, optional
        Limit the validation batches.
    label : str, optional
        Supervised training of this label (``model.supervised_loss``) instead of
        pretraining.
    progress : bool
        Show a progress bar (rank 0 only).
    deterministic : bool
        ``torch.use_deterministic_algorithms(True, warn_only=True)`` on CPU.
    find_unused_parameters : bool
        Passed to DistributedDataParallel (stages may leave parameters unused).
    """

    steps: int = 1000
    stage_steps: dict | None = None
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    accumulate: int = 1
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    snapshots: tuple = ()
    count_flops: bool = True
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool | str = False
    num_workers: int = 0
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int | None = None
    label: str | None = None
    progress: bool = True
    deterministic: bool = True
    find_unused_parameters: bool = True

    #: Settings that may change when a run is resumed (they do not change the result,
    #: or change it only as the hardware does).
    RUNTIME_KEYS = ("device", "precision", "compile", "num_workers", "log_every", "eval_every",
                    "eval_batches", "progress", "checkpoint_every", "keep_checkpoints",
                    "deterministic", "find_unused_parameters", "snapshots", "count_flops")

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        self.snapshots = tuple(sorted({float(f) for f in self.snapshots}))
        if any(not 0.0 <= f < 1.0 for f in self.snapshots):
            raise ValueError(f"TrainConfig.snapshots are fractions of the run in [0, 1), got "
                             f"{self.snapshots}")
        positive = {"steps": self.steps, "batch_size": self.batch_size,
                    "accumulate": self.accumulate, "log_every": self.log_every,
                    "keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {value}")
        for name in ("warmup_steps", "checkpoint_every", "eval_every", "num_workers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.precision not in devices.PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {devices.PRECISIONS}, "
                             f"got {self.precision!r}")
        if self.stage_steps is not None:
            self.stage_steps = {str(k): int(v) for k, v in dict(self.stage_steps).items()}
            if any(v < 0 for v in self.stage_steps.values()):
                raise ValueError(f"TrainConfig.stage_steps must be >= 0, got {self.stage_steps}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["betas"] = list(self.betas)
        out["snapshots"] = list(self.snapshots)
        return out

    @classmethod
    def from_dict(cls, data) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    def science(self) -> dict:
        """The settings an exact resume must keep."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME_KEYS}


@dataclass
class StepInfo:
    """What a callback receives after each optimizer step.

    A callback that returns True stops training after this step (early
    stopping); the run then ends as finished, with ``TrainResult.stopped_early``.
    """

    step: int
    stage: str
    stage_step: int
    loss: float
    lr: float
    samples_per_s: float
    model: nn.Module
    val_loss: float | None = None


@dataclass
class TrainResult:
    """The outcome of :func:`train`.

    Attributes
    ----------
    final_path : Path or None
        ``final.pt`` (model weights and provenance), when an output directory was given.
    history : dict
        Per optimizer step: ``step``, ``stage``, ``loss``, ``lr`` lists.
    val_history : list of dict
        ``{"step", "stage", "loss"}`` of each validation.
    steps : int
        Optimizer steps taken in total (including those before a resume).
    samples_per_s : float
        Mean training throughput (all processes) over this session's steps.
    wall_s : float
        Seconds spent in this session.
    checkpoint : Path or None
        The newest periodic checkpoint.
    resumed_from : Path or None
    run_id : str or None
        MLflow run id, when tracked.
    stopped_early : bool
        A callback ended training before the step budget.
    budget : dict
        What the run consumed (:class:`~bsym.train.budget.Consumption`).
    """

    final_path: Path | None
    history: dict
    val_history: list = field(default_factory=list)
    steps: int = 0
    samples_per_s: float = float("nan")
    wall_s: float = 0.0
    checkpoint: Path | None = None
    resumed_from: Path | None = None
    run_id: str | None = None
    stopped_early: bool = False
    budget: dict = field(default_factory=dict)

    @property
    def final_loss(self):
        return self.history["loss"][-1] if self.history["loss"] else None


# -- data ---------------------------------------------------------------------------------
class ResumableSampler(DistributedSampler):
    """:class:`DistributedSampler` whose epoch ``e`` order is drawn from ``(seed, e)`` and
    which can skip the first samples of an epoch (those consumed before a resume)."""

    def __init__(self, dataset, *, num_replicas=1, rank=0, seed=0, shuffle=True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=int(seed), drop_last=False)
        self.skip = 0

    def set_epoch(self, epoch, skip=0):
        super().set_epoch(epoch)
        self.skip = int(skip)

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.skip:])

    def __len__(self):
        return self.num_samples - self.skip


def _collate(items):
    return default_collate(items)


class _BatchStream:
    """Endless micro-batches over epochs; ``consumed`` counts them (per process)."""

    def __init__(self, dataset, *, batch_size, seed, env, num_workers, pin_memory, consumed=0):
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.sampler = ResumableSampler(dataset, num_replicas=env.world_size, rank=env.rank,
                                        seed=derive(seed, _SEED_LOADER, 0, 0) % 2**31)
        self.per_epoch = self.sampler.num_samples // batch_size
        if self.per_epoch < 1:
            most = len(dataset) // env.world_size
            raise UsageError(
                f"the training set has {len(dataset)} samples: too few for one batch of "
                f"{batch_size} per process x {env.world_size} process(es); lower batch_size. "
                f"Fix: a batch size (--batch-size) of at most {max(most, 1)}, or more scans or "
                "windows (a shorter --window, --stride)")
        self.consumed = int(consumed)
        self._it = None

    @property
    def epoch(self) -> int:
        return self.consumed // self.per_epoch

    def _open(self):
        epoch, offset = divmod(self.consumed, self.per_epoch)
        self.sampler.set_epoch(epoch, skip=offset * self.batch_size)
        if hasattr(self.dataset, "set_epoch"):  # random window starts, drawn per epoch
            self.dataset.set_epoch(epoch)
        gen = torch.Generator().manual_seed(derive(self.seed, _SEED_LOADER, epoch, 1))
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                            drop_last=True, num_workers=self.num_workers,
                            worker_init_fn=devices.seed_worker, generator=gen,
                            collate_fn=_collate, pin_memory=self.pin_memory)
        self._it = iter(loader)

    def __next__(self):
        if self._it is None:
            self._open()
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = None
            if self.consumed % self.per_epoch:  # pragma: no cover - guarded by drop_last
                raise RuntimeError("data stream ended mid-epoch") from None
            return next(self)
        self.consumed += 1
        return batch

    def close(self):
        self._it = None


def derive(*parts) -> int:
    return devices.derive_seed(*parts)


def to_device(batch, device):
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch


def describe_data(dataset) -> dict:
    """ROI count, window length, sample count and manifest hash of a window dataset."""
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: expected at least one window")
    first = dataset[0]
    if not isinstance(first, Mapping) or "bold" not in first:
        raise ValueError(f"dataset items must be dicts with a 'bold' (ROIs x time) tensor, "
                         f"received {type(first).__name__}")
    n_rois, window = (int(s) for s in first["bold"].shape[-2:])
    cohort = getattr(dataset, "cohort", None)
    info = {"n_rois": n_rois, "window": window, "n_samples": len(dataset),
            "manifest_hash": getattr(cohort, "manifest_hash", None),
            "has_sc": "sc" in first}
    if hasattr(dataset, "describe"):
        info["dataset"] = dataset.describe()
    return info


def label_classes(dataset, label):
    """Sorted class names of a non-numeric label (None for a numeric one)."""
    table = getattr(dataset, "table", None)
    if table is not None and label in getattr(table, "columns", ()):
        values = table[label]
        if values.dtype.kind in "biufc" and values.dtype.kind != "b":
            return None
        return sorted({str(v) for v in values})
    first = dataset[0].get("labels", {})
    if label not in first:
        raise ValueError(f"the training dataset has no label {label!r}; build it with "
                         f"labels=[{label!r}] (it has {sorted(first)})")
    if isinstance(first[label], (int, float)) and not isinstance(first[label], bool):
        return None
    return sorted({str(dataset[i]["labels"][label]) for i in range(len(dataset))})


def _targets(batch, label, classes, device):
    labels = batch.get("labels")
    if not labels or label not in labels:
        raise ValueError(f"batch has no label {label!r}: build the dataset with labels="
                         f"[{label!r}]")
    y = labels[label]
    if classes is not None:
        lookup = {c: i for i, c in enumerate(classes)}
        try:
            y = torch.tensor([lookup[str(v)] for v in y], dtype=torch.long)
        except KeyError as err:
            raise ValueError(f"label {label!r} value {err.args[0]!r} is not among the training "
                             f"classes {classes}") from None
    elif not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    if y.is_floating_point():
        y = y.float()
    elif y.dtype == torch.bool:
        y = y.long()
    return y.to(device)


# -- model plumbing -----------------------------------------------------------------------
class _Objective(nn.Module):
    """Routes ``forward`` to the model's loss, so DDP and torch.compile see one module."""

    def __init__(self, model, label=None):
        super().__init__()
        self.model = model
        self.label = label

    def forward(self, batch, y=None, generator=None, stage=None):
        if self.label is None:
            return self.model.pretrain_loss(batch, generator=generator, stage=stage)
        return self.model.supervised_loss(batch, y)


def stage_budgets(model, config) -> list:
    """``[(stage, steps), ...]`` of a run: the model's stages, or one supervised stage."""
    if config.label is not None:
        return [("supervised", int(config.steps))]
    stages = [str(s) for s in model.stages()]
    if len(set(stages)) != len(stages) or not stages:
        raise ValueError(f"model.stages() must name distinct stages, got {stages}")
    if config.stage_steps is not None:
        given = config.stage_steps
        if set(given) != set(stages):
            raise UsageError(f"stage_steps must give a budget for each stage of the model: "
                             f"expected {stages}, received {sorted(given)}. Fix: --stage-steps "
                             + ",".join(f"{s}=N" for s in stages))
        if not any(given.values()):
            raise UsageError(f"stage_steps gives no step to any stage: {given}. Fix: give at "
                             "least one stage a positive number of steps")
        return [(s, given[s]) for s in stages]
    base, extra = divmod(int(config.steps), len(stages))
    return [(s, base + (extra if i == len(stages) - 1 else 0)) for i, s in enumerate(stages)]


def _param_groups(params, weight_decay):
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _check_model_fits_data(model, data):
    config = getattr(model, "config", None) or {}
    for key, value in (("n_rois", data["n_rois"]), ("n_timepoints", data["window"])):
        if key in config and config[key] is not None and int(config[key]) != value:
            raise ValueError(f"model {getattr(model, 'name', None) or type(model).__name__!r} "
                             f"expects {key}={config[key]}; the data gives {value} "
                             f"({'ROIs' if key == 'n_rois' else 'time points per window'})")


@torch.no_grad()
def evaluate_loss(model, dataset, *, batch_size=16, seed=0, device=None, stage=None,
                  label=None, max_batches=None, precision="fp32", num_workers=0) -> float:
    """Mean loss over a dataset with a fixed, seeded set of masks (for validation).

    Batches are taken in order and masks are drawn from a generator seeded with
    ``seed``, so two calls on the same weights give the same value. The global RNG
    state is left untouched.

    Parameters
    ----------
    model : BrainModel
    dataset : Dataset
        Items as :class:`~bsym.data.dataset.WindowDataset` yields them.
    label : str, optional
        Evaluate ``supervised_loss`` of this label instead of ``pretrain_loss``.
    stage : str, optional
        Passed to ``pretrain_loss``.
    max_batches : int, optional
        Use only the first batches.

    Returns
    -------
    float
        Sample-weighted mean loss.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = devices.autocast_dtype(device, precision)
    classes = label_classes(dataset, label) if label is not None else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate)
    generator = torch.Generator(device=device).manual_seed(derive(seed, _SEED_EVAL, 0, 0))
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    fork = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork):
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                batch = to_device(batch, device)
                n = int(batch["bold"].shape[0])
                with devices.autocast(device, dtype):
                    if label is None:
                        loss = model.pretrain_loss(batch, generator=generator, stage=stage)
                    else:
                        loss = model.supervised_loss(batch, _targets(batch, label, classes,
                                                                     device))
                total += float(loss.float()) * n
                count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_loss: the dataset gave no batch")
    return total / count


# -- output directory ---------------------------------------------------------------------
def is_run_dir(path) -> bool:
    """Whether ``path`` is a folder holding a run written by bsym.

    That is: it has the run record (``run.json``), or (a run of an older bsym stopped
    before its record) it holds run files only (``checkpoints/``, ``snapshots/``,
    ``final.pt``), at least one checkpoint among them.
    """
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    record = path / RUN_SUMMARY
    if record.is_file():
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and (
            data.get("format") == RUN_FORMAT or {"bsym_version", "model", "train_config"} <= set(data))
    names = {p.name for p in path.iterdir()}
    run_files = {CHECKPOINT_DIR, SNAPSHOT_DIR, FINAL_NAME, FINAL_NAME + CHECKSUM_SUFFIX}
    only_run_files = all(n in run_files or (n.startswith(".") and n.endswith(".tmp"))
                         for n in names)
    held = (path / FINAL_NAME).is_file() or list_checkpoints(path) or list_snapshots(path)
    return bool(only_run_files and held)


def check_run_dir(out_dir, *, resume=False):
    """Raise a clear error unless a run may write ``out_dir``; return the checkpoint to resume.

    An absent or empty folder starts a run. A folder that is not a bsym run directory is
    never written into, with or without ``resume``; a run directory needs ``resume``
    (which continues it from its newest checkpoint, or returns it when finished). A
    location that cannot be written is reported before any work starts.

    Returns
    -------
    Path or None
        ``final.pt`` or the newest periodic checkpoint to resume from.
    """
    if out_dir is None:
        if resume:
            raise ValueError("resume=True needs the out_dir of the run to continue")
        return None
    out_dir = Path(out_dir)
    empty = out_dir.is_dir() and not out_dir.is_symlink() and not any(out_dir.iterdir())
    if not empty:
        guard_output(out_dir, is_ours=is_run_dir, what="run directory", overwrite=True,
                     flag="--resume", fix_other="choose a new or empty --out folder for the "
                     "run (bsym writes final.pt, run.json, checkpoints/ and snapshots/ there)")
    check_writable(out_dir / RUN_SUMMARY, fix="choose an --out folder you can write to")
    if resume:
        final = out_dir / FINAL_NAME
        return final if final.exists() else latest_checkpoint(out_dir)
    held = [p for p in (out_dir / FINAL_NAME, out_dir / RUN_SUMMARY) if p.exists()]
    held += [p for _, p in list_checkpoints(out_dir) + list_snapshots(out_dir)]
    if held:
        finished = (out_dir / FINAL_NAME).exists()
        raise RunExistsError(
            f"{out_dir} already holds a {'finished' if finished else 'started'} run "
            f"({held[0].name}); nothing was overwritten. Fix: pass resume=True (--resume) to "
            f"{'reuse' if finished else 'continue'} it, or choose another output directory")
    return None


def _check_resume(ckpt, path, model, config, data, budgets, env, label):
    check_data(ckpt, path, n_rois=data["n_rois"], window=data["window"],
               manifest_hash=data.get("manifest_hash"))
    check_model(ckpt, model, path)
    stored = TrainConfig.from_dict(ckpt["config"]).science()
    here = config.science()
    diffs = [k for k in sorted(here) if stored.get(k) != here.get(k)]
    if diffs:
        shown = "; ".join(f"{k}: checkpoint {stored.get(k)!r}, this run {here.get(k)!r}"
                          for k in diffs)
        raise CheckpointError(f"{path}: training settings differ from the checkpoint's, so the "
                              f"run cannot be resumed exactly: {shown}")
    if [list(b) for b in ckpt["stages"]] != [list(b) for b in budgets]:
        raise CheckpointError(f"{path}: stage budgets differ: checkpoint {ckpt['stages']}, "
                              f"this run {budgets}")
    if not ckpt.get("finished") and int(ckpt["world_size"]) != env.world_size:
        raise CheckpointError(f"{path}: written by a run of {ckpt['world_size']} process(es); "
                              f"this run has {env.world_size}: resume with the same number "
                              "to continue exactly")


def _write_json(path, payload, what="the run record"):
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n", what=what)


def _start_record(meta):
    """The run record written when a run starts (completed by :func:`_summary` at its end)."""
    identity, config = meta["identity"], meta["config"]
    return {"format": RUN_FORMAT, "status": "running", "bsym_version": __version__,
            "model": identity["name"], "preset": identity["preset"],
            "model_config": identity["config"], "mode": meta["mode"], "label": meta["label"],
            "train_config": config.to_dict(), "stages": meta["budgets"],
            "data": {k: v for k, v in meta["data"].items() if k != "dataset"},
            "world_size": meta["env"].world_size}


# -- the loop -----------------------------------------------------------------------------
def train(model, train_dataset, config=None, out_dir=None, *, val_dataset=None, resume=False,
          tracker=None, callbacks=(), extra=None, run_name=None) -> TrainResult:
    """Train ``model``: staged self-supervised pretraining, or supervised with ``config.label``.

    Parameters
    ----------
    model : BrainModel
        Trained in place (its weights are the final ones on return).
    train_dataset : Dataset
        Items as :class:`~bsym.data.dataset.WindowDataset` yields them (with the label
        for supervised training).
    config : TrainConfig, optional
    out_dir : str or Path, optional
        Where ``checkpoints/step-N.pt``, ``final.pt`` and ``run.json`` go. Without it
        nothing is written and the run cannot be resumed.
    val_dataset : Dataset, optional
        Validation loss (:func:`evaluate_loss`) every ``eval_every`` steps and at the end
        of each stage.
    resume : bool
        Continue from the newest checkpoint in ``out_dir`` (a fresh start when there is
        none; a finished run is returned as it is). Without it an ``out_dir`` holding a
        run is an error.
    tracker : Tracker, optional
        MLflow tracker (:mod:`bsym.track`); logs into its active run if it has one,
        else opens a run. Only rank 0 logs.
    callbacks : sequence of callable
        Called with a :class:`StepInfo` after each optimizer step (after any checkpoint);
        an exception raised there stops the run.
    extra : dict, optional
        Plain data stored in every checkpoint (e.g. the fitted scaler's state).
    run_name : str, optional
        MLflow run name.

    Returns
    -------
    TrainResult

    Raises
    ------
    RunExistsError
        ``out_dir`` holds a run and ``resume`` is False.
    BsymError
        ``out_dir`` exists and is not a bsym run directory (nor empty), or cannot be
        written; a checkpoint write failed (a full disk: the previous checkpoint is intact).
    CheckpointError
        The checkpoint to resume is unreadable or made for another model, other data or
        other training settings.
    """
    config = config or TrainConfig()
    env, created_group = devices.init_distributed()
    try:
        return _train(model, train_dataset, config, out_dir, val_dataset=val_dataset,
                      resume=resume, tracker=tracker, callbacks=callbacks, extra=extra,
                      run_name=run_name, env=env)
    finally:
        if created_group:
            devices.cleanup_distributed()


def _train(model, train_dataset, config, out_dir, *, val_dataset, resume, tracker, callbacks,
           extra, run_name, env):
    started = time.perf_counter()
    label = config.label
    mode = "supervised" if label is not None else "pretrain"
    objective = getattr(model, "objective", "self_supervised")
    if mode == "pretrain" and objective != "self_supervised":
        raise UsageError(f"model {getattr(model, 'name', None) or type(model).__name__!r} has "
                         f"objective {objective!r}: pretraining needs a self-supervised model; "
                         "set config.label for supervised training. Fix: pretrain a "
                         "self-supervised model (brainsymphony, brainlm, brainjepa, brainmass); "
                         "train supervised baselines with `bsym supervised`")
    if objective == "none":
        raise UsageError(f"model {getattr(model, 'name', None) or type(model).__name__!r} is not "
                         "trained by gradient descent (objective 'none'): fit it with model.fit. "
                         "Fix: use its features directly (e.g. `bsym probe --features fc`)")
    device = devices.select_device(config.device, local_rank=env.local_rank)
    dtype = devices.autocast_dtype(device, config.precision)
    devices.seed_everything(derive(config.seed, _SEED_GLOBAL, env.rank, 0),
                            deterministic=config.deterministic, device=device)
    data = describe_data(train_dataset)
    _check_model_fits_data(model, data)
    budgets = stage_budgets(model, config)
    total_steps = sum(b for _, b in budgets)
    served = getattr(train_dataset, "labels", None)
    if label is not None and served is not None and label not in served:
        raise ValueError(f"the training dataset serves labels {list(served)}, not {label!r}; "
                         f"build it with labels=[{label!r}]")
    classes = label_classes(train_dataset, label) if label is not None else None

    out_dir = Path(out_dir) if out_dir is not None else None
    ckpt_path = check_run_dir(out_dir, resume=resume)
    devices.barrier()  # every rank has checked out_dir before rank 0 writes to it
    ckpt = None
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path, fix=_resume_fix(ckpt_path, out_dir))
        _check_resume(ckpt, ckpt_path, model, config, data, budgets, env, label)
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            raise CheckpointError(f"{ckpt_path}: weights do not fit model "
                                  f"{ckpt['model']['name']!r}: {err}") from None
        if ckpt.get("finished"):  # a finished run: return it, write nothing
            return _finished_result(ckpt, ckpt_path, out_dir)
    model.to(device)

    history = {"step": [], "stage": [], "loss": [], "lr": []}
    val_history = []
    step, consumed, start_stage, start_stage_step = 0, 0, 0, 0
    prior_wall = 0.0
    if ckpt is not None:
        history = {k: list(v) for k, v in ckpt["history"].items()}
        val_history = [dict(v) for v in ckpt["val_history"]]
        step, consumed = int(ckpt["step"]), int(ckpt["consumed"])
        start_stage, start_stage_step = int(ckpt["stage_index"]), int(ckpt["stage_step"])
        prior_wall = float(ckpt.get("wall_s", 0.0))

    is_main = env.is_main
    tracker = tracker if (tracker is not None and is_main) else NullTracker()
    mask_gen = torch.Generator(device=device)
    mask_gen.manual_seed(derive(config.seed, _SEED_MASKS, env.rank, 0))
    if ckpt is not None:
        devices.set_rng_state(ckpt["rng"][env.rank], mask_gen)
    identity = model_identity(model)

    stream = _BatchStream(train_dataset, batch_size=config.batch_size, seed=config.seed, env=env,
                          num_workers=config.num_workers, pin_memory=device.type == "cuda",
                          consumed=consumed)
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.train()
    session = {"steps": 0, "seconds": 0.0}
    last_ckpt = ckpt_path
    meta = {"mode": mode, "label": label, "classes": classes, "identity": identity,
            "data": data, "budgets": budgets, "env": env, "config": config, "extra": extra,
            "consumption": Consumption.from_dict((ckpt or {}).get("budget"))}
    snapshot_steps = {round(f * total_steps) for f in config.snapshots}

    tracking = contextlib.ExitStack()
    run_id = None
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=not (config.progress and is_main),
               desc=mode, unit="step", dynamic_ncols=True)
    try:
        with tracking:
            run_id = _open_tracking(tracking, tracker, model, config, data, mode, ckpt,
                                    run_name, extra)
            meta["tracking"] = {"uri": getattr(tracker, "uri", None),
                                "experiment": getattr(tracker, "experiment", None),
                                "run_id": run_id if tracker.enabled else None}
            stop = False
            if ckpt is None and out_dir is not None and is_main:
                _write_json(out_dir / RUN_SUMMARY, _start_record(meta))
            if ckpt is None and 0 in snapshot_steps and out_dir is not None and is_main:
                _save_snapshot(model, meta, out_dir, budgets[0][0], 0, 0, history,
                               val_history, prior_wall)
            for si, (stage, budget) in enumerate(budgets):
                if stop:
                    break
                if si < start_stage:
                    continue
                stage_step = start_stage_step if si == start_stage else 0
                resumed_here = ckpt if si == start_stage else None
                if budget == 0:
                    continue
                bar.set_description(f"{mode}:{stage}" if len(budgets) > 1 else mode)
                # Freeze what the stage does not train (flags restored before each query).
                for p, flag in flags.items():
                    p.requires_grad_(flag)
                params = list(model.stage_parameters(stage)) if label is None else \
                    [p for p in model.parameters() if p.requires_grad]
                if not params:
                    raise ValueError(f"stage {stage!r} of model {identity['name']!r} has no "
                                     "trainable parameter")
                trained = {id(p) for p in params}
                for p in model.parameters():
                    p.requires_grad_(id(p) in trained)
                optimizer = torch.optim.AdamW(_param_groups(params, config.weight_decay),
                                              lr=config.lr, betas=config.betas,
                                              weight_decay=config.weight_decay)
                schedule = WarmupCosine(optimizer, total_steps=budget,
                                        warmup_steps=config.warmup_steps,
                                        min_ratio=config.min_lr_ratio)
                if resumed_here is not None and resumed_here.get("optimizer") is not None:
                    optimizer.load_state_dict(resumed_here["optimizer"])
                    schedule.load_state_dict(resumed_here["scheduler"])
                runner, ddp = _wrap(model, label, config, device, env)

                window_t, window_steps = time.perf_counter(), 0
                while stage_step < budget:
                    t0 = time.perf_counter()
                    lr = optimizer.param_groups[0]["lr"]
                    optimizer.zero_grad(set_to_none=True)
                    loss_sum = torch.zeros((), device=device)
                    consumption = meta["consumption"]
                    count = (config.count_flops and not config.compile and
                             stage not in consumption.flops_per_step)
                    with StepFlops(enabled=count) as flops:
                        for micro in range(config.accumulate):
                            batch = to_device(next(stream), device)
                            y = _targets(batch, label, classes, device) if label is not None \
                                else None
                            sync = (ddp is None or micro == config.accumulate - 1)
                            with contextlib.nullcontext() if sync else ddp.no_sync():
                                with devices.autocast(device, dtype):
                                    loss = runner(batch, y, mask_gen, stage)
                                if loss.ndim != 0:
                                    raise ValueError(f"the loss must be a scalar tensor, "
                                                     f"received shape {tuple(loss.shape)}")
                                (loss.float() / config.accumulate).backward()
                            loss_sum += loss.detach().float()
                    if stage not in consumption.flops_per_step:
                        consumption.flops_per_step[stage] = (
                            flops.total * env.world_size if flops.total is not None else None)
                    mean_loss = loss_sum / config.accumulate
                    if env.distributed:
                        torch.distributed.all_reduce(mean_loss)
                        mean_loss /= env.world_size
                    loss_value = float(mean_loss)
                    if not math.isfinite(loss_value):  # every rank sees the same mean
                        raise FloatingPointError(
                            f"non-finite training loss ({loss_value}) at step {step + 1} "
                            f"(stage {stage!r}); lower the learning rate or check the data "
                            "(the weights before this step are in the last checkpoint)")
                    grad_norm = None
                    if config.grad_clip is not None:
                        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                    optimizer.step()
                    schedule.step()
                    step += 1
                    stage_step += 1
                    if hasattr(model, "after_optimizer_step"):  # EMA targets (JEPA, BYOL)
                        model.after_optimizer_step(step, total_steps)
                    dt = time.perf_counter() - t0
                    session["steps"] += 1
                    session["seconds"] += dt
                    window_steps += 1
                    samples = config.batch_size * config.accumulate * env.world_size
                    sps = samples / max(dt, 1e-9)
                    consumption.add_step(stage, samples, data["window"])
                    consumption.wall_s = prior_wall + time.perf_counter() - started
                    history["step"].append(step)
                    history["stage"].append(stage)
                    history["loss"].append(loss_value)
                    history["lr"].append(lr)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}",
                                    samples_s=f"{sps:.1f}", refresh=False)
                    if step % config.log_every == 0 or stage_step == budget:
                        elapsed = time.perf_counter() - window_t
                        metrics = {"train_loss": loss_value, "lr": lr, "stage_index": si,
                                   "samples_per_s": samples * window_steps / max(elapsed, 1e-9),
                                   "epoch": stream.epoch}
                        if grad_norm is not None:
                            metrics["grad_norm"] = float(grad_norm)
                        tracker.log_metrics(metrics, step=step)
                        window_t, window_steps = time.perf_counter(), 0
                    val = None
                    if val_dataset is not None and is_main and (
                            stage_step == budget or
                            (config.eval_every and step % config.eval_every == 0)):
                        val = evaluate_loss(model, val_dataset, batch_size=config.batch_size,
                                            seed=config.seed, device=device,
                                            stage=None if label else stage, label=label,
                                            max_batches=config.eval_batches,
                                            precision=config.precision)
                        val_history.append({"step": step, "stage": stage, "loss": val})
                        tracker.log_metrics({"val_loss": val}, step=step)
                    due = out_dir is not None and (
                        stage_step == budget or
                        (config.checkpoint_every and step % config.checkpoint_every == 0))
                    if due:
                        rng = devices.all_gather_object(devices.get_rng_state(mask_gen))
                        if is_main:
                            state = _checkpoint_state(
                                model, optimizer, schedule, rng, meta, stage, si, stage_step,
                                step, stream.consumed, history, val_history,
                                prior_wall + time.perf_counter() - started, finished=False)
                            last_ckpt = _save(state, checkpoint_path(out_dir, step), last_ckpt)
                            prune_checkpoints(out_dir, config.keep_checkpoints)
                    if step in snapshot_steps and out_dir is not None and is_main:
                        _save_snapshot(model, meta, out_dir, stage, si, stage_step, history,
                                       val_history, prior_wall + time.perf_counter() - started,
                                       step=step, consumed=stream.consumed)
                    info = StepInfo(step, stage, stage_step, loss_value, lr, sps, model, val)
                    stop = any([callback(info) is True for callback in callbacks])
                    if env.distributed:
                        stop = any(devices.all_gather_object(stop))
                    if stop:
                        break
                ddp = runner = None
            stream.close()
            bar.close()
            wall = prior_wall + time.perf_counter() - started
            throughput = (config.batch_size * config.accumulate * env.world_size *
                          session["steps"] / session["seconds"]) if session["seconds"] else \
                float("nan")
            result = TrainResult(final_path=None, history=history, val_history=val_history,
                                 steps=step, samples_per_s=throughput,
                                 wall_s=time.perf_counter() - started, checkpoint=last_ckpt,
                                 resumed_from=ckpt_path, run_id=run_id if tracker.enabled
                                 else None, stopped_early=stop,
                                 budget=meta["consumption"].to_dict())
            tracker.log_metrics({"final_train_loss": result.final_loss or float("nan"),
                                 "train_samples_per_s": throughput, "train_wall_s": wall,
                                 **_budget_metrics(meta["consumption"])}, step=step)
            if out_dir is not None and is_main:
                final = _checkpoint_state(model, None, None, None, meta, budgets[-1][0],
                                          len(budgets) - 1, budgets[-1][1], step,
                                          stream.consumed, history, val_history, wall,
                                          finished=True)
                result.final_path = _save(final, out_dir / FINAL_NAME, last_ckpt)
                _write_json(out_dir / RUN_SUMMARY, _summary(result, meta, out_dir))
                tracker.log_artifact(out_dir / RUN_SUMMARY)
            elif out_dir is not None:
                result.final_path = out_dir / FINAL_NAME
        devices.barrier()
        return result
    finally:
        bar.close()
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)


def _open_tracking(stack, tracker, model, config, data, mode, ckpt, run_name, extra):
    if not tracker.enabled:
        return None
    identity = model_identity(model)
    # "model" and "protocol" as the evaluation runs tag them, so one filter finds both
    tags = {"model": identity["name"], "protocol": mode,
            "bsym.mode": mode, "bsym.model": identity["name"],
            "bsym.preset": str(identity["preset"]), "bsym.version": __version__,
            "bsym.data.manifest_hash": str(data.get("manifest_hash"))}
    if tracker.run_id is not None:  # log into the caller's run
        run_id = tracker.run_id
    else:
        previous = (ckpt or {}).get("tracking") or {}
        reuse = previous.get("run_id") if previous.get("uri") == tracker.uri else None
        name = run_name or f"{mode}-{identity['name']}"
        run_id = stack.enter_context(tracker.start_run(name, tags=tags, run_id=reuse))
    tracker.set_tags(tags)
    if ckpt is not None:  # a resumed run logged its parameters when it started
        return run_id
    counts = model.param_counts() if hasattr(model, "param_counts") else {
        "total": sum(p.numel() for p in model.parameters())}
    tracker.log_params({"train": config.to_dict(), "model": identity["config"],
                        "model_name": identity["name"], "model_preset": identity["preset"],
                        "n_params": counts,
                        "data": {k: v for k, v in data.items() if k != "dataset"},
                        "dataset": data.get("dataset") or {},
                        "extra": {k: v for k, v in (extra or {}).items()
                                  if not isinstance(v, (dict, list, tuple))}})
    return run_id


def _wrap(model, label, config, device, env):
    module = _Objective(model, label)
    ddp = None
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        ddp = module = DistributedDataParallel(
            module, device_ids=ids, find_unused_parameters=config.find_unused_parameters)
    if config.compile:
        backend = config.compile if isinstance(config.compile, str) else "inductor"
        module = torch.compile(module, backend=backend)
    return module, ddp


def _checkpoint_state(model, optimizer, schedule, rng, meta, stage, stage_index,
                      stage_step, step, consumed, history, val_history, wall, *, finished):
    env, config = meta["env"], meta["config"]
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "bsym_version": __version__,
        "kind": "final" if optimizer is None else "train",
        "finished": bool(finished),
        "model": meta["identity"],
        "data": {k: v for k, v in meta["data"].items()},
        "mode": meta["mode"], "label": meta["label"], "label_classes": meta["classes"],
        "config": config.to_dict(),
        "stages": [list(b) for b in meta["budgets"]],
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": schedule.state_dict() if schedule is not None else None,
        "stage": stage, "stage_index": int(stage_index), "stage_step": int(stage_step),
        "step": int(step), "consumed": int(consumed), "world_size": env.world_size,
        "rng": rng,
        "history": history, "val_history": val_history, "wall_s": float(wall),
        "tracking": meta.get("tracking"),
        "extra": meta["extra"] or {},
        "budget": meta["consumption"].to_dict(),
    }


def _save_snapshot(model, meta, out_dir, stage, stage_index, stage_step, history, val_history,
                   wall, *, step=0, consumed=0):
    state = _checkpoint_state(model, None, None, None, meta, stage, stage_index, stage_step,
                              step, consumed, history, val_history, wall, finished=False)
    state["kind"] = "snapshot"
    return save_checkpoint(state, snapshot_path(out_dir, step))


def _budget_metrics(consumption):
    out = {"budget_samples": consumption.samples, "budget_timepoints": consumption.timepoints}
    if consumption.flops is not None:
        out["budget_flops"] = consumption.flops
    return out


def _save(state, path, previous):
    """:func:`save_checkpoint`; a failed write (a full disk) says what the run keeps."""
    try:
        return save_checkpoint(state, path)
    except BsymError as err:
        kept = (f"the previous checkpoint {previous} is intact: once fixed, `bsym pretrain ... "
                "--resume` continues from it" if previous is not None else
                "no checkpoint of this run was written yet")
        raise CheckpointError(f"{err} ({kept})") from None


def _resume_fix(path, out_dir):
    """What to do about a damaged checkpoint met when resuming."""
    if path.name == FINAL_NAME:
        return (f"restore it (with its {CHECKSUM_SUFFIX} file) from a copy, or move it away "
                "and resume again (the run then continues from its newest checkpoint)")
    return (f"restore it (with its {CHECKSUM_SUFFIX} file) from a copy, or move it and its "
            f"{CHECKSUM_SUFFIX} file out of {out_dir / CHECKPOINT_DIR} and resume again (the "
            "run then continues from the checkpoint before it)")


def _summary(result, meta, out_dir):
    identity, config = meta["identity"], meta["config"]
    history = result.history
    return {
        "format": RUN_FORMAT, "status": "finished",
        "bsym_version": __version__,
        "model": identity["name"], "preset": identity["preset"],
        "model_config": identity["config"],
        "mode": meta["mode"], "label": meta["label"],
        "train_config": config.to_dict(),
        "stages": meta["budgets"],
        "data": meta["data"],
        "world_size": meta["env"].world_size,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "first_loss": history["loss"][0] if history["loss"] else None,
        "stage_final_loss": {s: history["loss"][len(history["stage"]) - 1 -
                                               history["stage"][::-1].index(s)]
                             for s in dict.fromkeys(history["stage"])},
        "val_history": result.val_history,
        "samples_per_s": result.samples_per_s,
        "wall_s": result.wall_s,
        "final": str(result.final_path.relative_to(out_dir)) if result.final_path else None,
        "checkpoints": [str(p.relative_to(out_dir)) for _, p in list_checkpoints(out_dir)],
        "extra": {k: v for k, v in (meta["extra"] or {}).items() if k != "scaler"},
        "mlflow_run_id": result.run_id,
        "budget": result.budget,
        "snapshots": [str(p.relative_to(out_dir)) for _, p in list_snapshots(out_dir)],
        "resumed_from": str(result.resumed_from) if result.resumed_from else None,
    }


def _finished_result(ckpt, path, out_dir):
    final = out_dir / FINAL_NAME if out_dir is not None else None
    return TrainResult(final_path=final if final and final.exists() else None,
                       history={k: list(v) for k, v in ckpt["history"].items()},
                       val_history=[dict(v) for v in ckpt["val_history"]],
                       steps=int(ckpt["step"]), wall_s=0.0, checkpoint=path,
                       resumed_from=path,
                       run_id=(ckpt.get("tracking") or {}).get("run_id"),
                       budget=dict(ckpt.get("budget") or {}))


__all__ = ["CHECKPOINT_DIR", "FINAL_NAME", "RUN_SUMMARY", "ResumableSampler", "StepInfo",
           "TrainConfig", "TrainResult", "describe_data", "evaluate_loss", "stage_budgets",
           "to_device", "train"]
