"""The ``bsym`` command line."""

from __future__ import annotations

import argparse
import sys

from bsym import __version__
from bsym.data.cli import BIDS_CONFOUNDS  # noqa: F401  (re-exported)

EXIT_BAD_INPUT = 2


def build_parser():
    parser = argparse.ArgumentParser(
        prog="bsym", description="Reproducible benchmarking of neuroimaging foundation models.")
    parser.add_argument("--version", action="version", version=f"bsym {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from bsym.data.cli import add_parser as add_data_parser
    add_data_parser(sub)
    from bsym.train.cli import add_parser as add_train_parser
    add_train_parser(sub)
    from bsym.models.cli import add_parser as add_models_parser
    add_models_parser(sub)
    from bsym.evaluate.cli import add_parser as add_evaluate_parser
    add_evaluate_parser(sub)
    from bsym.sweep.cli import add_parser as add_sweep_parser
    add_sweep_parser(sub)
    from bsym.stats.cli import add_parser as add_stats_parser
    add_stats_parser(sub)
    from bsym.report.cli import add_parser as add_report_parser
    add_report_parser(sub)
    from bsym.track.cli import add_parser as add_tracking_parser
    add_tracking_parser(sub)
    from bsym.batch import add_parser as add_batch_parser
    add_batch_parser(sub)
    return parser


def main(argv=None):
    return run_command(build_parser().parse_args(argv))


def run_command(args):
    """Run one parsed command; return its exit status (0, 2 for bad input, 130 when
    interrupted). An error the user can fix is one line on stderr, never a traceback."""
    from bsym.errors import BsymError

    try:
        args.func(args)
    except BsymError as err:
        print(f"bsym: error: {err}", file=sys.stderr)
        return getattr(err, "exit_status", EXIT_BAD_INPUT)
    except OSError as err:
        # A location the user chose failed at the system level (full disk, permissions):
        # still one line naming the file, never a traceback.
        from bsym.io import disk_error

        where = err.filename or "an output location"
        print(f"bsym: error: {disk_error(err, where, what='it', writing=False)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("bsym: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
