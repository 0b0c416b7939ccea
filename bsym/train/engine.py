"""The one training loop every model uses: pretraining (staged) and supervised training.

AdamW with warm-up + cosine decay, gradient clipping and accumulation; CUDA with bf16
autocast when present, else CPU; optional ``torch.compile``; DistributedDataParallel
under torchrun; deterministic seeding; atomic checkpoints and exact resume; MLflow
tracking through :mod:`bsym.track`.

Reading order: :func:`train` checks and prepares a run (:func:`_train`), then
:func:`_train_stages` trains stage after stage (:func:`_train_stage`); :func:`_train_step`
is one optimizer step and :func:`_after_step` what follows it (logging, validation,
checkpoints, snapshots, callbacks); :func:`_finish` writes ``final.pt`` and the run record.

Reproducibility: the data order of epoch ``e`` is a permutation drawn from
``(seed, e)`` (:mod:`bsym.train.batches`), and a checkpoint records how many batches
were consumed, so a resumed run skips exactly those and continues with the same
batches, masks (the mask generator's state is saved) and RNG states as an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from bsym import __version__
from bsym.errors import BsymError, UsageError
from bsym.track import NullTracker
from bsym.train import devices
from bsym.train.batches import (
    BatchStream,
    ResumableSampler,
    collate,
    describe_data,
    label_classes,
    label_targets,
    to_device,
)
from bsym.train.budget import Consumption, StepFlops
from bsym.train.checkpoint import (
    CHECKPOINT_DIR,
    FINAL_NAME,
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    check_data,
    check_model,
    checkpoint_path,
    list_checkpoints,
    list_snapshots,
    load_checkpoint,
    model_identity,
    prune_checkpoints,
    save_checkpoint,
    snapshot_path,
)
from bsym.train.config import TrainConfig
from bsym.train.rundir import (
    RUN_FORMAT,
    RUN_SUMMARY,
    check_run_dir,
    is_run_dir,
    resume_fix,
    write_run_record,
)
from bsym.train.schedule import WarmupCosine


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
                        collate_fn=collate)
    seed = devices.derive_seed(seed, devices.SEED_EVAL, 0, 0)
    generator = torch.Generator(device=device).manual_seed(seed)
    objective = _Objective(model, label)
    total, count = 0.0, 0
    with _evaluating(model, device):
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            batch = to_device(batch, device)
            y = label_targets(batch, label, classes, device) if label is not None else None
            with devices.autocast(device, dtype):
                loss = objective(batch, y, generator, stage)
            n = int(batch["bold"].shape[0])
            total += float(loss.float()) * n
            count += n
    if count == 0:
        raise ValueError("evaluate_loss: the dataset gave no batch")
    return total / count


@contextlib.contextmanager
def _evaluating(model, device):
    """``model`` in eval mode and the global RNG forked; both as they were on exit."""
    was_training = model.training
    model.eval()
    fork = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork):
            yield
    finally:
        model.train(was_training)


# -- the state of a run -------------------------------------------------------------------
@dataclass
class _Run:
    """What a training run carries from step to step (one per :func:`train` call)."""

    model: nn.Module
    config: TrainConfig
    env: devices.DistEnv
    device: torch.device
    dtype: torch.dtype | None
    data: dict
    budgets: list
    classes: list | None
    out_dir: Path | None
    tracker: object
    stream: BatchStream
    val_dataset: object
    callbacks: tuple
    extra: dict | None
    started: float
    identity: dict = field(init=False)
    mask_gen: torch.Generator = field(init=False)
    snapshot_steps: set = field(init=False)
    #: The checkpoint resumed from (None for a fresh run) and its path; the newest written.
    resumed: dict | None = None
    resumed_from: Path | None = None
    last_checkpoint: Path | None = None
    #: Where a resumed run continues, and its seconds of training before.
    start_stage: int = 0
    start_stage_step: int = 0
    prior_wall: float = 0.0
    #: Progress over the whole run (steps before a resume included).
    step: int = 0
    history: dict = field(default_factory=lambda: {"step": [], "stage": [], "loss": [], "lr": []})
    val_history: list = field(default_factory=list)
    consumption: Consumption = field(default_factory=Consumption)
    #: Steps and seconds of this session (its throughput).
    session_steps: int = 0
    session_seconds: float = 0.0
    #: The MLflow run (``tracking`` is stored in checkpoints), the progress bar, early stop.
    tracking: dict | None = None
    run_id: str | None = None
    bar: object = None
    stopped: bool = False

    def __post_init__(self):
        self.identity = model_identity(self.model)
        self.mask_gen = torch.Generator(device=self.device)
        self.snapshot_steps = {round(f * self.total_steps) for f in self.config.snapshots}

    @property
    def label(self):
        return self.config.label

    @property
    def mode(self) -> str:
        return "supervised" if self.config.label is not None else "pretrain"

    @property
    def total_steps(self) -> int:
        return sum(b for _, b in self.budgets)

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    @property
    def samples_per_step(self) -> int:
        return self.config.batch_size * self.config.accumulate * self.env.world_size

    def wall(self) -> float:
        """Seconds of training, those before a resume included."""
        return self.prior_wall + time.perf_counter() - self.started


@dataclass
class _Stage:
    """The stage being trained: its position, optimizer, schedule and loss runner."""

    name: str
    index: int
    budget: int
    step: int
    params: list
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    runner: nn.Module
    ddp: nn.Module | None
    #: Start and steps of the current logging window (its samples per second).
    window_start: float
    window_steps: int = 0

    @property
    def at_end(self) -> bool:
        return self.step == self.budget

    @property
    def position(self) -> tuple:
        return self.name, self.index, self.step


@dataclass
class _Outcome:
    """What one optimizer step gave."""

    loss: float
    lr: float
    grad_norm: torch.Tensor | None
    samples_per_s: float


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
    """Check and prepare the run (device, seeds, data, resume), then train its stages."""
    started = time.perf_counter()
    _check_objective(model, config.label)
    device = devices.select_device(config.device, local_rank=env.local_rank)
    dtype = devices.autocast_dtype(device, config.precision)
    devices.seed_everything(devices.derive_seed(config.seed, devices.SEED_GLOBAL, env.rank, 0),
                            deterministic=config.deterministic, device=device)
    data, budgets, classes = _plan(model, train_dataset, config)
    out_dir = Path(out_dir) if out_dir is not None else None
    ckpt_path = check_run_dir(out_dir, resume=resume)
    devices.barrier()  # every rank has checked out_dir before rank 0 writes to it
    ckpt = _load_resumed(ckpt_path, out_dir, model, config, data, budgets, env)
    if ckpt is not None and ckpt.get("finished"):  # a finished run: return it, write nothing
        return _finished_result(ckpt, ckpt_path, out_dir)
    model.to(device)
    stream = BatchStream(train_dataset, batch_size=config.batch_size, seed=config.seed, env=env,
                         num_workers=config.num_workers, pin_memory=device.type == "cuda",
                         consumed=int(ckpt["consumed"]) if ckpt is not None else 0)
    run = _Run(model=model, config=config, env=env, device=device, dtype=dtype, data=data,
               budgets=budgets, classes=classes, out_dir=out_dir,
               tracker=tracker if (tracker is not None and env.is_main) else NullTracker(),
               stream=stream, val_dataset=val_dataset, callbacks=callbacks, extra=extra,
               started=started, resumed_from=ckpt_path, last_checkpoint=ckpt_path)
    _resume(run, ckpt)
    return _run_training(run, run_name)


def _check_objective(model, label):
    name = getattr(model, "name", None) or type(model).__name__
    objective = getattr(model, "objective", "self_supervised")
    if label is None and objective != "self_supervised":
        raise UsageError(f"model {name!r} has objective {objective!r}: pretraining needs a "
                         "self-supervised model; set config.label for supervised training. "
                         "Fix: pretrain a self-supervised model (brainsymphony, brainlm, "
                         "brainjepa, brainmass); train supervised baselines with `bsym "
                         "supervised`")
    if objective == "none":
        raise UsageError(f"model {name!r} is not trained by gradient descent (objective "
                         "'none'): fit it with model.fit. Fix: use its features directly "
                         "(e.g. `bsym probe --features fc`)")


def _plan(model, dataset, config):
    """The data description, stage budgets and label classes of a run, checked."""
    data = describe_data(dataset)
    _check_model_fits_data(model, data)
    budgets = stage_budgets(model, config)
    label = config.label
    served = getattr(dataset, "labels", None)
    if label is not None and served is not None and label not in served:
        raise ValueError(f"the training dataset serves labels {list(served)}, not {label!r}; "
                         f"build it with labels=[{label!r}]")
    classes = label_classes(dataset, label) if label is not None else None
    return data, budgets, classes


def _load_resumed(path, out_dir, model, config, data, budgets, env):
    """The checkpoint at ``path`` (None: a fresh run), checked, its weights loaded."""
    if path is None:
        return None
    ckpt = load_checkpoint(path, fix=resume_fix(path, out_dir))
    _check_resume(ckpt, path, model, config, data, budgets, env)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit model "
                              f"{ckpt['model']['name']!r}: {err}") from None
    return ckpt


def _check_resume(ckpt, path, model, config, data, budgets, env):
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


def _resume(run, ckpt):
    """Seed the mask generator; with a checkpoint, continue from where it stopped."""
    run.mask_gen.manual_seed(devices.derive_seed(run.config.seed, devices.SEED_MASKS,
                                                 run.env.rank, 0))
    if ckpt is None:
        return
    run.resumed = ckpt
    run.history = {k: list(v) for k, v in ckpt["history"].items()}
    run.val_history = [dict(v) for v in ckpt["val_history"]]
    run.step = int(ckpt["step"])
    run.start_stage, run.start_stage_step = int(ckpt["stage_index"]), int(ckpt["stage_step"])
    run.prior_wall = float(ckpt.get("wall_s", 0.0))
    run.consumption = Consumption.from_dict(ckpt.get("budget"))
    devices.set_rng_state(ckpt["rng"][run.env.rank], run.mask_gen)


def _run_training(run, run_name):
    """Open the run, train its stages, finish it; the model's flags and mode are restored
    however it ends."""
    model = run.model
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.train()
    from tqdm.auto import tqdm

    run.bar = tqdm(total=run.total_steps, initial=run.step, desc=run.mode, unit="step",
                   disable=not (run.config.progress and run.is_main), dynamic_ncols=True)
    try:
        with contextlib.ExitStack() as tracking:
            _open_run(run, tracking, run_name)
            _train_stages(run, flags)
            result = _finish(run)
        devices.barrier()
        return result
    finally:
        run.bar.close()
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)


def _open_run(run, stack, run_name):
    """Start tracking; a fresh run writes its record and keeps its initial weights if asked."""
    run.run_id = _open_tracking(run, stack, run_name)
    run.tracking = {"uri": getattr(run.tracker, "uri", None),
                    "experiment": getattr(run.tracker, "experiment", None),
                    "run_id": run.run_id if run.tracker.enabled else None}
    if run.resumed is not None or run.out_dir is None or not run.is_main:
        return
    write_run_record(run.out_dir, _start_record(run))
    if 0 in run.snapshot_steps:
        _save_snapshot(run, (run.budgets[0][0], 0, 0), wall=run.prior_wall)


def _train_stages(run, flags):
    """Each stage in turn, from where a resumed run stopped, until a callback stops it."""
    for index, (_, budget) in enumerate(run.budgets):
        if run.stopped:
            break
        if index >= run.start_stage and budget > 0:
            _train_stage(run, _open_stage(run, index, flags))


def _open_stage(run, index, flags):
    """Stage ``index`` ready to train: only its parameters trainable, its optimizer built."""
    name, budget = run.budgets[index]
    run.bar.set_description(f"{run.mode}:{name}" if len(run.budgets) > 1 else run.mode)
    params = _stage_parameters(run, name, flags)
    resumed = run.resumed if index == run.start_stage else None
    optimizer, schedule = _stage_optimizer(run.config, params, budget, resumed)
    runner, ddp = _wrap(run.model, run.label, run.config, run.device, run.env)
    return _Stage(name=name, index=index, budget=budget,
                  step=run.start_stage_step if index == run.start_stage else 0, params=params,
                  optimizer=optimizer, schedule=schedule, runner=runner, ddp=ddp,
                  window_start=time.perf_counter())


def _stage_parameters(run, stage, flags):
    """The parameters ``stage`` trains, left the only ones that require gradients."""
    for p, flag in flags.items():  # the model's own flags first, then the stage's choice
        p.requires_grad_(flag)
    model = run.model
    params = list(model.stage_parameters(stage)) if run.label is None else \
        [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"stage {stage!r} of model {run.identity['name']!r} has no "
                         "trainable parameter")
    trained = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)
    return params


def _stage_optimizer(config, params, budget, resumed):
    """AdamW and its warm-up + cosine schedule over the stage's ``budget`` steps."""
    optimizer = torch.optim.AdamW(_param_groups(params, config.weight_decay), lr=config.lr,
                                  betas=config.betas, weight_decay=config.weight_decay)
    schedule = WarmupCosine(optimizer, total_steps=budget, warmup_steps=config.warmup_steps,
                            min_ratio=config.min_lr_ratio)
    if resumed is not None and resumed.get("optimizer") is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["scheduler"])
    return optimizer, schedule


