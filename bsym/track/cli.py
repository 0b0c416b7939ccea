"""``bsym tracking init``: create the MLflow store and experiment once, before parallel jobs."""

from __future__ import annotations

import json
import os
from pathlib import Path


def _init(args):
    from bsym.track import Tracker

    tracker = Tracker(args.tracking_uri, args.experiment)
    record = {"tracking_uri": args.tracking_uri, "experiment": args.experiment,
              "experiment_id": tracker.experiment_id}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, out)
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
