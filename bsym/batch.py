"""``bsym batch``: several ``bsym`` commands run in order in one Python process.

A workflow job that runs one short command per task spends much of its time starting
Python and importing torch, pandas, scikit-learn and MLflow; a batch pays that once. Each
command is parsed by bsym's own parser, all of them before the first one runs (a typo in
the last command fails the batch before any work), and runs as it would alone:

- the random streams of python, numpy and torch are reseeded from fresh entropy, as in a
  new process (every command seeds its own draws);
- torch's thread count, deterministic-algorithm switches and cuDNN flags, the warning
  filters, the environment variables and the working directory are put back after it.

The MLflow store of a tracking URI is opened once per process (MLflow caches it), so the
commands of a batch share one connection. The batch stops at the first command that
fails, names it, and exits with that command's status.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import sys
import warnings

from bsym.errors import BsymError, UsageError


class CommandFailed(BsymError):
    """A command of a batch failed; ``exit_status`` is its own exit status."""

    def __init__(self, message, exit_status):
        super().__init__(message)
        self.exit_status = exit_status


def add_parser(subparsers):
    """Add ``batch``."""
    p = subparsers.add_parser(
        "batch", help="run several bsym commands in order in one process",
        description="Run bsym commands one after the other in one Python process, each "
        "exactly as if it ran alone (same outputs; the random streams are reseeded and "
        "process-wide settings put back between commands), paying the start-up once. "
        "Every command is parsed before the first one runs. The batch stops at the first "
        "command that fails, names it, and exits with its status.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--command", dest="commands", action="append", metavar="COMMAND",
                        help="one command line without the leading 'bsym', as one "
                        "shell-quoted word, e.g. --command 'probe --features fc ...'; "
                        "repeat it for each command, run in the order given")
    source.add_argument("--commands-file", metavar="FILE",
                        help="a text file of commands, one per line, without the leading "
                        "'bsym' (blank lines and lines starting with # are skipped)")
    p.set_defaults(func=_batch)


def read_commands(path):
    """The command lines of a commands file: every line but blank and ``#`` lines."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except FileNotFoundError:
        raise UsageError(f"--commands-file {path}: no such file; expected a text file "
                         "with one bsym command per line") from None
    return [line for line in lines if line and not line.startswith("#")]


def parse_command(line, number, total):
    """The parsed arguments of one command line of a batch.

    Raises :class:`~bsym.errors.UsageError` naming the command when it does not parse (the
    parser has printed why), asks for help or the version, or is itself a batch.
    """
    from bsym.cli import build_parser

    where = f"batch: command {number} of {total} ({line!r})"
    try:
        words = shlex.split(line)
    except ValueError as err:
        raise UsageError(f"{where}: {err}; expected one shell-quoted command line") from None
    if words and words[0] == "batch":
        raise UsageError(f"{where}: a batch cannot run a batch; list its commands instead")
    try:
        return build_parser().parse_args(words)
    except SystemExit as exit_:
        raise UsageError(f"{where} does not parse (exit status {exit_.code}, see above); "
                         "expected the arguments of one bsym command") from None


@contextlib.contextmanager
def fresh_process_state():
    """Run the block as a new process would: fresh random streams; torch settings, warning
    filters, environment and working directory put back afterwards."""
    import numpy as np
    import torch

    random.seed()
    np.random.seed()
    torch.seed()
    saved_torch = _torch_settings(torch)
    saved_environ, saved_cwd = dict(os.environ), os.getcwd()
    try:
        with warnings.catch_warnings():
            yield
    finally:
        _restore_torch_settings(torch, saved_torch)
        if dict(os.environ) != saved_environ:
            os.environ.clear()
            os.environ.update(saved_environ)
        os.chdir(saved_cwd)


def _torch_settings(torch):
    return {
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "matmul_precision": torch.get_float32_matmul_precision(),
    }


def _restore_torch_settings(torch, saved):
    if torch.get_num_threads() != saved["threads"]:
        torch.set_num_threads(saved["threads"])
    torch.use_deterministic_algorithms(saved["deterministic"], warn_only=saved["warn_only"])
    torch.backends.cudnn.benchmark = saved["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = saved["cudnn_deterministic"]
    torch.set_float32_matmul_precision(saved["matmul_precision"])


def run_batch(lines):
    """Run command lines in order, each in a fresh process state; stop at the first failure.

    Parameters
    ----------
    lines : list of str
        Command lines without the leading ``bsym``.

    Raises
    ------
    CommandFailed
        When a command exits with a non-zero status (its message is already printed).
    UsageError
        When there is no command, or one does not parse (before any command runs).
    """
    from bsym.cli import run_command

    if not lines:
        raise UsageError("batch: no command given; expected at least one command line")
    total = len(lines)
    parsed = [parse_command(line, n, total) for n, line in enumerate(lines, 1)]
    for number, (line, args) in enumerate(zip(lines, parsed), 1):
        where = f"command {number} of {total}"
        _announce(f"bsym batch: {where}: {line}")
        try:
            with fresh_process_state():
                status = run_command(args)
        except SystemExit as exit_:
            status = _exit_status(exit_.code)
        except Exception as err:
            err.add_note(f"bsym batch: raised by {where}: {line}")
            raise
        finally:
            sys.stdout.flush()
        if status:
            raise CommandFailed(f"batch: {where} failed with exit status {status}, the "
                                f"later {total - number} not run: {line}", status)


def _exit_status(code):
    """The status a process ends with on ``sys.exit(code)`` (a message is printed, status 1)."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


def _announce(text):
    sys.stdout.flush()  # the commands' own output stays in order around the header
    print(text, file=sys.stderr, flush=True)


def _batch(args):
    lines = args.commands if args.commands is not None else read_commands(args.commands_file)
    run_batch(lines)
