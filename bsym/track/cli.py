"""``bsym tracking init``: create the MLflow store and experiment once, before parallel jobs."""

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
    return p
