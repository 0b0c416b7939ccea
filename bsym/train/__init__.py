"""Pretraining engine: the training loop, schedule, checkpoints, devices and the CLI.

:func:`pretrain` pretrains a registered model on a cohort store (what ``bsym pretrain``
runs); :func:`train` is the loop every model trains in, set by a :class:`TrainConfig`.

Attributes are imported lazily, so ``bsym.train.cli`` (and ``bsym --help``) stay free
of the torch import.
"""

from bsym._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "bsym.train.config",
    "TrainResult": "bsym.train.engine",
    "StepInfo": "bsym.train.engine",
    "train": "bsym.train.engine",
    "evaluate_loss": "bsym.train.engine",
    "stage_budgets": "bsym.train.engine",
    "pretrain": "bsym.train.pretraining",
    "WarmupCosine": "bsym.train.schedule",
    "warmup_cosine": "bsym.train.schedule",
    "CheckpointError": "bsym.train.checkpoint",
    "RunExistsError": "bsym.train.checkpoint",
    "load_checkpoint": "bsym.train.checkpoint",
    "load_trained": "bsym.train.checkpoint",
    "save_checkpoint": "bsym.train.checkpoint",
    "latest_checkpoint": "bsym.train.checkpoint",
    "select_device": "bsym.train.devices",
    "seed_everything": "bsym.train.devices",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
