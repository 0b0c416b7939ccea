"""The leaderboard: mean, sd, n and CI per protocol x dataset x task x metric x model.

Every number comes from the long result table. A model with several views (e.g.
BrainSymphony's ``fmri``, ``sc`` and ``fusion`` embeddings) is shown as ``model:view``;
``view == "default"`` keeps the bare model name. Protocols are never mixed, and only real
scores (``control == "none"`` of finished models) are summarised.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bsym.report.errors import ReportError
from bsym.report.markup import esc, md_table, render
from bsym.stats.table import (
    METRIC_ORDER,
    compared_rows,
    has_values,
    known_metrics,
    load_health,
    split_netid,
    task_metrics,
)

#: Preferred metric of a task for ranks and figures (the first one the task reports).
PRIMARY_ORDER = METRIC_ORDER
#: Columns of the leaderboard, in order.
BOARD_COLUMNS = ["protocol", "dataset", "task", "metric", "model", "n", "n_seeds", "mean", "sd",
                 "ci_low", "ci_high"]


def report_metrics(results: pd.DataFrame, metrics=None, source=None) -> list[str]:
    """Metrics to report: the given ones (checked), else every known metric with a value
    (``source``: the table's file, for messages)."""
    if metrics:
        lacking = [m for m in metrics if m not in results.columns]
        if lacking:
            known = known_metrics(results)
            where = f"{source}: " if source is not None else ""
            raise ReportError(f"{where}metric(s) {lacking} not in the result table; it has "
                              f"{known}. "
                              f"Fix: pass --metric with one of {known} (or leave it out: "
                              "every metric the table reports)")
        return list(metrics)
    return [m for m in METRIC_ORDER if has_values(results, m)]


def primary_metrics(results: pd.DataFrame) -> dict:
    """Task -> its preferred metric (the first of :data:`PRIMARY_ORDER` it reports)."""
    return task_metrics(results, PRIMARY_ORDER)


def leaderboard(results: pd.DataFrame, metrics=None, *, confidence: float = 0.95,
                health=None) -> pd.DataFrame:
    """Mean, sd, n and CI per protocol x dataset x task x metric x model (from stats.summary).

    Real scores only (control rows and earlier checkpoints are left out); network-
    identification rows are left out (see the report's own section). With ``health``,
    models that did not learn carry :data:`~bsym.stats.table.UNLEARNED_MARK`.
    """
    from bsym import stats

    frame, _ = split_netid(compared_rows(results, load_health(health)))
    if frame.empty:
        raise ReportError("the result table has no benchmark rows (linear_probe, finetune or "
                          "supervised)")
    parts = []
    for metric in report_metrics(frame, metrics):
        rows = frame[pd.to_numeric(frame[metric], errors="coerce").notna()]
        if rows.empty:
            continue
        parts.append(stats.summary(rows, metric, confidence=confidence))
    if not parts:
        raise ReportError(f"no row has a value for {metrics}")
    board = pd.concat(parts, ignore_index=True)
    return board[BOARD_COLUMNS].sort_values(
        ["protocol", "dataset", "task", "metric", "model"], kind="stable").reset_index(drop=True)


def mean_sd(mean, sd, digits=4) -> str:
    """``mean ± sd`` (``± n/a`` without an sd)."""
    if not np.isfinite(sd):
        return f"{mean:.{digits}f} ± n/a"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _interval(low, high) -> str:
    return "n/a" if not np.isfinite(low) else f"[{low:.4f}, {high:.4f}]"


def format_leaderboard(board: pd.DataFrame, digits: int = 3) -> str:
    """Plain-text leaderboard: per protocol and dataset and metric, model x task cells
    ``mean ± sd (n)``."""
    lines = []
    for (protocol, dataset), block in board.groupby(["protocol", "dataset"], sort=True):
        lines.append(f"== protocol: {protocol} | dataset: {dataset} ==")
        for metric, rows in block.groupby("metric", sort=False):
            cells = rows.assign(cell=[f"{mean_sd(m, s, digits)} (n={n})" for m, s, n in
                                      zip(rows["mean"], rows["sd"], rows["n"])])
            table = cells.pivot(index="model", columns="task", values="cell").fillna("-")
            table.columns.name = None
            table.index.name = f"[{metric}]"
            lines.append(table.to_string())
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _board_row_html(r) -> str:
    """One leaderboard row; its number cells carry the row's key for parsing."""
    names = dict(protocol=esc(r.protocol), dataset=esc(r.dataset), task=esc(r.task),
                 metric=esc(r.metric), model=esc(r.model))
    return render("leaderboard_row.html", **names, keys=render("leaderboard_keys.html", **names),
                  n=r.n, score=mean_sd(r.mean, r.sd), ci=_interval(r.ci_low, r.ci_high))


def leaderboard_html(board: pd.DataFrame) -> str:
    """Per protocol: one row per dataset x task x metric x model, cells tagged for parsing."""
    parts = []
    for protocol, block in board.groupby("protocol", sort=True):
        parts.append(render("subsection.html", title=f"protocol: {esc(protocol)}"))
        rows = "".join(_board_row_html(r) for r in block.itertuples(index=False))
        parts.append(render("leaderboard.html", rows=rows))
    return "\n".join(parts)


def leaderboard_md(board: pd.DataFrame) -> str:
    """Per protocol: the leaderboard as a Markdown table."""
    parts = []
    for protocol, block in board.groupby("protocol", sort=True):
        shown = pd.DataFrame({
            "dataset": block["dataset"], "task": block["task"], "metric": block["metric"],
            "model": block["model"], "n": block["n"],
            "mean ± sd": [mean_sd(m, s) for m, s in zip(block["mean"], block["sd"])],
            "95% CI": [_interval(lo, hi) for lo, hi in zip(block["ci_low"], block["ci_high"])]})
        parts.append(f"### protocol: {protocol}\n\n{md_table(shown)}")
    return "\n\n".join(parts)