def _train_stage(run, stage):
    while stage.step < stage.budget and not run.stopped:
        outcome = _train_step(run, stage)
        run.stopped = _after_step(run, stage, outcome)


# -- one optimizer step -------------------------------------------------------------------
def _train_step(run, stage) -> _Outcome:
    """One optimizer step: forward and backward over ``accumulate`` micro-batches, update."""
    started = time.perf_counter()
    lr = stage.optimizer.param_groups[0]["lr"]
    stage.optimizer.zero_grad(set_to_none=True)
    loss = _accumulate_gradients(run, stage)
    grad_norm = None
    if run.config.grad_clip is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(stage.params, run.config.grad_clip)
    stage.optimizer.step()
    stage.schedule.step()
    run.step += 1
    stage.step += 1
    if hasattr(run.model, "after_optimizer_step"):  # EMA targets (JEPA, BYOL)
        run.model.after_optimizer_step(run.step, run.total_steps)
    return _record_step(run, stage, loss, lr, grad_norm, time.perf_counter() - started)


def _accumulate_gradients(run, stage) -> float:
    """Gradients of ``accumulate`` micro-batches; their mean loss over every process.

    The FLOPs of the first step of each stage are counted on the way.
    """
    config, consumption = run.config, run.consumption
    loss_sum = torch.zeros((), device=run.device)
    count = (config.count_flops and not config.compile and
             stage.name not in consumption.flops_per_step)
    with StepFlops(enabled=count) as flops:
        for micro in range(config.accumulate):
            loss_sum += _micro_batch(run, stage, last=micro == config.accumulate - 1)
    if stage.name not in consumption.flops_per_step:
        consumption.flops_per_step[stage.name] = (
            flops.total * run.env.world_size if flops.total is not None else None)
    mean_loss = loss_sum / config.accumulate
    if run.env.distributed:
        torch.distributed.all_reduce(mean_loss)
        mean_loss /= run.env.world_size
    loss = float(mean_loss)
    if not math.isfinite(loss):  # every rank sees the same mean
        raise FloatingPointError(
            f"non-finite training loss ({loss}) at step {run.step + 1} (stage {stage.name!r}); "
            "lower the learning rate or check the data (the weights before this step are in "
            "the last checkpoint)")
    return loss


