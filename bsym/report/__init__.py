"""Reports of a benchmark: leaderboard, statistics, figures, HTML and Markdown.

Everything is computed from the long result table (:mod:`bsym.evaluate.results`).
Importing this package is cheap; pandas and matplotlib load on first use.

Examples
--------
>>> from bsym import report
>>> board = report.leaderboard(table)                            # doctest: +SKIP
>>> paths = report.build_report(table, "results/report")         # doctest: +SKIP
"""

from __future__ import annotations

__all__ = ["build_report", "format_leaderboard", "leaderboard", "load_table", "model_labels",
           "primary_metrics", "published_table", "report_metrics", "run_stats"]


def __getattr__(name):
    if name in __all__:
        from bsym.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'bsym.report' has no attribute {name!r}")
