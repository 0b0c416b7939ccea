"""A small MLflow wrapper: one experiment, runs as context managers, batched logging.

Uses :class:`mlflow.MlflowClient` directly (no global "active run" state), so
several trackers, threads or processes can log side by side. The default store is
SQLite at ``results/mlflow.db`` (MLflow 3 refuses the old file store); browse it
with ``mlflow ui --backend-store-uri sqlite:///results/mlflow.db``.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path

from bsym.io import file_lock

DEFAULT_URI = "sqlite:///results/mlflow.db"
DEFAULT_EXPERIMENT = "bsym"

_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_MAX_PARAM_LENGTH = 6000
_LOCKED = ("database is locked", "database table is locked")


def flatten(params, prefix="", sep=".") -> dict:
    """Flatten nested mappings into ``{"a.b.c": value}`` with string values.

    Parameters
    ----------
    params : mapping
        Possibly nested parameters (dicts of dicts, lists, scalars).
    prefix : str
        Prepended to every key.
    sep : str
        Separator between nested keys.

    Returns
    -------
    dict
        Flat mapping of key -> string (truncated to MLflow's 6000-character limit).
    """
    flat = {}
    for key, value in dict(params).items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name, sep))
        else:
            text = str(list(value) if isinstance(value, tuple) else value)
            flat[name] = text[:_MAX_PARAM_LENGTH]
    return flat


def _sqlite_path(uri):
    """The database file of a ``sqlite:///`` URI, or None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_tracking_db(db, uri):
    """Raise :class:`~bsym.errors.BsymError` unless ``db`` (the file of a ``sqlite:///``
    tracking URI) is absent, empty or an SQLite database holding MLflow's tables: MLflow
    would otherwise fail deep inside SQLAlchemy, or add its tables to a user's database."""
    import sqlite3

    from bsym.errors import BsymError
    from bsym.io import check_writable

    db = Path(db)
    fix = ("pass a --tracking-uri whose file is an MLflow store or does not exist yet (e.g. "
           "the default sqlite:///results/mlflow.db), or --no-tracking")
    check_writable(db, fix=fix)
    if not db.exists() or (db.is_file() and db.stat().st_size == 0):
        return
    if not db.is_file():
        raise BsymError(f"{db}: the tracking URI {uri} names a folder, not an SQLite file. "
                        f"Fix: {fix}")
    with open(db, "rb") as handle:
        if handle.read(16) != b"SQLite format 3\x00":
            raise BsymError(f"{db}: the tracking URI {uri} names a file that is not an SQLite "
                            f"database; bsym never writes into it. Fix: {fix}")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as err:
        raise BsymError(f"{db}: the tracking database cannot be read ({err}). Fix: {fix}") \
            from None
    if tables and "experiments" not in tables:
        raise BsymError(f"{db}: this SQLite database holds tables that are not MLflow's "
                        f"({', '.join(sorted(tables)[:4])}); bsym never adds tables to it. "
                        f"Fix: {fix}")


def _retry(fn, *args, tries=10, **kwargs):
    """Call ``fn``, retrying while SQLite reports a lock held by another writer."""
    for attempt in range(tries):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException wraps sqlalchemy's OperationalError
            if attempt == tries - 1 or not any(s in str(err) for s in _LOCKED):
                raise
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


class Tracker:
    """Log runs, parameters, metrics and artifacts to one MLflow experiment.

    Parameters
    ----------
    uri : str
        Tracking URI: ``sqlite:///path.db`` (default ``sqlite:///results/mlflow.db``,
        relative to the working directory) or a tracking server URL.
    experiment : str
        Experiment name; created on first use. Processes creating the same
        experiment at the same time all end up with the one experiment.
    artifact_root : str, optional
        Artifact location for a new experiment. Default for a SQLite store:
        ``mlartifacts/`` beside the database file.

    Examples
    --------
    >>> tracker = Tracker("sqlite:///results/mlflow.db", "bsym")    # doctest: +SKIP
    >>> with tracker.start_run("pretrain", tags={"model": "toy"}):  # doctest: +SKIP
    ...     tracker.log_params({"lr": 1e-3, "model": {"width": 64}})
    ...     tracker.log_metrics({"loss": 0.5}, step=1)
    """

    enabled = True

    def __init__(self, uri=DEFAULT_URI, experiment=DEFAULT_EXPERIMENT, *, artifact_root=None):
        self.uri = str(uri)
        self.experiment = str(experiment)
        self.artifact_root = artifact_root
        self._client = None
        self._experiment_id = None
        self._runs = []

    def __repr__(self):
        return f"Tracker(uri={self.uri!r}, experiment={self.experiment!r})"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    # -- store and experiment ------------------------------------------------------------
    def check_store(self):
        """Raise :class:`~bsym.errors.BsymError` now, before any work, when the tracking
        store is a file that is not an MLflow store or cannot be written (see
        :func:`check_tracking_db`); returns the tracker."""
        db = _sqlite_path(self.uri)
        if db is not None:
            check_tracking_db(db, self.uri)
        return self

    @property
    def client(self):
        """The :class:`mlflow.MlflowClient` (created, with the experiment, on first use)."""
        if self._client is None:
            self._connect()
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._connect()
        return self._experiment_id

    def _connect(self):
        from mlflow import MlflowClient

        db = _sqlite_path(self.uri)
        if db is not None:
            check_tracking_db(db, self.uri)
            db.parent.mkdir(parents=True, exist_ok=True)
            lock = file_lock(db.with_name(db.name + ".lock"))
        else:
            lock = contextlib.nullcontext()
        with lock:  # the first process creates the tables; the others wait for it
            client = MlflowClient(tracking_uri=self.uri)
            self._experiment_id = _retry(self._get_or_create, client, db)
        self._client = client

    def _get_or_create(self, client, db):
        from mlflow.exceptions import MlflowException

        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise RuntimeError(f"MLflow experiment {self.experiment!r} in {self.uri} is "
                                   "deleted; restore it (mlflow experiments restore) or use "
                                   "another experiment name")
            return found.experiment_id
        root = self.artifact_root
        if root is None and db is not None:
            root = (db.resolve().parent / "mlartifacts").as_uri()
        try:
            return client.create_experiment(self.experiment, artifact_location=root)
        except MlflowException as err:  # created by a parallel process meanwhile
            if getattr(err, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(self.experiment).experiment_id

    # -- runs ----------------------------------------------------------------------------
    @property
    def run_id(self):
        """Id of the innermost active run, or None."""
        return self._runs[-1] if self._runs else None

    @contextlib.contextmanager
    def start_run(self, name=None, tags=None, *, nested=False, run_id=None):
        """Open a run for the ``with`` block and close it with its final status.

        Parameters
        ----------
        name : str, optional
            Run name shown in the MLflow UI.
        tags : dict, optional
            Tags set on the run.
        nested : bool
            Open the run as a child of the active run (required when one is active).
        run_id : str, optional
            Re-open this existing run instead of creating one (e.g. a resumed training).

        Yields
        ------
        str
            The run id. The run ends FINISHED, FAILED on an exception, or KILLED on
            KeyboardInterrupt.
        """
        if self._runs and not nested:
            raise RuntimeError(f"run {self._runs[-1]} is active; pass nested=True to open a "
                               "child run, or close it first")
        tags = {str(k): str(v) for k, v in (tags or {}).items()}
        if nested and self._runs:
            tags["mlflow.parentRunId"] = self._runs[-1]
        client = self.client
        if run_id is not None:
            _retry(client.update_run, run_id, status="RUNNING")
            if tags:
                self._log_batch(run_id, tags=tags)
        else:
            run = _retry(client.create_run, self.experiment_id, tags=tags, run_name=name)
            run_id = run.info.run_id
        self._runs.append(run_id)
        status = "FINISHED"
        try:
            yield run_id
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            self._runs.pop()
            _retry(client.set_terminated, run_id, status=status)

    def _active(self, run_id=None):
        run_id = run_id or self.run_id
        if run_id is None:
            raise RuntimeError("no active MLflow run: log inside `with tracker.start_run(...)`")
        return run_id

    def _log_batch(self, run_id, *, params=None, metrics=None, tags=None):
        from mlflow.entities import Param, RunTag

        if params:
            items = [Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), _PARAMS_PER_BATCH):
                _retry(self.client.log_batch, run_id, params=items[i:i + _PARAMS_PER_BATCH])
        if tags:
            items = [RunTag(k, str(v)) for k, v in tags.items()]
            for i in range(0, len(items), _PARAMS_PER_BATCH):
                _retry(self.client.log_batch, run_id, tags=items[i:i + _PARAMS_PER_BATCH])
        if metrics:
            for i in range(0, len(metrics), _METRICS_PER_BATCH):
                _retry(self.client.log_batch, run_id, metrics=metrics[i:i + _METRICS_PER_BATCH])

    # -- logging -------------------------------------------------------------------------
    def log_params(self, params, *, run_id=None):
        """Log (nested) parameters, flattened to ``a.b`` keys with string values."""
        self._log_batch(self._active(run_id), params=flatten(params))

    def set_tags(self, tags, *, run_id=None):
        """Set tags (values converted to strings)."""
        self._log_batch(self._active(run_id), tags=dict(tags))

    def log_metrics(self, metrics, step=None, *, run_id=None):
        """Log scalar metrics at ``step`` (non-finite values are logged as they are)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, int(step or 0)) for k, v in metrics.items()]
        self._log_batch(self._active(run_id), metrics=items)

    def log_artifact(self, path, artifact_path=None, *, run_id=None):
        """Copy a local file or directory into the run's artifacts."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"artifact {path} does not exist")
        _retry(self.client.log_artifact, self._active(run_id), path, artifact_path)

    def log_table(self, frame, artifact_file, *, run_id=None):
        """Log a DataFrame as the JSON table ``artifact_file`` (``.json``), shown as a table
        in the MLflow UI (:meth:`mlflow.MlflowClient.log_table`; a second call with the
        same file appends rows)."""
        import pandas as pd

        text = [c for c in frame.columns if isinstance(frame[c].dtype, pd.StringDtype)]
        frame = frame.astype(dict.fromkeys(text, object))  # what MLflow's table check expects
        _retry(self.client.log_table, self._active(run_id), frame, artifact_file)

    def search_runs(self, filter_string="", *, max_results=1000):
        """Runs of the experiment matching an MLflow filter, e.g.
        ``"tags.bsym.kind = 'leaderboard'"`` (deleted runs left out)."""
        return _retry(self.client.search_runs, [self.experiment_id], filter_string,
                      max_results=max_results)

    def delete_run(self, run_id):
        """Mark a run deleted: the UI and searches no longer list it (``mlflow gc``
        removes deleted runs and their artifacts for good)."""
        _retry(self.client.delete_run, run_id)


class NullTracker:
    """The :class:`Tracker` interface doing nothing: for runs without tracking."""

    enabled = False
    uri = None
    experiment = None

    def __init__(self, *args, **kwargs):
        self._runs = []

    def __repr__(self):
        return "NullTracker()"

    @property
    def run_id(self):
        return self._runs[-1] if self._runs else None

    @contextlib.contextmanager
    def start_run(self, name=None, tags=None, *, nested=False, run_id=None):
        self._runs.append(run_id or "null")
        try:
            yield self._runs[-1]
        finally:
            self._runs.pop()

    def log_params(self, params, *, run_id=None):
        pass

    def set_tags(self, tags, *, run_id=None):
        pass

    def log_metrics(self, metrics, step=None, *, run_id=None):
        pass

    def log_artifact(self, path, artifact_path=None, *, run_id=None):
        pass

    def log_table(self, frame, artifact_file, *, run_id=None):
        pass

    def search_runs(self, filter_string="", *, max_results=1000):
        return []

    def delete_run(self, run_id):
        pass