def _micro_batch(run, stage, *, last):
    """Forward and backward of one micro-batch (DDP syncs gradients on the ``last``)."""
    batch = to_device(next(run.stream), run.device)
    y = label_targets(batch, run.label, run.classes, run.device) if run.label is not None \
        else None
    sync = stage.ddp is None or last
    with contextlib.nullcontext() if sync else stage.ddp.no_sync():
        with devices.autocast(run.device, run.dtype):
            loss = stage.runner(batch, y, run.mask_gen, stage.name)
        if loss.ndim != 0:
            raise ValueError(f"the loss must be a scalar tensor, received shape "
                             f"{tuple(loss.shape)}")
        (loss.float() / run.config.accumulate).backward()
    return loss.detach().float()


def _record_step(run, stage, loss, lr, grad_norm, seconds) -> _Outcome:
    """Count the step in the history, the budget and the progress bar."""
    run.session_steps += 1
    run.session_seconds += seconds
    stage.window_steps += 1
    samples = run.samples_per_step
    samples_per_s = samples / max(seconds, 1e-9)
    run.consumption.add_step(stage.name, samples, run.data["window"])
    run.consumption.wall_s = run.wall()
    for key, value in (("step", run.step), ("stage", stage.name), ("loss", loss), ("lr", lr)):
        run.history[key].append(value)
    run.bar.update(1)
    run.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_per_s:.1f}",
                        refresh=False)
    return _Outcome(loss, lr, grad_norm, samples_per_s)


