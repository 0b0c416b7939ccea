"""``bsym stats | leaderboard | report``: statistics, leaderboards and reports of a result table.

Importing this module imports neither pandas nor matplotlib; they load when a command runs.
"""

from __future__ import annotations

DEFAULT_RESULTS = "results/results.parquet"


def _csv(text):
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _metrics(values):
    out = []
    for value in values or ():
        out.extend(_csv(value))
    return out or None


def _read(path):
    from bsym.report.build import check_results, load_table

    return check_results(load_table(path), path)


def _health(args):
    from bsym.report.build import health_beside

    return args.health or health_beside(args.results)


def _stats(args):
    from bsym.report.build import run_stats

    table = _read(args.results)
    if args.protocol:
        table = table[table["protocol"].astype(str) == args.protocol]
    done = run_stats(table, _metrics(args.metric), args.out, alpha=args.alpha, rope=args.rope,
                     figure_format=args.format, health=_health(args), source=args.results)
    for name, path in done["written"].items():
        print(f"{name}: {path}")
    for text in done["notes"]:
        print(f"note: {text}")


def _leaderboard(args):
    from bsym.report.build import format_leaderboard, leaderboard, report_metrics

    if args.csv:
        _guard_leaderboard_csv(args.csv)
    table = _read(args.results)
    report_metrics(table, _metrics(args.metric), args.results)
    if args.protocol:
        table = table[table["protocol"].astype(str) == args.protocol]
    board = leaderboard(table, _metrics(args.metric), health=_health(args))
    print(format_leaderboard(board, digits=args.digits), end="")
    if args.csv:
        from bsym.outputs import write_csv

        write_csv(board, args.csv, what="the leaderboard table")
        print(f"leaderboard table: {args.csv}")


#: The first columns of every leaderboard CSV: its mark (CSV has no metadata).
LEADERBOARD_HEAD = ["protocol", "dataset", "task", "metric", "model", "n"]


def _guard_leaderboard_csv(path):
    from bsym.io import guard_output
    from bsym.outputs import csv_header

    guard_output(path, is_ours=lambda p: (csv_header(p) or [])[:6] == LEADERBOARD_HEAD,
                 what="leaderboard table", overwrite=True,
                 fix_other="choose another --csv path, or move this file away yourself")


def _report(args):
    from bsym.report.build import build_report

    done = build_report(args.results, args.out, metrics=_metrics(args.metric), netid=args.netid,
                        netid_figures=args.netid_figure, attention=args.attention,
                        health=args.health, loss_figures=args.loss_figure,
                        title=args.title, alpha=args.alpha, rope=args.rope)
    print(f"report: {done['html']} (self-contained) and {done['markdown']}; "
          f"{len(done['figures'])} figures, {len(done['tables'])} tables")
    for text in done["notes"]:
        print(f"note: {text}")


def _add_health(parser):
    parser.add_argument("--health", default=None,
                        help="training-health table (`bsym health`); models that did not learn "
                        "are marked '[did not learn]' (default: <table>_health.parquet beside "
                        "the result table, when present)")


def add_parser(subparsers):
    """Add ``stats``, ``leaderboard`` and ``report``."""
    p = subparsers.add_parser(
        "stats", help="pairwise and rank tests of a result table, with the CD diagram",
        description="Per dataset x task x protocol: corrected resampled t-test, Wilcoxon (Holm), "
        "Bayesian correlated t-test; per protocol: Friedman + Nemenyi and the critical-difference "
        "diagram. Writes pairwise_METRIC.csv, ranks_METRICS_PROTOCOL.csv and cd_METRICS_PROTOCOL.png.")
    p.add_argument("results", nargs="?", default=DEFAULT_RESULTS,
                   help=f"long result table (default {DEFAULT_RESULTS})")
    p.add_argument("--metric", action="append", required=True,
                   help="metric column, e.g. auroc; several (comma-separated or repeated): pairwise "
                   "tests per metric, and each task ranked by the first one it reports")
    p.add_argument("--out", default="results/stats", help="output folder (default results/stats)")
    p.add_argument("--protocol", default=None, help="only this protocol")
    p.add_argument("--alpha", type=float, default=0.05, help="Nemenyi level (default 0.05)")
    p.add_argument("--rope", type=float, default=0.01, help="ROPE half-width (default 0.01)")
    p.add_argument("--format", choices=("png", "pdf", "svg"), default="png", help="CD diagram format")
    _add_health(p)
    p.set_defaults(func=_stats)

    p = subparsers.add_parser(
        "leaderboard", help="model x task: mean ± sd over folds and seeds (and n), per protocol",
        description="Prints one block per protocol and dataset (protocols are never mixed), one "
        "model x task table per metric.")
    p.add_argument("results", nargs="?", default=DEFAULT_RESULTS,
                   help=f"long result table (default {DEFAULT_RESULTS})")
    p.add_argument("--metric", action="append", default=[],
                   help="metric(s), comma-separated or repeated (default all known in the table)")
    p.add_argument("--protocol", default=None, help="only this protocol")
    p.add_argument("--digits", type=int, default=3)
    p.add_argument("--csv", default=None, help="also write the leaderboard (mean, sd, CI) as CSV")
    _add_health(p)
    p.set_defaults(func=_leaderboard)

    p = subparsers.add_parser(
        "report", help="self-contained HTML report and Markdown summary of a result table",
        description="Opens with the verdict (each score beside its random-initialisation and "
        "shuffled-label controls and its model's training health), then training health and "
        "loss curves, the leaderboard with mean ± sd and 95%% CI, score against pretraining "
        "compute, per-fold strip plots, CD diagram, pairwise significance matrices, "
        "BrainSymphony fusion vs branches, linear probe vs fine-tuning, network "
        "identification, attention contrast, the published HCP-Aging table beside ours, and "
        "provenance. Sections without inputs are omitted with a note.")
    p.add_argument("--results", default=DEFAULT_RESULTS,
                   help=f"long result table (default {DEFAULT_RESULTS})")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--metric", action="append", default=[],
                   help="leaderboard metric(s) (default all known in the table)")
    p.add_argument("--netid", default=None,
                   help="network-identification table (CSV/Parquet; default: rows in --results)")
    p.add_argument("--netid-figure", action="append", default=[],
                   help="confusion-matrix figure from `bsym netid --figure` (repeatable)")
    p.add_argument("--attention", action="append", default=[],
                   help="contrast.csv/.parquet of `bsym attention`, or its --out folder "
                   "(repeatable: one per model)")
    _add_health(p)
    p.add_argument("--loss-figure", action="append", default=[],
                   help="loss-curve figure of a pretraining run (`bsym health --figure`; "
                   "repeatable)")
    p.add_argument("--title", default="bsym benchmark report")
    p.add_argument("--alpha", type=float, default=0.05, help="Nemenyi level (default 0.05)")
    p.add_argument("--rope", type=float, default=0.01, help="ROPE half-width (default 0.01)")
    p.set_defaults(func=_report)
