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
    from bsym.io import check_writable, disk_error

    path = Path(path)
    if path.is_dir():
        raise SweepError(f"Optuna journal {path} is a directory; expected a file path such as "
                         f"{path / 'study.journal'}. Fix: pass a file path as --storage")
    check_writable(path, fix="choose a --storage path in a folder you can write to")
    check_journal(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        return JournalStorage(backend)
    except (ValueError, KeyError) as err:  # json.JSONDecodeError is a ValueError
        raise SweepError(f"Optuna journal {path} is unreadable ({err}): it was damaged. Fix: "
                         "move it aside to start new studies (their finished trials are "
                         "lost), or restore it from a backup") from err
    except OSError as err:
        raise disk_error(err, path, what="the Optuna journal") from err


def check_journal(path) -> None:
    """Raise :class:`SweepError` unless ``path`` is absent, empty or an Optuna journal.

    Optuna appends to any file it is given; bsym refuses a file that does not begin with
    a journal record, so it never writes into a user's file.
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise SweepError(f"{path}: not a regular file; bsym writes Optuna journals only to "
                         "files it made. Fix: choose another --storage path")
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1 << 20)
    except OSError as err:
        raise SweepError(f"{path}: cannot read the Optuna journal ({err.strerror or err}). "
                         "Fix: choose a --storage path you can read and write") from None
    try:
        record = json.loads(first)
    except (UnicodeDecodeError, ValueError):
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise SweepError(f"{path}: this file is not an Optuna journal (its first line is not a "
                         "journal record); bsym never writes into files it did not make. Fix: "
                         "choose another --storage path (a new journal is created there)")


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


def check_existing_study(storage, study_name, attrs, where=None):
    """Before any work, read-only: raise :class:`SweepError` when ``study_name`` exists in
    ``storage`` with other values of ``attrs`` (``{key: (value, what)}``) than asked."""
    if study_name not in optuna.get_all_study_names(storage):
        return
    study = optuna.load_study(study_name=study_name, storage=storage)
    found = study.user_attrs
    for key, (value, what) in attrs.items():
        value = json.loads(json.dumps(value))
        if key in found and found[key] != value:
            place = f"{where}: " if where else ""
            raise SweepError(f"{place}study {study_name!r} was created with {what} "
                             f"{found[key]!r}, got {value!r}; its trials answer another "
                             f"question. Fix: resume with the same {what}, or use a new study "
                             "name (another --storage file)")


def check_study_attr(study, key, value, what, where=None):
    """Record ``value`` under ``key`` in a new study; in an existing one, require it unchanged.

    ``where`` names the storage in the message."""
    value = json.loads(json.dumps(value))
    attrs = study.user_attrs
    if key not in attrs:
        study.set_user_attr(key, value)
    elif attrs[key] != value:
        place = f"{where}: " if where else ""
        raise SweepError(f"{place}study {study.study_name!r} was created with {what} "
                         f"{attrs[key]!r}, got {value!r}; its trials answer another question. "
                         f"Fix: resume with the same {what}, or use a new study name "
                         "(another --storage file)")
