"""What a sweep found: best trial, counts per state, every trial; saved as JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from optuna.trial import TrialState

from bsym.sweep.runs import PARENT_ATTR


def _finite(value):
    return value if value is None or math.isfinite(value) else None


@dataclass
class SweepResult:
    """The state of a study after a sweep (all workers' trials, not only this process's).

    Attributes
    ----------
    study_name, direction : str
    n_trials : int or None
        The budget of finished (COMPLETE + PRUNED) trials the sweep was run for.
    best_value, best_params, best_trial :
        Value, parameters and number of the best COMPLETE trial (None if there is none).
    n_complete, n_pruned, n_failed, n_running : int
        Trials per state.
    parent_run_id : str or None
        The study's MLflow parent run.
    trials : list of dict
        ``number``, ``state``, ``value``, ``params``, ``duration_s`` for every trial.
    """

    study_name: str
    direction: str
    n_trials: int | None
    best_value: float | None
    best_params: dict | None
    best_trial: int | None
    n_complete: int
    n_pruned: int
    n_failed: int
    n_running: int
    parent_run_id: str | None = None
    trials: list = field(default_factory=list)

    @property
    def n_finished(self) -> int:
        return self.n_complete + self.n_pruned

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_study(study, *, n_trials=None) -> SweepResult:
    """Build a :class:`SweepResult` from an Optuna study.

    Parameters
    ----------
    study : optuna.Study
    n_trials : int, optional
        The budget to record (default: the one stored by :func:`~bsym.sweep.run_sweep`).
    """
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    try:
        best = study.best_trial
    except ValueError:  # no COMPLETE trial yet
        best = None
    parent = study.user_attrs.get(PARENT_ATTR)
    rows = [{"number": t.number, "state": t.state.name,
             "value": _finite(t.value) if t.values is not None else None, "params": dict(t.params),
             "duration_s": t.duration.total_seconds() if t.duration is not None else None}
            for t in trials]
    return SweepResult(
        study_name=study.study_name, direction=study.direction.name.lower(),
        n_trials=n_trials if n_trials is not None else study.user_attrs.get("bsym.n_trials"),
        best_value=None if best is None else best.value,
        best_params=None if best is None else dict(best.params),
        best_trial=None if best is None else best.number,
        n_complete=counts[TrialState.COMPLETE], n_pruned=counts[TrialState.PRUNED],
        n_failed=counts[TrialState.FAIL], n_running=counts[TrialState.RUNNING],
        parent_run_id=parent.get("run_id") if isinstance(parent, dict) else None,
        trials=rows)


FORMAT = "bsym-sweep"
#: Keys of a sweep document written before it carried its format.
_LEGACY_KEYS = {"model", "task", "split_hash", "storage", "folds"}


def summary_is_ours(path) -> bool:
    """Whether ``path`` is a sweep result bsym wrote (``format`` ``bsym-sweep``, or an
    older one with the keys of :func:`~bsym.sweep.cli.sweep_folds`'s document)."""
    from bsym.outputs import json_document

    payload = json_document(path)
    if payload is None:
        return False
    return payload.get("format") == FORMAT or (
        "format" not in payload and _LEGACY_KEYS <= set(payload))


def write_summary(result, path) -> Path:
    """Write ``result`` as JSON to ``path`` atomically, marked ``"format": "bsym-sweep"``.

    Parameters
    ----------
    result : SweepResult or dict
    path : str or Path

    Returns
    -------
    Path
    """
    from bsym.io import atomic_write_json

    payload = result.to_dict() if isinstance(result, SweepResult) else dict(result)
    return atomic_write_json(path, {"format": FORMAT, **payload}, what="the sweep result",
                             indent=2, sort_keys=False)