# -- after a step: logging, validation, checkpoints, snapshots, callbacks -----------------
def _after_step(run, stage, outcome) -> bool:
    """Log, validate, checkpoint and keep a snapshot when due; True when a callback stops."""
    config = run.config
    if run.step % config.log_every == 0 or stage.at_end:
        _log_step(run, stage, outcome)
    val = None
    if run.val_dataset is not None and run.is_main and _due(run, stage, config.eval_every):
        val = _validate(run, stage)
    if run.out_dir is not None and _due(run, stage, config.checkpoint_every):
        _write_checkpoint(run, stage)
    if run.step in run.snapshot_steps and run.out_dir is not None and run.is_main:
        _save_snapshot(run, stage.position, wall=run.wall())
    info = StepInfo(run.step, stage.name, stage.step, outcome.loss, outcome.lr,
                    outcome.samples_per_s, run.model, val)
    stop = any([callback(info) is True for callback in run.callbacks])  # every one is called
    if run.env.distributed:
        stop = any(devices.all_gather_object(stop))
    return stop


def _due(run, stage, every):
    """At the end of the stage, or every ``every`` steps (0: only there)."""
    return stage.at_end or bool(every and run.step % every == 0)


def _log_step(run, stage, outcome):
    elapsed = time.perf_counter() - stage.window_start
    metrics = {"train_loss": outcome.loss, "lr": outcome.lr, "stage_index": stage.index,
               "samples_per_s": run.samples_per_step * stage.window_steps / max(elapsed, 1e-9),
               "epoch": run.stream.epoch}
    if outcome.grad_norm is not None:
        metrics["grad_norm"] = float(outcome.grad_norm)
    run.tracker.log_metrics(metrics, step=run.step)
    stage.window_start, stage.window_steps = time.perf_counter(), 0


