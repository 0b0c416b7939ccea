"""``bsym tracking init | leaderboard``: create the MLflow store and experiment once, before
parallel jobs; log a dataset's leaderboard run (leaderboard table, report, result table)."""

from __future__ import annotations

import json
from pathlib import Path

FORMAT = "bsym-tracking"


def record_is_ours(path) -> bool:
    """Whether ``path`` is a record ``bsym tracking init --out`` wrote (``format``
    ``bsym-tracking``, or an older one with exactly its keys)."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(payload, dict) and (
        payload.get("format") == FORMAT
        or set(payload) == {"tracking_uri", "experiment", "experiment_id"})


def _init(args):
    from bsym.io import atomic_write_text, guard_output
    from bsym.track import Tracker

    if args.out:
        guard_output(args.out, is_ours=record_is_ours, what="tracking record",
                     overwrite=True,
                     fix_other="choose another --out path, or move this file away yourself")
    tracker = Tracker(args.tracking_uri, args.experiment)
    record = {"format": FORMAT, "tracking_uri": args.tracking_uri,
              "experiment": args.experiment, "experiment_id": tracker.experiment_id}
    if args.out:
        atomic_write_text(args.out, json.dumps(record, indent=2) + "\n",
                          what="the tracking record")
    print(f"MLflow experiment {args.experiment!r} (id {record['experiment_id']}) at "
          f"{args.tracking_uri}")


def _leaderboard(args):
    from bsym.report.tracking import log_leaderboard
    from bsym.track import Tracker

    tracker = Tracker(args.tracking_uri, args.experiment).check_store()
    record = log_leaderboard(tracker, args.results, args.report_dir, dataset=args.dataset,
                             health=args.health, out=args.out)
    replaced = f"; replaced {len(record['replaced'])} earlier" if record["replaced"] else ""
    print(f"MLflow run {record['run_id']} {record['run_name']!r} (tag bsym.kind=leaderboard) "
          f"in experiment {args.experiment!r} at {args.tracking_uri}: "
          f"{len(record['artifacts'])} artifacts{replaced}")
    if args.tracking_uri.startswith("sqlite:///"):
        print(f"open it with: mlflow ui --backend-store-uri {args.tracking_uri} "
              "--host 127.0.0.1")


def add_parser(subparsers):
    from bsym.track import DEFAULT_EXPERIMENT, DEFAULT_URI

    p = subparsers.add_parser("tracking", help="the MLflow tracking store")
    sub = p.add_subparsers(dest="tracking_command", required=True, metavar="COMMAND")
    init = sub.add_parser(
        "init", help="create the store and experiment (once, before parallel jobs)",
        description="Create the MLflow tables and the experiment if they do not exist, and "
        "print the experiment id; parallel jobs started afterwards only read it.")
    init.add_argument("--tracking-uri", default=DEFAULT_URI,
                      help=f"tracking URI (default {DEFAULT_URI})")
    init.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    init.add_argument("--out", default=None, help="also write the id to this JSON file")
    init.set_defaults(func=_init)

    board = sub.add_parser(
        "leaderboard", help="log a dataset's leaderboard run (table, report, result table)",
        description="Log one MLflow run per dataset, named 'leaderboard: DATASET' and tagged "
        "bsym.kind=leaderboard, holding the leaderboard table (leaderboard.json, shown as a "
        "table in the MLflow UI), the report (report/: HTML, Markdown, figures, tables) and "
        "the result table (results/). Logging it again replaces the dataset's previous "
        "leaderboard run.")
    board.add_argument("--results", required=True,
                       help="the long result table the report was made from")
    board.add_argument("--report-dir", required=True, help="the --out folder of `bsym report`")
    board.add_argument("--dataset", default=None,
                       help="dataset of the leaderboard (default: the table's only dataset)")
    board.add_argument("--health", default=None,
                       help="training-health table (default: <table>_health.parquet beside "
                       "the result table, when present)")
    board.add_argument("--tracking-uri", default=DEFAULT_URI,
                       help=f"tracking URI (default {DEFAULT_URI})")
    board.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    board.add_argument("--out", default=None,
                       help="also write a JSON record of the run (id, replaced runs) here")
    board.set_defaults(func=_leaderboard)
    return p
