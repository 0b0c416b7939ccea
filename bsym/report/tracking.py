"""The leaderboard run: one MLflow run per dataset that holds its leaderboard and report.

``bsym tracking leaderboard`` logs, for one dataset, a run named ``leaderboard: <dataset>``
and tagged ``bsym.kind=leaderboard`` holding

* ``leaderboard.json``: the leaderboard table (:func:`leaderboard_table`: mean, sd, n and
  95% CI per protocol x task x metric x model, real scores only, with the task's
  ``primary`` metric and each model's ``rank``), logged with ``log_table`` so the MLflow
  UI shows it as a table (run page, Artifacts; runs list, the artifact view compares
  the ``score`` of each ``entry`` across datasets);
* ``network_identification.json``: the network-identification summary, when there is one;
* ``report/``: the HTML report, its Markdown summary, figures and tables (the files
  ``bsym report`` lists in its folder index);
* ``results/``: the result table (Parquet, and CSV for the UI's preview) and the
  training-health table beside it;
* a description (the run's notes) with the best model of every task.

A dataset has one leaderboard run: logging it again replaces the previous one (it is
marked deleted once the new run is complete; ``mlflow gc`` removes deleted runs for good).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from bsym import __version__
from bsym.errors import BsymError
from bsym.outputs import FOLDER_INDEX, json_document

KIND_TAG = "bsym.kind"
KIND = "leaderboard"
RECORD_FORMAT = "bsym-tracking-leaderboard"
#: What a report folder holds when it has no index (an older bsym).
_REPORT_FILES = ("report.html", "report.md")


class LeaderboardRunError(BsymError):
    """Inputs of a leaderboard run that cannot be logged."""


def run_name(dataset) -> str:
    """The name of a dataset's leaderboard run."""
    return f"leaderboard: {dataset}"


def report_files(report_dir) -> list[Path]:
    """The files of a ``bsym report`` folder, as its index lists them (figures and tables
    included); raise :class:`LeaderboardRunError` unless the folder holds a report."""
    folder = Path(report_dir)
    fix = ("pass the --out folder of `bsym report` (the workflow's "
           "results/report/<dataset>), after the report is written")
    if not folder.is_dir():
        state = "a file, not a folder" if folder.exists() else "no such folder"
        raise LeaderboardRunError(f"{folder}: {state}; expected a report folder. Fix: {fix}")
    index = json_document(folder / FOLDER_INDEX)
    if index is not None and index.get("kind") not in (None, "report"):
        raise LeaderboardRunError(f"{folder}: this folder holds bsym {index.get('kind')} "
                                  f"outputs, not a report. Fix: {fix}")
    if index is not None and isinstance(index.get("files"), list):
        names = [str(name) for name in index["files"]]
    else:
        names = [*_REPORT_FILES,
                 *(p.relative_to(folder).as_posix() for sub in ("figures", "tables")
                   for p in sorted((folder / sub).glob("*")) if p.is_file())]
    files = [folder / name for name in sorted(set(names)) if (folder / name).is_file()]
    if folder / "report.html" not in files:
        raise LeaderboardRunError(f"{folder}: no report.html in this folder. Fix: {fix}")
    return files


def _dataset_of(results, dataset, source):
    names = sorted(map(str, results["dataset"].dropna().unique()))
    if dataset is None:
        if len(names) != 1:
            raise LeaderboardRunError(
                f"{source}: the result table holds {len(names)} datasets "
                f"({', '.join(names[:6]) or 'none'}); a leaderboard run is per dataset. Fix: "
                "pass --dataset NAME")
        return names[0]
    if str(dataset) not in names:
        raise LeaderboardRunError(f"{source}: no row of dataset {dataset!r} in the result "
                                  f"table (it holds {', '.join(names[:6]) or 'none'}). Fix: "
                                  "pass one of those to --dataset, or the dataset's table")
    return str(dataset)