def _validate(run, stage) -> float:
    """The validation loss now, kept in the run's history and logged."""
    config = run.config
    val = evaluate_loss(run.model, run.val_dataset, batch_size=config.batch_size,
                        seed=config.seed, device=run.device,
                        stage=None if run.label else stage.name, label=run.label,
                        max_batches=config.eval_batches, precision=config.precision)
    run.val_history.append({"step": run.step, "stage": stage.name, "loss": val})
    run.tracker.log_metrics({"val_loss": val}, step=run.step)
    return val


def _write_checkpoint(run, stage):
    """Every process gives its RNG state; rank 0 writes the checkpoint, keeps the newest."""
    rng = devices.all_gather_object(devices.get_rng_state(run.mask_gen))
    if not run.is_main:
        return
    state = _checkpoint_state(run, stage.position, kind="train", wall=run.wall(),
                              optimizer=stage.optimizer, schedule=stage.schedule, rng=rng)
    run.last_checkpoint = _save(state, checkpoint_path(run.out_dir, run.step),
                                run.last_checkpoint)
    prune_checkpoints(run.out_dir, run.config.keep_checkpoints)


def _save_snapshot(run, position, *, wall):
    state = _checkpoint_state(run, position, kind="snapshot", wall=wall)
    return save_checkpoint(state, snapshot_path(run.out_dir, run.step))


