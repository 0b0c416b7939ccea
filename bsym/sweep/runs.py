"""MLflow runs of a sweep: one parent run per study, one nested run per trial.

The parent run's id is kept in the study's user attributes (``bsym.mlflow_parent``,
with the tracking URI and experiment), so a resumed sweep and every parallel
worker log their trials under the same parent. Workers create the parent while
holding the sweep lock, so two workers starting together make only one.
"""

from __future__ import annotations

import contextlib
import logging
import math

PARENT_ATTR = "bsym.mlflow_parent"
TRIAL_RUN_ATTR = "bsym.mlflow_run_id"

logger = logging.getLogger(__name__)


class _Close(Exception):
    """Raised inside a re-opened run to end it FAILED (Tracker's public API has no end_run)."""


def parent_run_id(study, tracker):
    """The study's parent run id in ``tracker``'s store and experiment, or None."""
    record = study.user_attrs.get(PARENT_ATTR)
    if (tracker.enabled and isinstance(record, dict) and record.get("uri") == tracker.uri
            and record.get("experiment") == tracker.experiment):
        return record.get("run_id")
    return None


def open_study_run(stack, tracker, study, *, tags=None, params=None):
    """Open (or re-open) the study's parent run on ``tracker`` for the life of ``stack``.

    Call while holding the sweep lock. The run is nested under the tracker's active
    run, if there is one.

    Parameters
    ----------
    stack : contextlib.ExitStack
        Closes the run (FINISHED, or FAILED on an error) when it unwinds.
    tracker : Tracker or NullTracker
    study : optuna.Study
    tags : dict, optional
        Tags set on the run.
    params : dict, optional
        Parameters logged once, when the run is created.

    Returns
    -------
    str or None
        The run id (None for a ``NullTracker``).
    """
    if not tracker.enabled:
        return None
    nested = tracker.run_id is not None
    run_id = parent_run_id(study, tracker)
    if run_id is not None:
        try:
            return stack.enter_context(tracker.start_run(tags=tags, nested=nested, run_id=run_id))
        except Exception as err:  # the run was removed from the store: start a new one
            if getattr(err, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            logger.warning("MLflow run %s of study %r is gone from %s; starting a new parent run",
                           run_id, study.study_name, tracker.uri)
    run_id = stack.enter_context(tracker.start_run(f"study-{study.study_name}", tags=tags, nested=nested))
    if params:
        tracker.log_params(params)
    study.set_user_attr(PARENT_ATTR, {"uri": tracker.uri, "experiment": tracker.experiment,
                                      "run_id": run_id})
    return run_id


def fail_trial_run(tracker, trial) -> None:
    """End the MLflow run of a stale trial (a FrozenTrial) as FAILED, tagged FAIL."""
    run_id = trial.user_attrs.get(TRIAL_RUN_ATTR)
    if not tracker.enabled or run_id is None:
        return
    try:
        with contextlib.suppress(_Close), tracker.start_run(
                tags={"bsym.state": "FAIL", "bsym.fail_reason": "worker gone"},
                nested=tracker.run_id is not None, run_id=run_id):
            raise _Close
    except Exception as err:  # tracking must not stop the sweep
        logger.warning("could not close MLflow run %s of trial %d: %s", run_id, trial.number, err)


def log_best(tracker, result) -> None:
    """Log a :class:`~bsym.sweep.result.SweepResult` on the active (parent) run.

    Counts and the best value are metrics at step = number of finished trials; the
    best parameters are tags ``best.<name>`` (MLflow parameters cannot change once
    logged, and a resumed sweep may find a better trial).
    """
    if not tracker.enabled or tracker.run_id is None:
        return
    step = result.n_complete + result.n_pruned
    metrics = {"n_complete": result.n_complete, "n_pruned": result.n_pruned, "n_failed": result.n_failed}
    if result.best_value is not None and math.isfinite(result.best_value):
        metrics["best_value"] = result.best_value
    tracker.log_metrics(metrics, step=step)
    if result.best_trial is not None:
        tags = {f"best.{k}": v for k, v in result.best_params.items()}
        tracker.set_tags({**tags, "best.trial": result.best_trial})
