"""Where a study lives: an Optuna journal file shared by worker processes.

The journal is an append-only log (``JournalStorage`` over ``JournalFileBackend``),
so a sweep killed at any point resumes from it, and workers in several processes
(or on several machines sharing a file system) optimise one study together.
Appends are serialised by Optuna's ``JournalFileOpenLock`` (an ``O_EXCL`` lock file,
``<journal>.lock``). Beside it, :func:`sweep_lock` takes an ``fcntl`` lock on
``<journal>.bsym-lock`` that bsym holds while it decides whether another trial is
needed and starts it, so parallel workers never overshoot the trial budget.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

from bsym.io import file_lock
from bsym.sweep.errors import SweepError

LOCK_SUFFIX = ".bsym-lock"
DIRECTIONS = ("minimize", "maximize")


def journal_storage(path) -> JournalStorage:
    """Open (creating it if needed) the Optuna journal file at ``path``.

    Parameters
    ----------
    path : str or Path
        The journal file, e.g. ``results/sweeps/probe.journal``; parent directories
        are created.

    Returns
    -------
    optuna.storages.JournalStorage
    """
    path = Path(path)
    if path.is_dir():
        raise SweepError(f"Optuna journal {path} is a directory; expected a file path such as "
                         f"{path / 'study.journal'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
    try:
        return JournalStorage(backend)
    except (ValueError, KeyError) as err:  # json.JSONDecodeError is a ValueError
        raise SweepError(f"Optuna journal {path} is unreadable ({err}); it is not a journal, or "
                         "it was damaged: move it aside to start a new study") from err


def resolve_storage(storage):
    """``(storage, lock path)`` for a journal path, an Optuna storage, or None (in memory)."""
    if storage is None:
        return InMemoryStorage(), None
    if isinstance(storage, BaseStorage):
        return storage, None
    if isinstance(storage, (str, Path)):
        if "://" in str(storage):  # an SQLAlchemy URL: sqlite:///..., postgresql://...
            return optuna.storages.RDBStorage(str(storage)), None
        return journal_storage(storage), Path(f"{storage}{LOCK_SUFFIX}")
    raise SweepError(f"storage must be a journal file path, an optuna storage or None, got "
                     f"{storage!r} ({type(storage).__name__})")


def open_study(storage, study_name, *, direction="minimize", sampler=None, pruner=None) -> optuna.Study:
    """Create the study ``study_name``, or load it if it exists (``load_if_exists=True``).

    Parameters
    ----------
    storage : optuna storage
        E.g. from :func:`journal_storage`.
    study_name : str
    direction : {"minimize", "maximize"}
        Must match the direction of an existing study.
    sampler, pruner : optional
        Optuna sampler and pruner for this process.

    Returns
    -------
    optuna.Study
    """
    if direction not in DIRECTIONS:
        raise SweepError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    if not isinstance(study_name, str) or not study_name:
        raise SweepError(f"study_name must be a non-empty string, got {study_name!r}")
    study = optuna.create_study(storage=storage, study_name=study_name, direction=direction,
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    found = study.direction.name.lower()
    if found != direction:
        raise SweepError(f"study {study_name!r} exists with direction {found!r}, got "
                         f"direction={direction!r}; use the same direction or a new study name")
    return study


@contextlib.contextmanager
def sweep_lock(path):
    """An exclusive lock across processes on ``path`` (a no-op when ``path`` is None).

    ``fcntl.flock`` locks die with their process, so a killed worker never leaves
    the lock held. Where ``fcntl`` is missing (Windows) this is a no-op, and
    parallel workers may run a trial or two beyond the budget.
    """
    if path is None:
        yield
        return
    with file_lock(path):
        yield


def check_study_attr(study, key, value, what):
    """Record ``value`` under ``key`` in a new study; in an existing one, require it unchanged."""
    value = json.loads(json.dumps(value))
    attrs = study.user_attrs
    if key not in attrs:
        study.set_user_attr(key, value)
    elif attrs[key] != value:
        raise SweepError(f"study {study.study_name!r} was created with {what} {attrs[key]!r}, got "
                         f"{value!r}; resume with the same {what}, or use a new study name")
