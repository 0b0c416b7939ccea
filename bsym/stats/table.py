"""A result table read for comparison: loaded, checked, its models labelled.

The tests compare models as the reports name them: ``model:view`` where a view other
than ``default`` is named, with :data:`UNLEARNED_MARK` after a model whose pretraining
did not beat its trivial baseline (the training-health table of ``bsym health``), so
that no ranking shows such a model silently.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bsym.stats.compare import REQUIRED_COLUMNS
from bsym.stats.controls import real_rows
from bsym.stats.errors import StatsError

#: The benchmark metrics bsym writes, in the order they are shown.
METRIC_ORDER = ("auroc", "balanced_accuracy", "accuracy", "f1", "pearson_r", "r2", "mse", "mae")
NETID_PROTOCOL = "network_identification"
NETID_METRICS = ("ari_kmeans", "nmi_kmeans", "ari_spectral", "nmi_spectral", "knn_accuracy")
#: Appended to the label of a model whose pretraining did not beat its trivial baseline.
UNLEARNED_MARK = " [did not learn]"
#: How the result table's errors name the fix.
_RESULTS_FIX = ("pass the result table that `bsym probe | finetune | supervised | netid "
                "--results` wrote")


def load_table(path, what="the result table", fix=None) -> pd.DataFrame:
    """A Parquet or CSV table; ``what`` and ``fix`` word the errors."""
    path = Path(path)
    fix = fix or f"{_RESULTS_FIX} (the default is results/results.parquet)"
    if not path.is_file():
        state = "a folder, not a file" if path.is_dir() else "no such file"
        raise StatsError(f"{path}: {state}; expected {what} (Parquet or CSV). Fix: {fix}")
    try:
        if path.suffix.lower() in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - pyarrow and pandas raise several types
        raise StatsError(f"{path}: cannot read {what} ({type(err).__name__}: {err}); it is "
                         f"damaged or not a Parquet/CSV table. Fix: {fix}") from None


def check_results(results: pd.DataFrame, source=None) -> pd.DataFrame:
    """Raise :class:`StatsError` unless ``results`` has the result table's key columns."""
    missing = [c for c in REQUIRED_COLUMNS if c not in results.columns]
    if missing:
        where = f"{source}: " if source is not None else ""
        raise StatsError(
            f"{where}the result table lacks the column(s) {missing}; received "
            f"{list(results.columns)[:8]}{' ...' if len(results.columns) > 8 else ''}. Fix: "
            f"{_RESULTS_FIX}")
    return results


def read_results(path) -> pd.DataFrame:
    """The checked result table at ``path``."""
    return check_results(load_table(path), path)


def model_labels(results: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``model`` replaced by ``model:view`` where a view other than default is named
    (the original model kept in ``base_model``)."""
    if "model" not in results.columns:
        raise StatsError(f"the result table has no 'model' column; received {list(results.columns)}")
    frame = results.copy()
    frame["base_model"] = frame["model"].astype(str)
    if "view" in frame.columns:
        view = frame["view"]
        plain = view.isna() | view.astype(str).isin(["default", "", "None"])
        frame.loc[~plain, "model"] = frame.loc[~plain, "base_model"] + ":" + view[~plain].astype(str)
        frame["view"] = view.where(~plain, "default")
    else:
        frame["view"] = "default"
    frame["model"] = frame["model"].astype(str)
    return frame


def load_health(health) -> pd.DataFrame | None:
    """The training-health table (path or frame; None stays None)."""
    if health is None:
        return None
    fix = ("pass the table `bsym health --out` wrote (or the workflow's "
           "<dataset>_health.parquet)")
    frame = health if isinstance(health, pd.DataFrame) else \
        load_table(health, "the training-health table", fix)
    missing = [c for c in ("model", "view", "learned") if c not in frame.columns]
    if missing:
        where = "" if isinstance(health, pd.DataFrame) else f"{health}: "
        raise StatsError(f"{where}the health table lacks columns {missing}; expected the table "
                         f"of `bsym health` (model, view, learned, ...). Fix: {fix}")
    return frame


def health_beside(results_path) -> Path | None:
    """``<table>_health.parquet`` beside a result table, where the workflow writes it."""
    path = Path(results_path)
    candidate = path.with_name(f"{path.stem}_health.parquet")
    return candidate if candidate.exists() else None


def unlearned(health) -> set:
    """``{(model, view)}`` whose pretraining health check failed."""
    if health is None or health.empty:
        return set()
    failed = health[~health["learned"].astype(bool)]
    return {(str(m), str(v)) for m, v in zip(failed["model"], failed["view"])}


def mark_unlearned(labelled: pd.DataFrame, health) -> pd.DataFrame:
    """Append :data:`UNLEARNED_MARK` to the ``model`` label of rows whose model (and view)
    did not learn, so no ranking shows it silently."""
    failed = unlearned(health)
    if not failed:
        return labelled
    frame = labelled.copy()
    hit = [(str(m), str(v)) in failed or (str(m), "default") in failed
           for m, v in zip(frame["base_model"], frame["view"])]
    frame.loc[hit, "model"] = frame.loc[hit, "model"] + UNLEARNED_MARK
    return frame


def compared_rows(results: pd.DataFrame, health) -> pd.DataFrame:
    """The real scores, labelled ``model:view`` and marked where the model did not learn."""
    return mark_unlearned(model_labels(real_rows(results)), health)


def split_netid(results: pd.DataFrame):
    """(benchmark rows, network-identification rows)."""
    if "protocol" not in results.columns:
        raise StatsError("the result table has no 'protocol' column; every row must name its "
                         "protocol (linear_probe, finetune, supervised)")
    protocol = results["protocol"].astype(str)
    return results[protocol != NETID_PROTOCOL], results[protocol == NETID_PROTOCOL]


def has_values(frame, metric) -> bool:
    """Whether ``metric`` is a column of ``frame`` with at least one numeric value."""
    return metric in frame.columns and pd.to_numeric(frame[metric], errors="coerce").notna().any()


def known_metrics(frame) -> list[str]:
    """The columns of ``frame`` that are metrics bsym writes, in the table's order."""
    return [c for c in frame.columns if c in METRIC_ORDER or c in NETID_METRICS]


def task_metrics(results: pd.DataFrame, metrics) -> dict:
    """Task -> the first of ``metrics`` it reports (tasks reporting none left out)."""
    out = {}
    for task, rows in results.groupby("task", sort=True):
        found = next((m for m in metrics if has_values(rows, m)), None)
        if found is not None:
            out[str(task)] = found
    return out
