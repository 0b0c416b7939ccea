"""What every section of the report reads: the result table cut and summarised once."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from bsym.report.board import leaderboard, primary_metrics
from bsym.stats.controls import fill_key_defaults
from bsym.stats.table import compared_rows, model_labels, split_netid


@dataclass
class ReportData:
    """The inputs of the report's sections.

    Attributes
    ----------
    results : DataFrame
        The long result table, as given.
    bench : DataFrame
        Its real benchmark scores (no network identification), labelled ``model:view``
        and marked where the model did not learn.
    everything : DataFrame
        Every row (controls and earlier checkpoints included), labelled ``model:view``.
    netid_rows : DataFrame
        The network-identification rows (of ``--netid`` where given).
    primary : dict
        Task -> its primary metric.
    verdict : DataFrame or None
        Each score beside its controls (:func:`verdict`); None without benchmark rows.
    pairwise : list
        :func:`pairwise_all` of the primary metrics.
    board : DataFrame or None
        The leaderboard; None without benchmark rows.
    """

    results: pd.DataFrame
    bench: pd.DataFrame
    everything: pd.DataFrame
    netid_rows: pd.DataFrame
    primary: dict
    verdict: pd.DataFrame | None
    pairwise: list
    board: pd.DataFrame | None
    health: pd.DataFrame | None = None
    metrics: list | None = None
    netid_figures: list = field(default_factory=list)
    loss_figures: list = field(default_factory=list)
    contrasts: list = field(default_factory=list)
    alpha: float = 0.05
    rope: float = 0.01


def report_data(results, *, metrics, netid, health, alpha, rope, **inputs) -> ReportData:
    """The :class:`ReportData` of a checked result table (``inputs``: the figures and
    attention contrasts, passed through)."""
    bench, _ = split_netid(compared_rows(results, health))
    everything = fill_key_defaults(model_labels(results))
    _, netid_rows = split_netid(everything)
    if netid is not None:
        netid_rows = fill_key_defaults(model_labels(netid))
    primary = primary_metrics(bench) if not bench.empty else {}
    return ReportData(
        results=results, bench=bench, everything=everything, netid_rows=netid_rows,
        primary=primary, verdict=verdict(results, primary, health),
        pairwise=pairwise_all(bench, primary, rope),
        board=None if bench.empty else leaderboard(results, metrics, health=health),
        health=health, metrics=metrics, alpha=alpha, rope=rope,
        **{name: list(value) for name, value in inputs.items()})


def verdict(results, primary, health) -> pd.DataFrame | None:
    """:func:`~bsym.stats.controls.verdict_table` with a ``label`` (``model:view``), sorted;
    None without benchmark rows."""
    from bsym.stats.controls import verdict_table

    if not primary:
        return None
    table = verdict_table(results, primary, health=health)
    if table.empty:
        return table
    table["label"] = [m if str(v) in ("default", "", "None") else f"{m}:{v}"
                      for m, v in zip(table["model"], table["view"])]
    return table.sort_values(["dataset", "task", "protocol", "mean"],
                             ascending=[True, True, True, False], kind="stable")


def pairwise_all(bench, primary, rope) -> list:
    """``[(metric, mixed, pairs or None, error or None)]``: :func:`bsym.stats.pairwise_tests`
    of each primary metric within each protocol and, with several protocols, across them."""
    from bsym import stats

    out = []
    if bench.empty or not primary:
        return out
    mixes = (False, True) if bench["protocol"].astype(str).nunique() > 1 else (False,)
    for metric in sorted(set(primary.values())):
        rows = bench[bench["task"].astype(str).map(primary) == metric]
        for mixed in mixes:
            try:
                out.append((metric, mixed, stats.pairwise_tests(rows, metric, rope=rope,
                                                                mix_protocols=mixed), None))
            except stats.StatsError as err:
                out.append((metric, mixed, None, str(err)))
    return out