def leaderboard_table(results, health=None) -> pd.DataFrame:
    """The leaderboard (:func:`bsym.report.leaderboard`) with ``primary`` (the task's
    primary metric), ``rank`` (1 = best within protocol x dataset x task x metric), and
    first ``entry`` (``protocol / task / metric / model``) and ``score`` (``mean ± sd
    [95% CI]``); primary metrics first. Empty when the table has no benchmark rows."""
    from bsym.report.board import leaderboard, primary_metrics
    from bsym.stats import HIGHER_IS_BETTER
    from bsym.stats.table import NETID_PROTOCOL

    bench = results[results["protocol"].astype(str) != NETID_PROTOCOL]
    columns = ["entry", "score", "protocol", "task", "metric", "rank", "model", "mean", "sd",
               "ci_low", "ci_high", "n", "n_seeds", "primary", "dataset"]
    if bench.empty:
        return pd.DataFrame(columns=columns)
    board = leaderboard(results, health=health)
    primary = primary_metrics(bench)
    board["primary"] = [primary.get(str(t)) == m for t, m in zip(board["task"], board["metric"])]
    higher = board["metric"].map(lambda m: HIGHER_IS_BETTER.get(str(m).lower(), True))
    score = board["mean"].where(higher, -board["mean"])
    board["rank"] = score.groupby([board["protocol"], board["dataset"], board["task"],
                                   board["metric"]]).rank(ascending=False, method="min")
    board["rank"] = board["rank"].astype("Int64")
    board = board.sort_values(["primary", "protocol", "dataset", "task", "metric", "rank"],
                              ascending=[False, True, True, True, True, True], kind="stable")
    # the row key and the cell the MLflow UI's evaluation view groups by and compares
    board["entry"] = [f"{p} / {t} / {m} / {model}" for p, t, m, model in
                      zip(board["protocol"], board["task"], board["metric"], board["model"])]
    board["score"] = [f"{_fmt(m)} ± {_fmt(s)} [{_fmt(lo)}, {_fmt(hi)}]" for m, s, lo, hi in
                      zip(board["mean"], board["sd"], board["ci_low"], board["ci_high"])]
    return board[columns].reset_index(drop=True)


def _fmt(value, digits=3) -> str:
    return "n/a" if pd.isna(value) else f"{value:.{digits}f}"


def describe(dataset, board) -> str:
    """The run's description (Markdown): the best model of each task on its primary metric,
    and where the per-evaluation runs are."""
    lines = [f"**Leaderboard of dataset `{dataset}`** (bsym {__version__}). Real scores "
             "only: mean ± sd over folds and seeds, 95% CI with the Nadeau-Bengio corrected "
             "standard error; protocols are never mixed. The full table is `leaderboard.json` "
             "(Artifacts), the report `report/report.html`.", ""]
    best = board[board["primary"] & (board["rank"] == 1)] if len(board) else board
    if len(best):
        lines.append("Best model of each task (primary metric, mean ± sd [95% CI]):")
        lines.append("")
        for row in best.itertuples():
            lines.append(f"- {row.protocol} / {row.task} ({row.metric}): **{row.model}** "
                         f"{row.score}")
        lines.append("")
    else:
        lines += ["No linear-probe, fine-tuning or supervised scores: no leaderboard table.",
                  ""]
    lines.append(f"Every evaluation is a run of its own, named `protocol / model:view / task`: "
                 f"filter the runs with `tags.bsym.kind = 'parent' and tags.dataset = "
                 f"'{dataset}'` and sort by a `*_mean` column (with `*_sd`, `*_ci_low`, "
                 f"`*_ci_high`).")
    return "\n".join(lines)


def _guard_record(path):
    from bsym.io import guard_output
    from bsym.outputs import json_format

    guard_output(path, is_ours=lambda p: json_format(p) == RECORD_FORMAT,
                 what="leaderboard-run record", overwrite=True,
                 fix_other="choose another --out path, or move this file away yourself")


