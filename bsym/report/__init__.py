"""Reports of a benchmark: leaderboard, statistics, figures, HTML and Markdown.

Everything is computed from the long result table (:mod:`bsym.evaluate.results`).
Importing this package is cheap; pandas and matplotlib load on first use.

Modules
-------
board
    The leaderboard: mean, sd, n and CI per protocol x dataset x task x metric x model.
build
    The self-contained HTML report and its Markdown summary.
sections
    The report's sections, one function each.
markup
    The HTML (from the templates in ``templates/``) and Markdown pieces.
figures
    The report's figures.
tracking
    The MLflow leaderboard run of a dataset.

Examples
--------
>>> from bsym import report
>>> board = report.leaderboard(table)                            # doctest: +SKIP
>>> paths = report.build_report(table, "results/report")         # doctest: +SKIP
"""

from __future__ import annotations

from bsym._lazy import lazy_exports

_EXPORTS = {
    "build_report": "bsym.report.build",
    "format_leaderboard": "bsym.report.board",
    "leaderboard": "bsym.report.board",
    "primary_metrics": "bsym.report.board",
    "report_metrics": "bsym.report.board",
    "published_table": "bsym.report.published",
    "load_table": "bsym.stats.table",
    "model_labels": "bsym.stats.table",
    "run_stats": "bsym.stats.run",
}

__all__ = ["build_report", "format_leaderboard", "leaderboard", "load_table", "model_labels",
           "primary_metrics", "published_table", "report_metrics", "run_stats"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
