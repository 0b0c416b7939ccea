"""The long result table: one row per model x view x dataset x task x protocol x seed x fold.

Rows are appended per fold, atomically (the table is rewritten to a temporary file under
an exclusive lock and renamed into place), so parallel workflow jobs can share one file.
The Parquet metadata marks the file as a bsym result table (``bsym.artifact``); rows are
never appended to (nor written over) any other file.
A fold already in the table is not recomputed unless forced, or unless its row was made
from other data, another split or another configuration (then it is stale and replaced).
Every summary, leaderboard and statistical test reads this table.

Columns
-------
model, view, dataset, task, protocol, control, checkpoint, seed, fold, replicate
    The key. ``view`` names the embedding of a multi-view model (``"default"``
    otherwise). ``control`` is ``"none"`` for a real score, else the control it is
    (:data:`CONTROLS`). ``checkpoint`` is ``"final"`` for a finished (or untrained)
    model, ``"step<N>"`` for a score of an earlier pretraining checkpoint (the
    score-against-compute curve). ``replicate`` numbers the permutations of a
    permutation control (0 otherwise). ``repeat`` (not a key) is the split repeat.
metric columns
    ``accuracy``, ``f1``, ``balanced_accuracy``, ``auroc`` (classification);
    ``mse`` (on the z-scored target), ``pearson_r``, ``mae``, ``r2`` (regression);
    other protocols add their own (``ari_kmeans``, ``knn_accuracy``, ...).
n_train, n_test, runtime_s
git_sha, config_hash, manifest_hash, split_hash
    Provenance: code, configuration, data and split of the row.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from bsym import __version__
from bsym.evaluate import EvaluationError
from bsym.io import check_writable, disk_error, file_lock, json_sha256
from bsym.outputs import write_parquet

KEY_COLUMNS = ("model", "view", "dataset", "task", "protocol", "control", "checkpoint", "seed",
               "fold", "replicate")
#: Values of key columns that older rows (and callers) may leave out.
KEY_DEFAULTS = {"control": "none", "checkpoint": "final", "replicate": 0}
#: What a ``control`` row is (``none``: the real score).
CONTROLS = ("none", "random_init", "shuffled_labels", "position_only", "permuted_networks")
#: Provenance that must match for a stored row to count as done.
PROVENANCE_COLUMNS = ("config_hash", "manifest_hash", "split_hash")
PROTOCOLS = ("linear_probe", "finetune", "supervised", "network_identification")
#: The ``bsym.artifact`` mark of a result table's Parquet metadata.
RESULT_KIND = "result-table"
#: Columns every row bsym writes has: a table without the mark (written before tables
#: carried it) is a result table when it has them.
LEGACY_COLUMNS = ("model", "dataset", "task", "protocol", "fold", "git_sha")


def config_hash(config) -> str:
    """SHA-256 of the canonical JSON of a (nested, plain) configuration."""
    return json_sha256(config)


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    """``git rev-parse HEAD`` of the bsym source tree, or ``"unknown"``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if len(sha) == 40 else "unknown"