def log_leaderboard(tracker, results, report_dir, *, dataset=None, health=None,
                    out=None) -> dict:
    """Log a dataset's leaderboard run, replacing its previous one.

    Parameters
    ----------
    tracker : bsym.track.Tracker
    results : path
        The long result table (``bsym report --results``).
    report_dir : path
        The ``bsym report --out`` folder of the same table.
    dataset : str, optional
        Dataset of the leaderboard (default: the table's only dataset).
    health : path, optional
        Training-health table (default ``<table>_health.parquet`` beside ``results``).
    out : path, optional
        Also write a JSON record of the run (run id, experiment, replaced runs) here.

    Returns
    -------
    dict
        ``run_id``, ``experiment_id``, ``dataset``, ``replaced`` (ids of the runs it
        replaced), ``artifacts`` (paths in the run), ``tracking_uri``.
    """
    from bsym.io import atomic_write_json, file_sha256
    from bsym.stats.controls import netid_summary
    from bsym.stats.table import health_beside, load_health, read_results

    source, report_dir = Path(results), Path(report_dir)
    if out is not None:
        _guard_record(out)
    table = read_results(source)
    dataset = _dataset_of(table, dataset, source)
    files = report_files(report_dir)
    health_path = Path(health) if health is not None else health_beside(source)
    health_table = load_health(health_path)
    mine = table[table["dataset"].astype(str) == dataset]
    board = leaderboard_table(mine, health_table)
    netid = netid_summary(mine) if (mine["protocol"].astype(str) ==
                                    "network_identification").any() else None
    tracker.check_store()
    previous = [run.info.run_id for run in
                tracker.search_runs(f"tags.{KIND_TAG} = '{KIND}'")
                if run.data.tags.get("dataset") == dataset]
    tags = {KIND_TAG: KIND, "dataset": dataset, "bsym.version": __version__,
            "bsym.results_sha256": file_sha256(source),
            "mlflow.note.content": describe(dataset, board)}
    with tracker.start_run(run_name(dataset), tags=tags) as run_id:
        tracker.log_params({"dataset": dataset, "results": str(source),
                            "report": str(report_dir), "rows": len(mine),
                            "leaderboard_rows": len(board)})
        artifacts = [*_log_tables(tracker, board, netid),
                     *_log_report(tracker, files, report_dir),
                     *_log_results(tracker, source, mine, health_path)]
    for old in previous:
        tracker.delete_run(old)
    record = {"format": RECORD_FORMAT, "run_id": run_id, "run_name": run_name(dataset),
              "experiment": tracker.experiment, "experiment_id": tracker.experiment_id,
              "tracking_uri": tracker.uri, "dataset": dataset, "replaced": previous,
              "artifacts": artifacts}
    if out is not None:
        atomic_write_json(out, record, what="the leaderboard-run record")
    return record


def _log_tables(tracker, board, netid) -> list[str]:
    """The leaderboard (and network-identification summary) as MLflow tables."""
    numbers = ["mean", "sd", "ci_low", "ci_high"]  # 4 decimals; the report has them all
    tracker.log_table(board.assign(**board[numbers].round(4)), "leaderboard.json")
    if netid is None or not len(netid):
        return ["leaderboard.json"]
    tracker.log_table(netid, "network_identification.json")
    return ["leaderboard.json", "network_identification.json"]


def _log_report(tracker, files, report_dir) -> list[str]:
    """The report folder's files under ``report/``."""
    artifacts = []
    for path in files:
        rel = path.relative_to(report_dir).as_posix()
        parent = os.path.dirname(rel)
        tracker.log_artifact(path, f"report/{parent}" if parent else "report")
        artifacts.append(f"report/{rel}")
    return artifacts


def _log_results(tracker, source, rows, health_path) -> list[str]:
    """The result table (and a CSV of the dataset's rows for the UI's preview) and the
    health table under ``results/``."""
    tracker.log_artifact(source, "results")
    with tempfile.TemporaryDirectory(prefix="bsym-leaderboard-") as tmp:
        preview = Path(tmp) / f"{source.stem}.csv"
        rows.to_csv(preview, index=False)
        tracker.log_artifact(preview, "results")
    artifacts = [f"results/{source.name}", f"results/{source.stem}.csv"]
    if health_path is not None:
        tracker.log_artifact(health_path, "results")
        artifacts.append(f"results/{health_path.name}")
    return artifacts


def read_record(path) -> dict | None:
    """The JSON record ``log_leaderboard(out=...)`` wrote (None for anything else)."""
    payload = json_document(path)
    return payload if payload and payload.get("format") == RECORD_FORMAT else None


__all__ = ["KIND", "KIND_TAG", "LeaderboardRunError", "describe", "leaderboard_table",
           "log_leaderboard", "read_record", "report_files", "run_name"]