def _save(state, path, previous):
    """:func:`save_checkpoint`; a failed write (a full disk) says what the run keeps."""
    try:
        return save_checkpoint(state, path)
    except BsymError as err:
        kept = (f"the previous checkpoint {previous} is intact: once fixed, `bsym pretrain ... "
                "--resume` continues from it" if previous is not None else
                "no checkpoint of this run was written yet")
        raise CheckpointError(f"{err} ({kept})") from None


def _checkpoint_state(run, position, *, kind, wall, optimizer=None, schedule=None, rng=None):
    """What a checkpoint of ``kind`` (train, snapshot, final) holds at ``position``:
    ``(stage, stage index, step within the stage)``."""
    stage, stage_index, stage_step = position
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "bsym_version": __version__,
        "kind": kind,
        "finished": kind == "final",
        "model": run.identity,
        "data": dict(run.data),
        "mode": run.mode, "label": run.label, "label_classes": run.classes,
        "config": run.config.to_dict(),
        "stages": [list(b) for b in run.budgets],
        "state_dict": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": schedule.state_dict() if schedule is not None else None,
        "stage": stage, "stage_index": int(stage_index), "stage_step": int(stage_step),
        "step": int(run.step), "consumed": int(run.stream.consumed),
        "world_size": run.env.world_size,
        "rng": rng,
        "history": run.history, "val_history": run.val_history, "wall_s": float(wall),
        "tracking": run.tracking,
        "extra": run.extra or {},
        "budget": run.consumption.to_dict(),
    }


# -- tracking -----------------------------------------------------------------------------
def _open_tracking(run, stack, run_name):
    """The MLflow run id (None when not tracked); a fresh run logs its parameters."""
    tracker, identity = run.tracker, run.identity
    if not tracker.enabled:
        return None
    # "model" and "protocol" as the evaluation runs tag them, so one filter finds both
    tags = {"model": identity["name"], "protocol": run.mode,
            "bsym.mode": run.mode, "bsym.model": identity["name"],
            "bsym.preset": str(identity["preset"]), "bsym.version": __version__,
            "bsym.data.manifest_hash": str(run.data.get("manifest_hash"))}
    if tracker.run_id is not None:  # log into the caller's run
        run_id = tracker.run_id
    else:
        previous = (run.resumed or {}).get("tracking") or {}
        reuse = previous.get("run_id") if previous.get("uri") == tracker.uri else None
        name = run_name or f"{run.mode}-{identity['name']}"
        run_id = stack.enter_context(tracker.start_run(name, tags=tags, run_id=reuse))
    tracker.set_tags(tags)
    if run.resumed is None:  # a resumed run logged its parameters when it started
        _log_params(run)
    return run_id


def _log_params(run):
    model, identity = run.model, run.identity
    counts = model.param_counts() if hasattr(model, "param_counts") else {
        "total": sum(p.numel() for p in model.parameters())}
    run.tracker.log_params({
        "train": run.config.to_dict(), "model": identity["config"],
        "model_name": identity["name"], "model_preset": identity["preset"],
        "n_params": counts,
        "data": {k: v for k, v in run.data.items() if k != "dataset"},
        "dataset": run.data.get("dataset") or {},
        "extra": {k: v for k, v in (run.extra or {}).items()
                  if not isinstance(v, (dict, list, tuple))}})