def provenance() -> dict:
    """Columns every row carries besides its key and metrics."""
    return {"git_sha": git_sha(), "bsym_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _key(row) -> tuple:
    return tuple(str(row.get(k, KEY_DEFAULTS.get(k))) for k in KEY_COLUMNS)


def check_keys(rows) -> None:
    """Raise :class:`EvaluationError` unless every row names each of :data:`KEY_COLUMNS`
    (those of :data:`KEY_DEFAULTS` may be left out)."""
    for row in rows:
        missing = [k for k in KEY_COLUMNS if k not in row and k not in KEY_DEFAULTS]
        if missing:
            raise EvaluationError(f"result row lacks key column(s) {missing}; expected "
                                  f"{list(KEY_COLUMNS)}")


def _is_current(stored, key) -> bool:
    """Whether a stored row was made from the data, split and configuration ``key`` names."""
    return all(str(stored.get(c)) == str(key.get(c)) for c in PROVENANCE_COLUMNS if c in key)


class StoredRows:
    """Result rows indexed by key, for loops that check many keys against one read.

    Parameters
    ----------
    rows : iterable of dict
        Rows of a result table (a later row replaces an earlier one with its key).
    """

    def __init__(self, rows=()):
        self._rows = {}
        self.add(rows)

    def add(self, rows) -> None:
        """Index ``rows`` too (e.g. those just appended to the table)."""
        self._rows.update((_key(r), r) for r in rows)

    def current(self, key) -> dict | None:
        """The row with ``key``'s key columns and provenance, or None."""
        found = self._rows.get(_key(key))
        return found if found is not None and _is_current(found, key) else None


def with_key_defaults(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the key columns older rows lack filled with :data:`KEY_DEFAULTS`."""
    for column, default in KEY_DEFAULTS.items():
        if column not in table.columns:
            table[column] = default
        else:
            table[column] = table[column].where(table[column].notna(), default)
    return table


def primary_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The real scores: rows that are no control and come from a finished model (what
    leaderboards, tests and ranks compare)."""
    table = with_key_defaults(table.copy())
    keep = (table["control"].astype(str) == "none") & (table["checkpoint"].astype(str) == "final")
    return table[keep].reset_index(drop=True)


class ResultTable:
    """The long result table in one Parquet file.

    Parameters
    ----------
    path : str or Path
        Parquet file (created on the first append).

    Examples
    --------
    >>> table = ResultTable("results/results.parquet")          # doctest: +SKIP
    >>> table.is_done({"model": "toy", "view": "default", ...})  # doctest: +SKIP
    """

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self):
        return f"ResultTable({str(self.path)!r})"

    def read(self) -> pd.DataFrame:
        """All rows (an empty frame with the key columns when the file does not exist).

        Raises
        ------
        EvaluationError
            The file is not a result table bsym wrote (another file, another bsym table,
            or a damaged one).
        """
        if not (self.path.exists() or self.path.is_symlink()):
            return pd.DataFrame(columns=list(KEY_COLUMNS))
        self._check_ours()
        try:
            return with_key_defaults(pd.read_parquet(self.path))
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types
            raise self._damaged(f"cannot read it ({type(err).__name__}: {err})") from None

    def _damaged(self, cause):
        return EvaluationError(
            f"{self.path}: {cause}; expected a result table bsym wrote. Fix: if bsym wrote it, "
            "it is damaged: move it away (or restore it from a backup) and rerun, which "
            "recomputes its folds; otherwise choose another --results path (a new one is "
            "created)")

    def _check_ours(self):
        """Raise :class:`EvaluationError` unless the file is a bsym result table."""
        from bsym.outputs import parquet_columns_and_kind

        if self.path.is_symlink() or not self.path.is_file():
            raise EvaluationError(
                f"{self.path}: this is a {'symbolic link' if self.path.is_symlink() else 'folder'}"
                ", not a result table bsym wrote; bsym appends only to its own result tables. "
                "Fix: choose another --results path (a Parquet file, created on first use)")
        found = parquet_columns_and_kind(self.path)
        if found is None:
            raise self._damaged("not a readable Parquet file (its footer is missing or "
                                "damaged)")
        columns, kind = found
        if kind == RESULT_KIND:
            return
        if kind is None and set(LEGACY_COLUMNS) <= set(columns):
            return  # written by an older bsym, before tables carried their mark
        shown = f"{columns[:6]}{' ...' if len(columns) > 6 else ''}"
        what = f"a bsym {kind}" if kind else f"a Parquet file with columns {shown}"
        raise EvaluationError(
            f"{self.path}: this is {what}, not a result table bsym wrote (expected the "
            f"columns {list(LEGACY_COLUMNS)} and the mark {RESULT_KIND!r}); bsym appends only "
            "to its own result tables and never replaces other files. Fix: choose another "
            "--results path (a new one is created)")

    def check_output(self) -> ResultTable:
        """Raise :class:`EvaluationError` (or :class:`~bsym.errors.BsymError`) unless rows
        can be appended here: before any work, so nothing is computed for nothing."""
        check_writable(self.path, fix="choose a --results path in a folder you can write to")
        if self.path.exists() or self.path.is_symlink():
            self.read()
        return self

    def find(self, key) -> dict | None:
        """The stored row with this key (a dict of the key columns), or None."""
        wanted = _key(key)
        return next((r for r in self.read().to_dict("records") if _key(r) == wanted), None)

    def stored(self) -> StoredRows:
        """Every row, indexed by key (one read of the table)."""
        return StoredRows(self.read().to_dict("records"))

    def is_done(self, row) -> bool:
        """Whether a row with ``row``'s key and provenance is already stored."""
        found = self.find(row)
        return found is not None and _is_current(found, row)

    def append(self, rows) -> pd.DataFrame:
        """Add rows, replacing stored rows with the same key; returns the new table."""
        rows = [{**KEY_DEFAULTS, **dict(r)} for r in rows]
        if not rows:
            return self.read()
        check_keys(rows)
        check_writable(self.path, fix="choose a --results path in a folder you can write to")
        with contextlib.ExitStack() as stack:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                stack.enter_context(file_lock(self.path.with_name(self.path.name + ".lock")))
            except OSError as err:
                raise disk_error(err, self.path, what="the result table") from err
            old = self.read()
            new = pd.DataFrame(rows)
            if not old.empty:
                replaced = {_key(r) for r in rows}
                keep = [_key(r) not in replaced for r in old.to_dict("records")]
                old = old[keep]
                table = pd.concat([old, new], ignore_index=True) if len(old) else new
            else:
                table = new
            table = _normalise(table)
            write_parquet(table, self.path, RESULT_KIND, what="the result table")
        return table


def _normalise(table):
    for column in table.columns:
        values = table[column]
        if values.dtype == object:
            kinds = {type(v) for v in values if v is not None and not
                     (isinstance(v, float) and math.isnan(v))}
            if kinds and kinds <= {int, float, np.integer, np.floating, bool} and \
                    column not in KEY_COLUMNS:
                table[column] = pd.to_numeric(values, errors="coerce")
            else:
                table[column] = values.map(lambda v: None if v is None or
                                           (isinstance(v, float) and math.isnan(v)) else str(v))
    for column in ("seed", "fold", "repeat", "replicate", "n_train", "n_test"):
        if column in table.columns:
            table[column] = pd.to_numeric(table[column], errors="coerce").astype("Int64")
    return table


def parent_run_name(tags) -> str:
    """``protocol / model:view / task`` of an evaluation's parent run (the bare model for
    the ``default`` view), with ``[control]`` and ``@ checkpoint`` for a control or an
    earlier pretraining checkpoint, as in the report's labels."""
    model, view = str(tags.get("model", "?")), str(tags.get("view", "default"))
    label = model if view in ("default", "", "None") else f"{model}:{view}"
    name = f"{tags.get('protocol', '?')} / {label} / {tags.get('task', '?')}"
    if str(tags.get("control", "none")) != "none":
        name += f" [{tags['control']}]"
    if str(tags.get("checkpoint", "final")) != "final":
        name += f" @ {tags['checkpoint']}"
    return name


def summary_metrics(rows, metrics, *, confidence=0.95) -> dict:
    """``{metric}_mean``, ``_sd``, ``_ci_low`` and ``_ci_high`` of result rows.

    The interval is Student's t with the Nadeau-Bengio corrected standard error (the
    report's leaderboard interval), from the rows' ``n_train`` and ``n_test``; with fewer
    than two finite values there is no interval (and the sd is 0).
    """
    from scipy import stats

    from bsym.stats.resampled import clip_interval, corrected_se

    sizes = [(float(r["n_train"]), float(r["n_test"])) for r in rows
             if _finite(r.get("n_train")) and _finite(r.get("n_test"))]
    ratio = float(np.mean([test / train for train, test in sizes])) \
        if sizes and len(sizes) == len(rows) and all(t > 0 for t, _ in sizes) else 0.0
    summary = {}
    for name in metrics:
        values = np.array([float(r[name]) for r in rows if _finite(r.get(name))])
        if not len(values):
            continue
        mean = float(values.mean())
        summary[f"{name}_mean"] = mean
        summary[f"{name}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        if len(values) > 1:
            half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * \
                corrected_se(values, ratio)
            summary[f"{name}_ci_low"], summary[f"{name}_ci_high"] = \
                clip_interval(name, mean - half, mean + half)
    return summary


def log_evaluation(tracker, rows, *, tags, run_name=None, params=None, metrics=()):
    """Log an evaluation to MLflow: a parent run (mean, SD and 95% CI over folds) with
    one nested run per fold row.

    The parent run is named :func:`parent_run_name` (``protocol / model:view / task``)
    and tagged ``bsym.kind=parent`` (its folds ``bsym.kind=fold``), so the MLflow runs
    list filtered on ``tags.bsym.kind = 'parent'`` is a leaderboard sortable by any
    ``{metric}_mean`` column.

    Parameters
    ----------
    tracker : Tracker or NullTracker or None
    rows : list of dict
        Result rows (each becomes a nested run tagged with its fold).
    tags : dict
        Tags of every run (model, view, dataset, task, protocol, seed, ...); ``control``
        and ``checkpoint`` default to ``none`` and ``final``.
    run_name : str, optional
        Name of the parent run (default :func:`parent_run_name` of ``tags``).
    params : dict, optional
        Parameters of the parent run.
    metrics : sequence of str
        Metric columns to log.

    Returns
    -------
    str or None
        The parent run id.
    """
    if tracker is None or not getattr(tracker, "enabled", False) or not rows:
        return None
    tags = {"control": "none", "checkpoint": "final", **{k: str(v) for k, v in tags.items()}}
    run_name = run_name or parent_run_name(tags)
    with tracker.start_run(run_name, tags={**tags, "bsym.kind": "parent"}) as parent:
        if params:
            tracker.log_params(params)
        summary = summary_metrics(rows, metrics)
        summary["n_folds"] = len(rows)
        tracker.log_metrics(summary)
        for row in rows:
            child_tags = {**tags, "bsym.kind": "fold", "fold": str(row["fold"]),
                          "repeat": str(row.get("repeat")),
                          "split_hash": str(row.get("split_hash"))}
            with tracker.start_run(f"{run_name} / fold {row['fold']}", tags=child_tags,
                                   nested=True):
                values = {m: float(row[m]) for m in metrics if _finite(row.get(m))}
                values.update({k: float(row[k]) for k in ("n_train", "n_test", "runtime_s")
                               if _finite(row.get(k))})
                tracker.log_metrics(values)
    return parent


def log_computed(tracker, rows, computed, *, tags, params=None, metrics=()):
    """:func:`log_evaluation` of every fold row of an evaluation, when any of them was
    computed now (the parent run summarises the folds read back too); an evaluation read
    back whole was logged when it was computed. ``tags`` gain ``bsym.version``."""
    return log_evaluation(tracker, rows if computed else [],
                          tags={**tags, "bsym.version": __version__}, params=params,
                          metrics=metrics)


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
