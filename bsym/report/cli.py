"""``bsym leaderboard | report``: leaderboards and reports of a result table.

Importing this module imports neither pandas nor matplotlib; they load when a command runs.
"""

from __future__ import annotations

from bsym.stats.cli import (
    DEFAULT_RESULTS,
    add_health_argument,
    add_results_argument,
    health_table,
    metric_list,
)

#: The first columns of every leaderboard CSV: its mark (CSV has no metadata).
LEADERBOARD_HEAD = ["protocol", "dataset", "task", "metric", "model", "n"]


def _leaderboard(args):
    from bsym.report.board import format_leaderboard, leaderboard, report_metrics
    from bsym.stats.table import read_results

    if args.csv:
        _guard_leaderboard_csv(args.csv)
    table = read_results(args.results)
    report_metrics(table, metric_list(args.metric), args.results)
    if args.protocol:
        table = table[table["protocol"].astype(str) == args.protocol]
    board = leaderboard(table, metric_list(args.metric), health=health_table(args))
    print(format_leaderboard(board, digits=args.digits), end="")
    if args.csv:
        from bsym.outputs import write_csv

        write_csv(board, args.csv, what="the leaderboard table")
        print(f"leaderboard table: {args.csv}")


def _guard_leaderboard_csv(path):
    from bsym.io import guard_output
    from bsym.outputs import csv_header

    guard_output(path, is_ours=lambda p: (csv_header(p) or [])[:6] == LEADERBOARD_HEAD,
                 what="leaderboard table", overwrite=True,
                 fix_other="choose another --csv path, or move this file away yourself")


def _report(args):
    from bsym.report.build import build_report

    done = build_report(args.results, args.out, metrics=metric_list(args.metric),
                        netid=args.netid, netid_figures=args.netid_figure,
                        attention=args.attention, health=args.health,
                        loss_figures=args.loss_figure, title=args.title, alpha=args.alpha,
                        rope=args.rope)
    print(f"report: {done['html']} (self-contained) and {done['markdown']}; "
          f"{len(done['figures'])} figures, {len(done['tables'])} tables")
    for text in done["notes"]:
        print(f"note: {text}")


def _add_leaderboard_parser(subparsers):
    p = subparsers.add_parser(
        "leaderboard", help="model x task: mean ± sd over folds and seeds (and n), per protocol",
        description="Prints one block per protocol and dataset (protocols are never mixed), one "
        "model x task table per metric.")
    add_results_argument(p)
    p.add_argument("--metric", action="append", default=[],
                   help="metric(s), comma-separated or repeated (default all known in the table)")
    p.add_argument("--protocol", default=None, help="only this protocol")
    p.add_argument("--digits", type=int, default=3)
    p.add_argument("--csv", default=None, help="also write the leaderboard (mean, sd, CI) as CSV")
    add_health_argument(p)
    p.set_defaults(func=_leaderboard)


def _add_report_parser(subparsers):
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
    add_health_argument(p)
    p.add_argument("--loss-figure", action="append", default=[],
                   help="loss-curve figure of a pretraining run (`bsym health --figure`; "
                   "repeatable)")
    p.add_argument("--title", default="bsym benchmark report")
    p.add_argument("--alpha", type=float, default=0.05, help="Nemenyi level (default 0.05)")
    p.add_argument("--rope", type=float, default=0.01, help="ROPE half-width (default 0.01)")
    p.set_defaults(func=_report)


def add_parser(subparsers):
    """Add ``leaderboard`` and ``report`` (``stats`` is :mod:`bsym.stats.cli`)."""
    _add_leaderboard_parser(subparsers)
    _add_report_parser(subparsers)
