"""Pretraining engine: the training loop, schedule, checkpoints, devices and the CLI.

Attributes are imported lazily, so ``bsym.train.cli`` (and ``bsym --help``) stay free
of the torch import.
"""

from importlib import import_module

_EXPORTS = {
    "TrainConfig": "bsym.train.engine",
    "TrainResult": "bsym.train.engine",
    "StepInfo": "bsym.train.engine",
    "train": "bsym.train.engine",
    "evaluate_loss": "bsym.train.engine",
    "stage_budgets": "bsym.train.engine",
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


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bsym.train' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
