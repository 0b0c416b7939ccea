"""``bsym stats``: pairwise and rank tests of a result table, with the CD diagram.

Importing this module imports neither pandas nor matplotlib; they load when the command
runs. The result-table options here (:func:`add_results_argument`, :func:`add_health_argument`,
:func:`metric_list`) serve every command that reads a result table.
"""

from __future__ import annotations

DEFAULT_RESULTS = "results/results.parquet"


def metric_list(values):
    """The metrics of repeated, comma-separated ``--metric`` options (None for none)."""
    out = []
    for value in values or ():
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return out or None


def health_table(args):
    """``--health``, else the health table beside ``args.results`` (None without one)."""
    from bsym.stats.table import health_beside

    return args.health or health_beside(args.results)


def _stats(args):
    """Run ``bsym stats``: print each written file and each note."""
    from bsym.stats.run import run_stats
    from bsym.stats.table import read_results

    table = read_results(args.results)
    if args.protocol:
        table = table[table["protocol"].astype(str) == args.protocol]
    done = run_stats(table, metric_list(args.metric), args.out, alpha=args.alpha,
                     rope=args.rope, figure_format=args.format, health=health_table(args),
                     source=args.results)
    for name, path in done["written"].items():
        print(f"{name}: {path}")
    for text in done["notes"]:
        print(f"note: {text}")


def add_results_argument(parser):
    """The positional result table, defaulting to :data:`DEFAULT_RESULTS`."""
    parser.add_argument("results", nargs="?", default=DEFAULT_RESULTS,
                        help=f"long result table (default {DEFAULT_RESULTS})")


def add_health_argument(parser):
    """``--health``: the training-health table that marks models that did not learn."""
    parser.add_argument("--health", default=None,
                        help="training-health table (`bsym health`); models that did not learn "
                        "are marked '[did not learn]' (default: <table>_health.parquet beside "
                        "the result table, when present)")


def add_parser(subparsers):
    """Add ``stats``."""
    p = subparsers.add_parser(
        "stats", help="pairwise and rank tests of a result table, with the CD diagram",
        description="Per dataset x task x protocol: corrected resampled t-test, Wilcoxon (Holm), "
        "Bayesian correlated t-test; per protocol: Friedman + Nemenyi and the critical-difference "
        "diagram. Writes pairwise_METRIC.csv, ranks_METRICS_PROTOCOL.csv and cd_METRICS_PROTOCOL.png.")
    add_results_argument(p)
    p.add_argument("--metric", action="append", required=True,
                   help="metric column, e.g. auroc; several (comma-separated or repeated): pairwise "
                   "tests per metric, and each task ranked by the first one it reports")
    p.add_argument("--out", default="results/stats", help="output folder (default results/stats)")
    p.add_argument("--protocol", default=None, help="only this protocol")
    p.add_argument("--alpha", type=float, default=0.05, help="Nemenyi level (default 0.05)")
    p.add_argument("--rope", type=float, default=0.01, help="ROPE half-width (default 0.01)")
    p.add_argument("--format", choices=("png", "pdf", "svg"), default="png", help="CD diagram format")
    add_health_argument(p)
    p.set_defaults(func=_stats)
