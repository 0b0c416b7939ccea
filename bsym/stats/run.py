"""``bsym stats``: the tests of a result table written into one folder.

Per metric, the pairwise tests of every dataset x task x protocol
(``pairwise_<metric>.csv``); per protocol, the rank tests over dataset x task blocks
(``ranks_<metrics>_<protocol>.csv``) and their critical-difference diagram
(``cd_<metrics>_<protocol>.<format>``). Real scores only, models labelled as the
report labels them (:mod:`bsym.stats.table`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from bsym.outputs import OutputFolder, layout, write_csv
from bsym.stats.compare import pairwise_tests, plot_critical_difference, rank_tests
from bsym.stats.errors import StatsError
from bsym.stats.table import (
    check_results,
    compared_rows,
    known_metrics,
    load_health,
    split_netid,
    task_metrics,
)


def slug(*parts) -> str:
    """``parts`` joined by ``_`` as a file-name stem (other characters become ``-``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(str(p) for p in parts)).strip("-")


def close_figure(fig):
    """Release a matplotlib figure once it is saved."""
    import matplotlib.pyplot as plt

    plt.close(fig)


def stats_folder(out) -> OutputFolder:
    """The ``bsym stats --out`` folder (an older bsym's index-less one is recognised)."""
    return OutputFolder(out, "stats", legacy=layout(r"pairwise_.+\.csv", r"ranks_.+\.csv",
                                                    r"cd_.+\.(png|pdf|svg)"))


def run_stats(results: pd.DataFrame, metric, out, *, alpha: float = 0.05, rope: float = 0.01,
              figure_format: str = "png", health=None, source=None) -> dict:
    """Pairwise tests (CSV), rank tests per protocol (CSV) and CD diagrams into ``out``.

    ``metric`` is one metric or several: pairwise tests are run per metric; rank tests
    rank each task by the first of the metrics it reports, so ``["auroc", "pearson_r"]``
    ranks classification and regression tasks together. Real scores only; models that
    did not learn (``health``) carry :data:`~bsym.stats.table.UNLEARNED_MARK`. Returns
    the written paths (``written``) and notes on what could not be computed (``notes``).
    ``source`` (the table's file) words the errors. Only a new, empty or bsym stats
    folder is written into (:class:`~bsym.outputs.OutputFolder`).
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    out = Path(out)
    folder = stats_folder(out).check()
    check_results(results, source)
    frame, _ = split_netid(compared_rows(results, load_health(health)))
    lacking = [m for m in metrics if m not in frame.columns]
    if lacking:
        known = known_metrics(frame)
        where = f"{source}: " if source is not None else ""
        raise StatsError(f"{where}metric(s) {lacking} not columns of the result table; it "
                         f"has {known}. Fix: pass --metric with one of {known}")
    with folder:
        written, notes = {}, []
        for name in metrics:
            _write_pairwise(frame, name, out, rope, written, notes)
        for protocol, rows in frame.groupby(frame["protocol"].astype(str), sort=True):
            _write_ranks(rows, protocol, metrics, out, alpha, figure_format, written, notes)
    if not written:
        raise StatsError("no statistics could be computed: " + "; ".join(notes) + ". Fix: "
                         "compare at least two models on the same dataset, task and protocol "
                         "(add their rows to the result table), or pick --metric and "
                         "--protocol where they exist")
    return {"written": written, "notes": notes}


def _write_pairwise(frame, metric, out, rope, written, notes):
    """``pairwise_<metric>.csv``, or a note saying why not."""
    rows = frame[pd.to_numeric(frame[metric], errors="coerce").notna()]
    try:
        pairs = pairwise_tests(rows, metric, rope=rope)
    except StatsError as err:
        notes.append(f"pairwise tests ({metric}): {err}")
        return
    written[f"pairwise_{metric}"] = write_csv(pairs, out / f"pairwise_{metric}.csv")


def _write_ranks(rows, protocol, metrics, out, alpha, figure_format, written, notes):
    """The rank table and CD diagram of one protocol, or a note saying why not."""
    mapping = task_metrics(rows, metrics)
    try:
        if not mapping:
            raise StatsError(f"no task reports {metrics}")
        ranks = rank_tests(rows[rows["task"].astype(str).isin(mapping)],
                           mapping if len(metrics) > 1 else metrics[0], alpha=alpha)
    except StatsError as err:
        notes.append(f"rank tests ({protocol}): {err}")
        return
    tag = slug("+".join(metrics))
    table = ranks.table().assign(protocol=protocol, metric="+".join(metrics),
                                 n_blocks=ranks.n_blocks, friedman_chi2=ranks.statistic,
                                 friedman_p=ranks.pvalue,
                                 iman_davenport_p=ranks.iman_davenport_pvalue, cd=ranks.cd,
                                 alpha=alpha, can_be_significant=ranks.can_be_significant,
                                 min_blocks=ranks.min_blocks)
    if ranks.few_blocks_note():
        notes.append(f"rank tests ({protocol}): {ranks.few_blocks_note()}")
    written[f"ranks_{protocol}"] = write_csv(table, out / f"ranks_{tag}_{protocol}.csv")
    path = out / f"cd_{tag}_{protocol}.{figure_format}"
    close_figure(plot_critical_difference(ranks, path))
    written[f"cd_{protocol}"] = path
