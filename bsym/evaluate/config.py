"""Defaults of the evaluation protocols, in one torch-free place.

The command line reads its defaults from here without importing torch, the workflow schema
gives the same values (``tests/test_defaults.py`` keeps them equal), and the protocols take
them when called from Python.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["FoldTraining"]


@dataclass
class FoldTraining:
    """Optimisation and early stopping of one fold: the one source of their defaults (those
    of ``bsym supervised``, ``bsym finetune``, ``bsym sweep`` and the workflow's ``training``
    blocks).

    Parameters
    ----------
    max_steps : int
        Optimizer steps at most.
    batch_size : int
    lr : float
        Peak learning rate (AdamW, warm-up then cosine, as in the engine).
    weight_decay : float
    warmup_steps : int
    eval_every : int
        Validation loss every this many steps.
    patience : int
        Stop after this many validations without improvement.
    device : str
    seed : int
    """

    max_steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    eval_every: int = 25
    patience: int = 4
    device: str = "auto"
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)
