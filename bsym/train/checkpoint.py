"""Atomic training checkpoints, loaded with ``torch.load(..., weights_only=True)``.

A checkpoint is a dict of tensors, plain containers and primitive values only:
model and optimizer state, schedule, RNG states, position in the data stream,
step and stage, the training config, the model's name/preset/config, the data
description (ROI count, window, manifest hash) and the bsym version.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from bsym.errors import BsymError
from bsym.io import fsync_dir

FORMAT = "bsym-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
#: Kept weights at chosen fractions of a run (never pruned): the initial weights (the
#: random-initialisation control) and the points of the score-against-compute curve.
SNAPSHOT_DIR = "snapshots"
FINAL_NAME = "final.pt"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(BsymError, ValueError):
    """A checkpoint that cannot be used: unreadable, or made for other data or another model."""


class RunExistsError(BsymError, FileExistsError):
    """The output directory already holds a run (and resuming was not asked for)."""


# -- plain data ---------------------------------------------------------------------------
def to_plain(obj, where="checkpoint"):
    """``obj`` with numpy scalars/arrays made plain; raise on anything not loadable safely.

    Allowed: tensors, None, bool, int, float, str, bytes, and dicts / lists / tuples of
    those (what ``torch.load(weights_only=True)`` accepts without extra globals).
    """
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; checkpoints "
                                "keep str or int keys only")
            out[key] = to_plain(value, f"{where}[{key!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        items = [to_plain(value, f"{where}[{i}]") for i, value in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"{where} is a {type(obj).__name__}; checkpoints keep tensors, plain "
                    "containers and primitive values only (loadable with weights_only=True)")


# -- writing ------------------------------------------------------------------------------
def save_checkpoint(state, path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, then rename).

    A process killed mid-write leaves the previous file intact and at most a hidden
    ``.*.tmp`` file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = to_plain(state, str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def checkpoint_path(out_dir, step) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / f"step-{int(step):08d}.pt"


def _step_files(folder) -> list:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def list_checkpoints(out_dir) -> list:
    """``[(step, path), ...]`` of a run's periodic checkpoints, oldest first."""
    return _step_files(Path(out_dir) / CHECKPOINT_DIR)


def snapshot_path(out_dir, step) -> Path:
    return Path(out_dir) / SNAPSHOT_DIR / f"step-{int(step):08d}.pt"


def list_snapshots(out_dir) -> list:
    """``[(step, path), ...]`` of a run's kept snapshots, oldest first."""
    return _step_files(Path(out_dir) / SNAPSHOT_DIR)


def latest_checkpoint(out_dir):
    """Path of the newest periodic checkpoint of a run, or None."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def prune_checkpoints(out_dir, keep) -> list:
    """Delete all but the newest ``keep`` checkpoints (and stale temp files); return removed."""
    found = list_checkpoints(out_dir)
    removed = [p for _, p in found[:-keep]] if keep and keep > 0 else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


# -- reading and checking -----------------------------------------------------------------
def load_checkpoint(path, *, map_location="cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``.

    Raises
    ------
    CheckpointError
        The file is missing, truncated or corrupt, holds objects a safe load refuses,
        or is not a bsym checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged file raises many kinds of error
        detail = _unpickler_detail(err)
        if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in detail:
            raise CheckpointError(
                f"{path}: refused by torch.load(weights_only=True): it holds objects other than "
                f"tensors and plain containers ({detail}); expected a checkpoint written by "
                "bsym.train") from None
        raise CheckpointError(
            f"{path}: cannot be read, the file is truncated or corrupt ({type(err).__name__}: "
            f"{detail}); expected a checkpoint written by bsym.train; delete it (a resume then "
            "starts from the previous checkpoint)") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        got = f"format={obj.get('format')!r}" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not a bsym checkpoint: expected a dict with "
                              f"format={FORMAT!r}, received {got}")
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {obj['format_version']} is "
                              f"newer than this bsym reads ({FORMAT_VERSION}); upgrade bsym")
    return obj


def _unpickler_detail(err) -> str:
    """The informative line of a torch.load error (its weights-only messages are long)."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if found:
        return found.group(1).strip().split(" was not an allowed")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no detail"


def model_identity(model) -> dict:
    """Name, preset, class and constructor config of a model, as stored in checkpoints."""
    return {"name": getattr(model, "name", None) or type(model).__name__,
            "preset": getattr(model, "preset", None),
            "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "config": to_plain(dict(getattr(model, "config", None) or {}), "model config")}


def _differences(expected, received):
    keys = sorted(set(expected) | set(received), key=str)
    missing = object()
    return [(k, expected.get(k, missing), received.get(k, missing)) for k in keys
            if expected.get(k, missing) != received.get(k, missing)]


def _show(value):
    return "(absent)" if type(value) is object else repr(value)


def check_model(ckpt, model, path):
    """Raise :class:`CheckpointError` unless ``ckpt`` was written for this model."""
    stored, here = ckpt["model"], model_identity(model)
    if (stored["name"], stored["preset"]) != (here["name"], here["preset"]):
        raise CheckpointError(
            f"{path}: checkpoint is for model {stored['name']!r} (preset {stored['preset']!r}); "
            f"expected model {here['name']!r} (preset {here['preset']!r})")
    diffs = _differences(stored["config"], here["config"])
    if diffs:
        shown = "; ".join(f"{k}: checkpoint {_show(a)}, expected {_show(b)}" for k, a, b in diffs)
        raise CheckpointError(f"{path}: model {here['name']!r} config differs from the "
                              f"checkpoint's: {shown}")


def check_data(ckpt, path, *, n_rois=None, window=None, manifest_hash=None):
    """Raise :class:`CheckpointError` unless the data matches what the checkpoint saw.

    ROI count and window length must match; a data-manifest hash is compared when
    both sides know one.
    """
    data = ckpt.get("data") or {}
    for key, value, what in (("n_rois", n_rois, "ROIs"), ("window", window, "time points")):
        if value is not None and data.get(key) is not None and int(data[key]) != int(value):
            raise CheckpointError(f"{path}: checkpoint expects {data[key]} {what} ({key}); the "
                                  f"data gives {value}")
    stored = data.get("manifest_hash")
    if manifest_hash and stored and stored != manifest_hash:
        raise CheckpointError(f"{path}: checkpoint was trained on data with manifest "
                              f"{stored[:12]}...; the data given has manifest "
                              f"{manifest_hash[:12]}... (another or a changed cohort store)")


def load_trained(path, model=None, *, map_location="cpu", strict=True):
    """Load trained weights: ``(model, checkpoint)``.

    Parameters
    ----------
    path : str or Path
        A ``final.pt`` or periodic checkpoint.
    model : BrainModel, optional
        Load into this model (checked against the checkpoint's name, preset and config).
        Default: rebuild it from the registry with the stored name, preset and config.
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    if model is None:
        from bsym.models import build

        stored = ckpt["model"]
        model = build(stored["name"], preset=stored["preset"] or "tiny", **stored["config"])
    check_model(ckpt, model, path)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=strict)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit model {ckpt['model']['name']!r}: "
                              f"{err}") from None
    return model, ckpt
