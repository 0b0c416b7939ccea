"""The run directory: what makes a folder a bsym run, and whether a run may write one.

A run directory holds ``final.pt``, ``run.json`` (the run record), ``checkpoints/`` and
``snapshots/``. A folder that is not one (nor empty) is never written into.
"""

from __future__ import annotations

import json
from pathlib import Path

from bsym.io import CHECKSUM_SUFFIX, atomic_write_json, check_writable, guard_output
from bsym.train.checkpoint import (
    CHECKPOINT_DIR,
    FINAL_NAME,
    SNAPSHOT_DIR,
    RunExistsError,
    latest_checkpoint,
    list_checkpoints,
    list_snapshots,
)

RUN_SUMMARY = "run.json"
#: ``format`` of the run record (``run.json``), written when a run starts and completed
#: when it ends: what makes a folder a bsym run directory.
RUN_FORMAT = "bsym-run"


def is_run_dir(path) -> bool:
    """Whether ``path`` is a folder holding a run written by bsym.

    That is: it has the run record (``run.json``), or (a run of an older bsym stopped
    before its record) it holds run files only (``checkpoints/``, ``snapshots/``,
    ``final.pt``), at least one checkpoint among them.
    """
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    record = path / RUN_SUMMARY
    if record.is_file():
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and (
            data.get("format") == RUN_FORMAT or {"bsym_version", "model", "train_config"} <= set(data))
    names = {p.name for p in path.iterdir()}
    run_files = {CHECKPOINT_DIR, SNAPSHOT_DIR, FINAL_NAME, FINAL_NAME + CHECKSUM_SUFFIX}
    only_run_files = all(n in run_files or (n.startswith(".") and n.endswith(".tmp"))
                         for n in names)
    held = (path / FINAL_NAME).is_file() or list_checkpoints(path) or list_snapshots(path)
    return bool(only_run_files and held)


def check_run_dir(out_dir, *, resume=False):
    """Raise a clear error unless a run may write ``out_dir``; return the checkpoint to resume.

    An absent or empty folder starts a run. A folder that is not a bsym run directory is
    never written into, with or without ``resume``; a run directory needs ``resume``
    (which continues it from its newest checkpoint, or returns it when finished). A
    location that cannot be written is reported before any work starts.

    Returns
    -------
    Path or None
        ``final.pt`` or the newest periodic checkpoint to resume from.
    """
    if out_dir is None:
        if resume:
            raise ValueError("resume=True needs the out_dir of the run to continue")
        return None
    out_dir = Path(out_dir)
    empty = out_dir.is_dir() and not out_dir.is_symlink() and not any(out_dir.iterdir())
    if not empty:
        guard_output(out_dir, is_ours=is_run_dir, what="run directory", overwrite=True,
                     flag="--resume", fix_other="choose a new or empty --out folder for the "
                     "run (bsym writes final.pt, run.json, checkpoints/ and snapshots/ there)")
    check_writable(out_dir / RUN_SUMMARY, fix="choose an --out folder you can write to")
    if resume:
        final = out_dir / FINAL_NAME
        return final if final.exists() else latest_checkpoint(out_dir)
    held = [p for p in (out_dir / FINAL_NAME, out_dir / RUN_SUMMARY) if p.exists()]
    held += [p for _, p in list_checkpoints(out_dir) + list_snapshots(out_dir)]
    if held:
        finished = (out_dir / FINAL_NAME).exists()
        raise RunExistsError(
            f"{out_dir} already holds a {'finished' if finished else 'started'} run "
            f"({held[0].name}); nothing was overwritten. Fix: pass resume=True (--resume) to "
            f"{'reuse' if finished else 'continue'} it, or choose another output directory")
    return None


def resume_fix(path, out_dir):
    """What to do about a damaged checkpoint met when resuming."""
    if path.name == FINAL_NAME:
        return (f"restore it (with its {CHECKSUM_SUFFIX} file) from a copy, or move it away "
                "and resume again (the run then continues from its newest checkpoint)")
    return (f"restore it (with its {CHECKSUM_SUFFIX} file) from a copy, or move it and its "
            f"{CHECKSUM_SUFFIX} file out of {out_dir / CHECKPOINT_DIR} and resume again (the "
            "run then continues from the checkpoint before it)")


def write_run_record(out_dir, record):
    """Write ``record`` to ``out_dir/run.json`` atomically, its keys in reading order."""
    return atomic_write_json(Path(out_dir) / RUN_SUMMARY, record, what="the run record",
                             indent=2, sort_keys=False)
