"""Seeded sampling and pruning: TPE with one seed per trial, and the median pruner."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from optuna.pruners import MedianPruner, NopPruner
from optuna.samplers import BaseSampler, TPESampler

from bsym.sweep.errors import SweepError


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` in a sweep seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise SweepError(f"seed must be a non-negative integer, got {seed!r} ({type(seed).__name__})")
    return int(seed)


class SeededTPESampler(BaseSampler):
    """Optuna's ``TPESampler``, seeded afresh for each trial from ``(seed, trial number)``.

    Trial ``k`` is sampled by ``TPESampler(seed=trial_seed(seed, k), ...)`` over the
    study's history. A sequential sweep is therefore repeatable (same seed and space,
    same objective: same parameters), and, unlike one ``TPESampler(seed=seed)`` per
    process, a resumed sweep or a second worker started with the same seed does not
    replay the random start-up draws of trials that already ran.

    Parameters
    ----------
    seed : int
        Non-negative base seed.
    n_startup_trials : int
        Trials sampled at random before TPE takes over.
    **tpe_kwargs
        Passed to :class:`optuna.samplers.TPESampler` (e.g. ``multivariate``).
    """

    def __init__(self, seed, *, n_startup_trials=10, **tpe_kwargs):
        self.seed = check_seed(seed)
        self.n_startup_trials = int(n_startup_trials)
        self.tpe_kwargs = tpe_kwargs
        self._current = (None, None)

    def __repr__(self):
        return f"SeededTPESampler(seed={self.seed}, n_startup_trials={self.n_startup_trials})"

    def _for(self, study, trial) -> TPESampler:
        key = (study.study_name, trial.number)
        if self._current[0] != key:
            sampler = TPESampler(seed=trial_seed(self.seed, trial.number),
                                 n_startup_trials=self.n_startup_trials, **self.tpe_kwargs)
            self._current = (key, sampler)
        return self._current[1]

    def infer_relative_search_space(self, study, trial):
        return self._for(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(study, trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._for(study, trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._for(study, trial).after_trial(study, trial, state, values)


def make_sampler(seed, *, n_startup_trials=10) -> SeededTPESampler:
    """A :class:`SeededTPESampler` (TPE, random for the first ``n_startup_trials``)."""
    return SeededTPESampler(seed, n_startup_trials=n_startup_trials)


def make_pruner(*, prune=True, n_startup_trials=5, n_warmup_steps=0, interval_steps=1):
    """A :class:`optuna.pruners.MedianPruner`, or a ``NopPruner`` when ``prune`` is False.

    Parameters
    ----------
    prune : bool
        False disables pruning.
    n_startup_trials : int
        No trial is pruned until this many trials have finished.
    n_warmup_steps : int
        Steps a trial reports before it can be pruned.
    interval_steps : int
        Steps between pruning checks.
    """
    for key, value, least in (("pruner n_startup_trials", n_startup_trials, 0),
                              ("pruner n_warmup_steps", n_warmup_steps, 0),
                              ("pruner interval_steps", interval_steps, 1)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
            raise SweepError(f"{key} must be an integer >= {least}, got {value!r}")
    if not prune:
        return NopPruner()
    return MedianPruner(n_startup_trials=int(n_startup_trials), n_warmup_steps=int(n_warmup_steps),
                        interval_steps=int(interval_steps))
