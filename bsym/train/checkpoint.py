"""Atomic training checkpoints, loaded with ``torch.load(..., weights_only=True)``.

A checkpoint is a dict of tensors, plain containers and primitive values only:
model and optimizer state, schedule, RNG states, position in the data stream,
step and stage, the training config, the model's name/preset/config, the data
description (ROI count, window, manifest hash) and the bsym version.

Every checkpoint bsym writes has its SHA-256 recorded beside it in ``<file>.sha256`` (one
``sha256sum`` line); :func:`load_checkpoint` checks it before reading, so a changed byte is
an error naming the file, never silently different weights. A run directory copied or
moved whole keeps verifying. A checkpoint without that record (written before bsym kept
one, or separated from it) is refused, with the fix.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bsym.errors import BsymError
from bsym.io import atomic_checksummed_path, checksum_path, read_verified

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
    """Write ``state`` to ``path`` atomically, with its SHA-256 in ``<path>.sha256``.

    The file is written whole beside ``path`` and then renamed over it, so a full disk,
    a permission problem or a killed process leaves any previous file (and its record)
    intact and no temporary file behind; an ``OSError`` becomes a
    :class:`~bsym.errors.BsymError` naming ``path`` and the cause.
    """
    path = Path(path)
    state = to_plain(state, str(path))
    buffer = io.BytesIO()  # serialised first: torch.save hides a full disk's ENOSPC
    torch.save(state, buffer)
    with atomic_checksummed_path(path, what="the checkpoint") as tmp:
        with open(tmp, "wb") as handle:
            handle.write(buffer.getbuffer())
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
        checksum_path(path).unlink(missing_ok=True)
    return removed


# -- reading and checking -----------------------------------------------------------------
#: What to do about a damaged checkpoint, unless the caller knows better.
DAMAGED_FIX = ("restore it (with its .sha256) from a copy, or rerun `bsym pretrain` to "
               "write it again")


def load_checkpoint(path, *, map_location="cpu", fix=DAMAGED_FIX) -> dict:
    """Read a checkpoint with ``weights_only=True``, after checking its recorded SHA-256.

    Parameters
    ----------
    path : str or Path
    map_location : str
    fix : str
        The advice in the message when the file is damaged (a resume says which
        checkpoint to fall back to).

    Raises
    ------
    CheckpointError
        The file is missing, a folder, changed since bsym wrote it (checksum mismatch),
        truncated or corrupt, holds objects a safe load refuses, is not a bsym
        checkpoint, or has no recorded SHA-256.
    """
    path = Path(path)
    _check_is_file(path)
    obj, digest = _read_safely(path, map_location, fix)
    _check_format(obj, path)
    if digest is None:
        sidecar = checksum_path(path)
        raise CheckpointError(
            f"{path}: no recorded SHA-256 ({sidecar.name} is missing beside it), so bsym "
            "cannot tell whether the file changed since it was written (checkpoints written "
            "before bsym kept these records have none). Fix: restore " + sidecar.name + " from where the "
            "checkpoint came from (copy a run directory whole); if you trust this file, "
            f"record its hash yourself (`sha256sum {path.name} > {sidecar.name}` in its "
            "folder); or rerun `bsym pretrain`")
    return obj


def _check_is_file(path):
    if path.is_dir():
        final = path / FINAL_NAME
        hint = (f"give the file {final}" if final.is_file() else
                f"it holds no {FINAL_NAME}, so it is not a finished `bsym pretrain` run; give "
                f"a run's {FINAL_NAME} (finish an interrupted run with `bsym pretrain ... "
                "--resume`)")
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file. Fix: {hint}")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file. Fix: give the {FINAL_NAME} "
                              "of a `bsym pretrain` run (RUN/final.pt)")


def _read_safely(path, map_location, fix):
    """``(object, recorded SHA-256 or None)``: the verified bytes, read by a safe load."""
    try:
        data, digest = read_verified(path, what="a checkpoint", fix=fix)
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True), digest
    except BsymError as err:
        raise CheckpointError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - a damaged file raises many kinds of error
        detail = _unpickler_detail(err)
        if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in detail:
            raise CheckpointError(
                f"{path}: refused by torch.load(weights_only=True): it holds objects other than "
                f"tensors and plain containers ({detail}); expected a checkpoint written by "
                "bsym.train. Fix: give a checkpoint written by `bsym pretrain`") from None
        raise CheckpointError(
            f"{path}: cannot be read, the file is truncated or corrupt ({type(err).__name__}: "
            f"{detail}); expected a checkpoint written by bsym.train (a `bsym pretrain` "
            f"run's {FINAL_NAME}). Fix: give a checkpoint written by bsym; if this was one, "
            f"{fix}") from None


def _check_format(obj, path):
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        got = f"format={obj.get('format')!r}" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not a bsym checkpoint: expected a dict with "
                              f"format={FORMAT!r}, received {got}. Fix: give a checkpoint "
                              f"written by `bsym pretrain` (RUN/{FINAL_NAME})")
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {obj['format_version']} is "
                              f"newer than this bsym reads ({FORMAT_VERSION}). Fix: upgrade "
                              "bsym")


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
            f"expected model {here['name']!r} (preset {here['preset']!r}). Fix: ask for "
            f"--model {stored['name']} --preset {stored['preset']}, or use another output "
            "directory for the other model")
    diffs = _differences(stored["config"], here["config"])
    if diffs:
        shown = "; ".join(f"{k}: checkpoint {_show(a)}, expected {_show(b)}" for k, a, b in diffs)
        raise CheckpointError(f"{path}: model {here['name']!r} config differs from the "
                              f"checkpoint's: {shown}. Fix: use the checkpoint's settings, or "
                              "another output directory for the new ones")


def check_data(ckpt, path, *, n_rois=None, window=None, manifest_hash=None):
    """Raise :class:`CheckpointError` unless the data matches what the checkpoint saw.

    ROI count and window length must match; a data-manifest hash is compared when
    both sides know one.
    """
    data = ckpt.get("data") or {}
    for key, value, what in (("n_rois", n_rois, "ROIs"), ("window", window, "time points")):
        if value is not None and data.get(key) is not None and int(data[key]) != int(value):
            option = "--window" if key == "window" else "--data"
            raise CheckpointError(f"{path}: checkpoint expects {data[key]} {what} ({key}); the "
                                  f"data gives {value}. Fix: use the {option} the checkpoint "
                                  "was made with, or another output directory")
    stored = data.get("manifest_hash")
    if manifest_hash and stored and stored != manifest_hash:
        raise CheckpointError(f"{path}: checkpoint was trained on data with manifest "
                              f"{stored[:12]}...; the data given has manifest "
                              f"{manifest_hash[:12]}... (another or a changed cohort store). "
                              "Fix: use the store the run was started on, or another output "
                              "directory")


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
        model = _rebuild(ckpt, path)
    check_model(ckpt, model, path)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=strict)
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: weights do not fit model {ckpt['model']['name']!r}: "
                              f"{str(err).strip()[:300]}. Fix: give a checkpoint written for "
                              "this model, or the bsym version that wrote it") from None
    return model, ckpt


def _rebuild(ckpt, path):
    """The checkpoint's model, built through the registry from its name, preset and config."""
    from bsym.models import build

    try:
        stored = ckpt["model"]
        return build(stored["name"], preset=stored["preset"] or "tiny", **stored["config"])
    except KeyError as err:  # an unknown model or preset
        raise CheckpointError(f"{path}: cannot rebuild the checkpoint's model: {err.args[0]}. "
                              "Fix: install the package that provides it (`bsym models list` "
                              "shows what is installed)") from None
    except (TypeError, ValueError) as err:  # a config this version's model does not take
        raise CheckpointError(f"{path}: cannot rebuild model {stored.get('name')!r} from the "
                              f"checkpoint's config ({err}). Fix: use the bsym version that "
                              f"wrote it ({ckpt.get('bsym_version')})") from None