def _budget_metrics(consumption):
    out = {"budget_samples": consumption.samples, "budget_timepoints": consumption.timepoints}
    if consumption.flops is not None:
        out["budget_flops"] = consumption.flops
    return out


# -- the end of a run ---------------------------------------------------------------------
def _finish(run) -> TrainResult:
    """The run's result, logged; rank 0 writes ``final.pt`` and completes the run record."""
    run.stream.close()
    run.bar.close()
    wall = run.wall()
    throughput = (run.samples_per_step * run.session_steps / run.session_seconds
                  if run.session_seconds else float("nan"))
    result = TrainResult(final_path=None, history=run.history, val_history=run.val_history,
                         steps=run.step, samples_per_s=throughput,
                         wall_s=time.perf_counter() - run.started,
                         checkpoint=run.last_checkpoint, resumed_from=run.resumed_from,
                         run_id=run.run_id if run.tracker.enabled else None,
                         stopped_early=run.stopped, budget=run.consumption.to_dict())
    run.tracker.log_metrics({"final_train_loss": result.final_loss or float("nan"),
                             "train_samples_per_s": throughput, "train_wall_s": wall,
                             **_budget_metrics(run.consumption)}, step=run.step)
    if run.out_dir is not None:
        _write_final(run, result, wall)
    return result


def _write_final(run, result, wall):
    """``final.pt`` and the completed run record (rank 0); sets ``result.final_path``."""
    result.final_path = run.out_dir / FINAL_NAME
    if not run.is_main:
        return
    name, budget = run.budgets[-1]
    state = _checkpoint_state(run, (name, len(run.budgets) - 1, budget), kind="final",
                              wall=wall)
    result.final_path = _save(state, result.final_path, run.last_checkpoint)
    write_run_record(run.out_dir, _summary(run, result))
    run.tracker.log_artifact(run.out_dir / RUN_SUMMARY)


def _start_record(run):
    """The run record written when a run starts (completed by :func:`_summary` at its end)."""
    identity = run.identity
    return {"format": RUN_FORMAT, "status": "running", "bsym_version": __version__,
            "model": identity["name"], "preset": identity["preset"],
            "model_config": identity["config"], "mode": run.mode, "label": run.label,
            "train_config": run.config.to_dict(), "stages": run.budgets,
            "data": {k: v for k, v in run.data.items() if k != "dataset"},
            "world_size": run.env.world_size}


def _summary(run, result):
    identity, history, out_dir = run.identity, result.history, run.out_dir
    return {
        "format": RUN_FORMAT, "status": "finished",
        "bsym_version": __version__,
        "model": identity["name"], "preset": identity["preset"],
        "model_config": identity["config"],
        "mode": run.mode, "label": run.label,
        "train_config": run.config.to_dict(),
        "stages": run.budgets,
        "data": run.data,
        "world_size": run.env.world_size,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "first_loss": history["loss"][0] if history["loss"] else None,
        "stage_final_loss": _stage_final_loss(history),
        "val_history": result.val_history,
        "samples_per_s": result.samples_per_s,
        "wall_s": result.wall_s,
        "final": str(result.final_path.relative_to(out_dir)) if result.final_path else None,
        "checkpoints": [str(p.relative_to(out_dir)) for _, p in list_checkpoints(out_dir)],
        "extra": {k: v for k, v in (run.extra or {}).items() if k != "scaler"},
        "mlflow_run_id": result.run_id,
        "budget": result.budget,
        "snapshots": [str(p.relative_to(out_dir)) for _, p in list_snapshots(out_dir)],
        "resumed_from": str(result.resumed_from) if result.resumed_from else None,
    }


def _stage_final_loss(history) -> dict:
    """Stage -> the loss of its last step."""
    last = {}
    for stage, loss in zip(history["stage"], history["loss"]):
        last[stage] = loss
    return last


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
           "TrainConfig", "TrainResult", "check_run_dir", "describe_data", "evaluate_loss",
           "is_run_dir", "label_classes", "stage_budgets", "to_device", "train"]
