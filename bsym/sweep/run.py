"""Run an Optuna sweep of any objective to a budget of finished trials, resumable and parallel."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from numbers import Integral, Real
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from bsym.sweep.errors import SweepError
from bsym.sweep.liveness import DEFAULT_HEARTBEAT_INTERVAL, claim, fail_stale_trials, heartbeat
from bsym.sweep.result import SweepResult, summarize_study
from bsym.sweep.runs import TRIAL_RUN_ATTR, _Close, fail_trial_run, log_best, open_study_run
from bsym.sweep.sampling import check_seed, make_pruner, make_sampler
from bsym.sweep.space import parse_space
from bsym.sweep.storage import check_study_attr, open_study, resolve_storage, sweep_lock
from bsym.track import NullTracker

logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_REASON_CHARS = 500


class Report:
    """The ``report`` callable an objective receives: ``report(value, step)``.

    Records an intermediate value of the trial (in Optuna, and as the MLflow metric
    ``intermediate_value`` at ``step``), then raises :class:`optuna.TrialPruned` if
    the pruner says the trial is not worth finishing. Let that exception propagate.

    Attributes
    ----------
    number : int
        The trial number (e.g. to name a per-trial output directory).
    study_name : str
    """

    def __init__(self, trial, tracker):
        self._trial = trial
        self._tracker = tracker
        self.number = trial.number
        self.study_name = trial.study.study_name

    def __call__(self, value, step):
        if isinstance(step, bool) or not isinstance(step, Integral) or step < 0:
            raise SweepError(f"trial {self.number}: report step must be a non-negative integer, "
                             f"got {step!r} ({type(step).__name__})")
        if isinstance(value, bool) or not isinstance(value, Real):
            raise SweepError(f"trial {self.number}: report value must be a number, got {value!r} "
                             f"({type(value).__name__})")
        value, step = float(value), int(step)
        try:
            self._trial.report(value, step)
        except UpdateFinishedTrialError as err:  # failed as stale by another worker: stop here
            raise optuna.TrialPruned(f"trial {self.number} was finished elsewhere: {err}") from err
        self._tracker.log_metrics({"intermediate_value": value}, step=step)
        if self._trial.should_prune():
            raise optuna.TrialPruned(f"trial {self.number} pruned at step {step} "
                                     f"(intermediate value {value:.6g})")


def _check_int(name, value, least):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
        raise SweepError(f"{name} must be an integer >= {least}, got {value!r} ({type(value).__name__})")
    return int(value)


def _check_catch(catch):
    catch = tuple(catch) if isinstance(catch, (list, tuple)) else (catch,)
    for kind in catch:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise SweepError(f"catch must hold exception classes, got {kind!r}")
    return catch


def _counts(study):
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


def _best_text(study):
    try:
        return f"{study.best_value:.6g}"
    except ValueError:
        return "-"


def _finish(study, trial, state, value, tracker, reason=None):
    """Tell Optuna how the trial ended and tag its MLflow run; return the final state."""
    if reason is not None:
        with contextlib.suppress(UpdateFinishedTrialError):
            trial.set_user_attr("bsym.fail_reason", reason[:_REASON_CHARS])
    frozen = study.tell(trial, value if state == TrialState.COMPLETE else None, state=state,
                        skip_if_finished=True)
    if frozen.state != state:  # another worker took it for stale and failed it meanwhile
        logger.warning("trial %d of study %r was marked %s by another worker before it ended %s",
                       trial.number, study.study_name, frozen.state.name, state.name)
    tags = {"bsym.state": frozen.state.name}
    if reason is not None:
        tags["bsym.fail_reason"] = reason[:_REASON_CHARS]
    tracker.set_tags(tags)
    if frozen.state == TrialState.COMPLETE:
        tracker.log_metrics({"value": frozen.value})
    return frozen.state


def _run_trial(objective, study, trial, params, *, tracker, tags, catch, heartbeat_interval):
    run_tags = {**tags, "bsym.kind": "trial", "bsym.study": study.study_name,
                "bsym.trial": trial.number, "bsym.state": "RUNNING"}
    with contextlib.suppress(_Close), tracker.start_run(f"trial-{trial.number}", tags=run_tags,
                                                        nested=True) as run_id:
        if tracker.enabled:
            trial.set_user_attr(TRIAL_RUN_ATTR, run_id)
        tracker.log_params(params)
        value, reason = None, None
        try:
            with heartbeat(trial, heartbeat_interval):
                value = objective(dict(params), Report(trial, tracker))
            if isinstance(value, bool) or not isinstance(value, Real):
                raise SweepError(f"trial {trial.number}: the objective must return a number, got "
                                 f"{value!r} ({type(value).__name__})")
            value = float(value)
            state = TrialState.COMPLETE
            if not math.isfinite(value):
                state, reason = TrialState.FAIL, f"objective returned {value}"
                logger.warning("trial %d of study %r: the objective returned %s; marking it FAIL",
                               trial.number, study.study_name, value)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except catch as err:
            state, reason = TrialState.FAIL, f"{type(err).__name__}: {err}"
            logger.warning("trial %d of study %r failed: %s", trial.number, study.study_name, reason)
        except BaseException as err:
            _finish(study, trial, TrialState.FAIL, None, tracker, f"{type(err).__name__}: {err}")
            raise
        state = _finish(study, trial, state, value, tracker, reason)
        if state == TrialState.FAIL:
            raise _Close  # ends the MLflow run FAILED
    return state


def run_sweep(objective, space, *, storage, study_name, n_trials, seed, direction="minimize",
              n_startup_trials=10, prune=True, pruner_startup_trials=5, pruner_warmup_steps=0,
              tracker=None, tags=None, progress=True, catch=(), max_failures=None,
              heartbeat_interval=DEFAULT_HEARTBEAT_INTERVAL, study_attrs=None) -> SweepResult:
    """Optimise ``objective`` over ``space`` until the study has ``n_trials`` finished trials.

    Run the same call in several processes (same storage and study name) to work
    in parallel; run it again after a crash to resume. Each worker starts a trial
    only while COMPLETE + PRUNED + live RUNNING trials are fewer than ``n_trials``,
    deciding under a file lock, so the workers together stop at the budget.

    Trials left RUNNING by a worker that died (killed, out of memory, node lost)
    are marked FAIL when a worker next looks: at once when that worker ran on
    this host (its process is gone), else after three missed heartbeats. FAIL
    trials do not count towards ``n_trials``, so a resumed sweep re-runs the lost
    work under new trial numbers, and finished trials are never run again.

    Parameters
    ----------
    objective : callable
        ``objective(params, report) -> float``: ``params`` maps parameter names to
        values; call ``report(value, step)`` with intermediate values to allow
        pruning (it raises :class:`optuna.TrialPruned`: let it propagate).
        ``report.number`` is the trial number. A non-finite return marks the trial
        FAIL; an exception marks it FAIL and stops the sweep unless it is in ``catch``.
    space : mapping or SearchSpace
        Search space spec, see :func:`~bsym.sweep.parse_space`.
    storage : str, Path, optuna storage or None
        An Optuna journal file (created if missing), an SQLAlchemy URL for Optuna's
        RDB storage, a storage object, or None for an in-memory study. The parallel
        budget lock needs a journal file.
    study_name : str
    n_trials : int
        Target number of finished (COMPLETE + PRUNED) trials in the study.
    seed : int
        Sampler seed; trial ``k`` is sampled with a seed derived from ``(seed, k)``.
        A study remembers its seed, search space and direction: resuming with
        others is an error.
    direction : {"minimize", "maximize"}
    n_startup_trials : int
        Random trials before TPE.
    prune : bool
        Use a :class:`optuna.pruners.MedianPruner`.
    pruner_startup_trials, pruner_warmup_steps : int
        The pruner's ``n_startup_trials`` and ``n_warmup_steps``.
    tracker : Tracker, optional
        MLflow tracker: one parent run per study (reused on resume and by parallel
        workers), one nested run per trial. Default: no tracking.
    tags : dict, optional
        Extra tags for the parent and trial runs.
    progress : bool
        Show a progress bar over trials.
    catch : exception class or tuple of them
        Exceptions from the objective that mark the trial FAIL and go on.
    max_failures : int, optional
        Stop with an error after this many FAIL trials in this call (default ``n_trials``).
    heartbeat_interval : float
        Seconds between heartbeats of a running trial.
    study_attrs : dict, optional
        What the study answers (e.g. ``{"split": <split hash>}``): recorded when the
        study is created and required unchanged on resume, like the space and seed.

    Returns
    -------
    SweepResult
        The whole study (every worker's trials): best value and parameters, counts.

    Raises
    ------
    SweepError
        Bad arguments, a study created with another space, seed or direction, a
        non-numeric objective value, or ``max_failures`` failed trials.
    """
    space, n_trials, seed, catch, max_failures = _checked_arguments(
        objective, space, n_trials, seed, catch, max_failures, heartbeat_interval)
    tracker = NullTracker() if tracker is None else tracker
    tags = {str(k): str(v) for k, v in (tags or {}).items()}
    sampler = make_sampler(seed, n_startup_trials=_check_int("n_startup_trials", n_startup_trials, 0))
    pruner = make_pruner(prune=prune, n_startup_trials=pruner_startup_trials,
                         n_warmup_steps=pruner_warmup_steps)
    where = storage if isinstance(storage, (str, Path)) else None
    storage, lock_path = resolve_storage(storage)
    lock = functools.partial(sweep_lock, lock_path)
    with lock():
        study = open_study(storage, study_name, direction=direction, sampler=sampler, pruner=pruner)
        _check_study(study, where, space=space, seed=seed, study_attrs=study_attrs)
        study.set_user_attr("bsym.n_trials", n_trials)

    from tqdm.auto import tqdm

    worker = _Worker(study, lock, space, tracker, tags, catch, heartbeat_interval)
    with contextlib.ExitStack() as stack:
        with lock():
            open_study_run(
                stack, tracker, study,
                tags={**tags, "bsym.kind": "study", "bsym.study": study_name, "bsym.direction": direction},
                params={"seed": seed, "direction": direction, "n_startup_trials": n_startup_trials,
                        "prune": prune, "pruner_startup_trials": pruner_startup_trials,
                        "pruner_warmup_steps": pruner_warmup_steps, "space": space.to_dict()})
        bar = stack.enter_context(tqdm(total=n_trials, desc=f"sweep {study_name}", unit="trial",
                                       disable=not progress))
        worker.run_to_budget(objective, n_trials, max_failures, bar)
        result = summarize_study(study, n_trials=n_trials)
        log_best(tracker, result)
    return result


def _checked_arguments(objective, space, n_trials, seed, catch, max_failures,
                       heartbeat_interval):
    """``(space, n_trials, seed, catch, max_failures)`` checked and normalised."""
    if not callable(objective):
        raise SweepError(f"objective must be callable as objective(params, report), got {objective!r}")
    space = parse_space(space)
    n_trials = _check_int("n_trials", n_trials, 1)
    seed = check_seed(seed)
    catch = _check_catch(catch)
    max_failures = n_trials if max_failures is None else _check_int("max_failures", max_failures, 1)
    if isinstance(heartbeat_interval, bool) or not isinstance(heartbeat_interval, Real) \
            or not heartbeat_interval > 0:
        raise SweepError("heartbeat_interval must be a positive number of seconds, got "
                         f"{heartbeat_interval!r}")
    return space, n_trials, seed, catch, max_failures


def _check_study(study, where, *, space, seed, study_attrs):
    """Refuse to resume a study made for another space, seed or ``study_attrs``."""
    check_study_attr(study, "bsym.space", space.to_dict(), "search space", where)
    check_study_attr(study, "bsym.seed", seed, "seed", where)
    for name, value in (study_attrs or {}).items():
        check_study_attr(study, f"bsym.{name}", value, name, where)


class _Worker:
    """This process's share of a sweep: it starts trials while the study's budget allows
    (deciding under the sweep lock) and runs them, never leaving one RUNNING."""

    def __init__(self, study, lock, space, tracker, tags, catch, heartbeat_interval):
        self.study, self.lock, self.space = study, lock, space
        self.tracker, self.tags, self.catch = tracker, tags, catch
        self.heartbeat_interval = heartbeat_interval

    def run_to_budget(self, objective, n_trials, max_failures, bar):
        """Run trials until the study has ``n_trials`` finished or live running ones."""
        failures = 0
        while (asked := self.next_trial(n_trials, bar)) is not None:
            trial, params = asked
            if self.run(objective, trial, params) != TrialState.FAIL:
                continue
            failures += 1
            if failures >= max_failures:
                raise SweepError(f"study {self.study.study_name!r}: {failures} trials failed in "
                                 f"this sweep (last: trial {trial.number}); see the warnings "
                                 "above, fix the objective and run the sweep again to resume")

    def next_trial(self, n_trials, bar):
        """``(trial, params)`` of a new trial claimed by this process, or None when the
        budget is reached; stale trials of dead workers are failed first."""
        with self.lock():
            study = self.study
            fail_stale_trials(study, on_fail=lambda t: fail_trial_run(self.tracker, t))
            finished, running = _counts(study)
            bar.update(min(finished, n_trials) - bar.n)
            bar.set_postfix(best=_best_text(study), refresh=True)
            if finished + running >= n_trials:
                return None
            trial = study.ask()
            try:
                claim(trial, self.heartbeat_interval)
                return trial, self.space.suggest(trial)
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise

    def run(self, objective, trial, params):
        """Run one trial; its final state."""
        try:
            return _run_trial(objective, self.study, trial, params, tracker=self.tracker,
                              tags=self.tags, catch=self.catch,
                              heartbeat_interval=float(self.heartbeat_interval))
        except BaseException:  # e.g. tracking failed before the objective ran: never leave it RUNNING
            with contextlib.suppress(Exception):
                self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise


def load_study(storage, study_name):
    """Open an existing study (e.g. to summarise it after parallel workers finished).

    Parameters
    ----------
    storage : str, Path or optuna storage
        As for :func:`run_sweep`.
    study_name : str

    Returns
    -------
    optuna.Study
    """
    storage, _ = resolve_storage(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as err:
        names = optuna.get_all_study_names(storage)
        raise SweepError(f"no study {study_name!r} in {storage!r}; studies there: {names}") from err