def check_fits_store(ckpt, path, cohort, subjects=None):
    """Raise :class:`CheckpointError` unless the store's data can go through the checkpoint.

    The store must have the checkpoint's ROI count (its atlas) and scans (of ``subjects``,
    default all) at least as long as its window; the message names the checkpoint, the
    store, both values and the fix.
    """
    data = ckpt.get("data") or {}
    config = (ckpt.get("model") or {}).get("config") or {}
    n_rois = data.get("n_rois") or config.get("n_rois")
    store = cohort.path
    if n_rois is not None and int(n_rois) != int(cohort.n_rois):
        raise CheckpointError(
            f"{path}: the checkpoint was trained on {int(n_rois)} ROIs, but the store {store} "
            f"has {cohort.n_rois} ROIs; a model takes data of its own atlas only. Fix: use a "
            f"store made with the checkpoint's {int(n_rois)}-ROI atlas, or pretrain a model on "
            f"this store (`bsym pretrain --data {store} ...`)")
    dataset = data.get("dataset") or {}
    window, target_tr = data.get("window") or dataset.get("window"), dataset.get("tr")
    table = cohort.subjects
    if subjects is not None:
        table = table[table["subject"].astype(str).isin({str(s) for s in subjects})]
    if window and len(table) and {"n_timepoints", "tr"} <= set(table.columns):
        _check_scans_long_enough(table, int(window), target_tr, path, store)


def _check_scans_long_enough(table, window, target_tr, path, store):
    """Every scan of ``table`` holds a ``window`` (after resampling to ``target_tr``)."""
    from bsym.data.preprocess import resampled_length

    points = table["n_timepoints"].astype(int)
    if target_tr:  # resampled to the run's TR first, as the windows are cut
        points = pd.Series([resampled_length(int(n), float(tr), float(target_tr))
                            for n, tr in zip(table["n_timepoints"], table["tr"], strict=True)],
                           index=table.index)
    short = table.loc[points < window, "scan"].astype(str).tolist()
    if short:
        more = ", ..." if len(short) > 3 else ""
        raise CheckpointError(
            f"{path}: the checkpoint takes {window}-point windows, but {len(short)} "
            f"scan(s) of the store {store} are shorter (shortest {int(points.min())} "
            f"points: {', '.join(short[:3])}{more}). Fix: leave those subjects out "
            "(`--subjects-file` of `bsym embed` / `bsym health`), or use a checkpoint "
            "pretrained with a shorter --window")
