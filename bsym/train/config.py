"""The settings of a training run: the one source of the pretraining loop's defaults.

Importing this module does not import torch, so the command line (``bsym pretrain``) reads
its defaults from :class:`TrainConfig` and ``bsym --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    The defaults are those ``bsym pretrain`` and the workflow's ``pretrain`` block give
    (the command line reads them from here).

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
        ``snapshots/step-N.pt`` (0, the default: the initial weights, the
        random-initialisation control; ``()`` keeps none); the final weights are
        ``final.pt``.
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
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    snapshots: tuple = (0.0,)
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
        self._check_counts()
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, "
                             f"got {self.precision!r}")
        if self.stage_steps is not None:
            self.stage_steps = {str(k): int(v) for k, v in dict(self.stage_steps).items()}
            if any(v < 0 for v in self.stage_steps.values()):
                raise ValueError(f"TrainConfig.stage_steps must be >= 0, got {self.stage_steps}")

    def _check_counts(self):
        for name in ("steps", "batch_size", "accumulate", "log_every", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every", "eval_every", "num_workers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")

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
