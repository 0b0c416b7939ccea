"""Frozen-encoder embeddings of every scan, saved per scan and pooled per subject.

Each scan is cut into the model's windows (non-overlapping by default, plus one window
ending at the scan's last point when the grid leaves a remainder, so the windows tile the
whole scan), scaled with the checkpoint's robust scaler and embedded; a scan's embedding is
the mean over its windows (the subject vector, and the ROI embeddings where the model has
them). A subject's embedding is the window-weighted mean over its scans (all windows and
sessions).

Beside them a file keeps each view's *position-only* ROI embeddings: what the model gives
for an input whose data are all zeros (after scaling), i.e. what its ROI identity alone
(a learned or fixed position code) carries. Network identification scores them as a
control. :func:`embed_run` embeds a pretraining run's final weights and every kept
snapshot (the initial weights: the random-initialisation control; earlier steps: the
score-against-compute curve), and each file records which point of the run it is and the
run's budget up to it.

A saved file (``.npz``) holds every view of a multi-view model and is keyed by the
checkpoint's SHA-256, the data-manifest hash, the view and the windowing: a changed
checkpoint or store never reuses it (:func:`embed_checkpoint` recomputes). Its SHA-256 is
recorded beside it in ``<file>.sha256`` and checked on every read: a changed byte is an
error naming the file. A file without that record (written before bsym kept one) is
refused by the readers and recomputed by ``bsym embed``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bsym import __version__
from bsym.errors import BsymError
from bsym.evaluate import EvaluationError
from bsym.evaluate.results import config_hash
from bsym.io import (
    CHECKSUM_SUFFIX,
    atomic_checksummed_path,
    check_writable,
    checksum_path,
    file_sha256,
    guard_output,
    read_verified,
)

FORMAT = "bsym-embeddings"
FORMAT_VERSION = 1
DEFAULT_VIEW = "default"
_SEP = "__"


class EmbeddingError(EvaluationError):
    """Embeddings that do not fit the request (another dataset, view or checkpoint)."""


@dataclass
class EmbeddingSet:
    """Per-scan embeddings of one or more views.

    Attributes
    ----------
    scans : DataFrame
        One row per scan: ``scan``, ``subject``, ``session``, ``site``, ``n_windows``.
    views : dict
        View name -> ``{"subject": (n_scans, D) array, "roi": (n_scans, R, D) array or None,
        "position": (R, D) array or None}`` (position-only ROI embeddings, when kept).
    meta : dict
        ``manifest_hash``, ``checkpoint_sha256`` (None for plain features), ``model``,
        ``window``, ``keys`` (view -> cache key), ...
    """

    scans: pd.DataFrame
    views: dict
    meta: dict = field(default_factory=dict)

    def __repr__(self):
        shapes = {k: v["subject"].shape[1] for k, v in self.views.items()}
        return (f"EmbeddingSet({len(self.scans)} scans, views {shapes}, model "
                f"{self.meta.get('model')!r}, manifest {str(self.manifest_hash)[:12]})")

    @property
    def manifest_hash(self) -> str:
        return self.meta.get("manifest_hash")

    @property
    def model(self) -> str:
        return str(self.meta.get("model") or "unknown")

    def key(self, view=None) -> str:
        """The cache key of a view (checkpoint, data, view and windowing)."""
        return self.meta["keys"][self.view_name(view)]

    def view_name(self, view=None) -> str:
        """Resolve ``view``: None picks the only view, or ``fusion`` when there are several."""
        if view is None:
            if len(self.views) == 1:
                return next(iter(self.views))
            if "fusion" in self.views:
                return "fusion"
            raise EmbeddingError(f"{self.meta.get('path') or 'the embeddings'}: several views "
                                 f"{sorted(self.views)}. Fix: name one (view=... / --view)")
        if view not in self.views:
            raise EmbeddingError(f"{self.meta.get('path') or 'the embeddings'}: no view {view!r}; "
                                 f"expected one of {sorted(self.views)}. Fix: pass --view "
                                 f"{sorted(self.views)[0]} (or another listed view)")
        return view

    def check_cohort(self, cohort):
        """Raise :class:`EmbeddingError` unless these embeddings come from ``cohort``."""
        if self.manifest_hash != cohort.manifest_hash:
            raise EmbeddingError(
                f"embeddings {self.meta.get('path') or ''} were computed on data with manifest "
                f"{str(self.manifest_hash)[:12]}..., but the store {cohort.path} has manifest "
                f"{cohort.manifest_hash[:12]}...; expected embeddings of this store. Fix: "
                f"rerun `bsym embed` on {cohort.path}, or give the store these were made from")
        known = set(cohort.subjects["scan"])
        unknown = sorted(set(self.scans["scan"]) - known)
        if unknown:
            raise EmbeddingError(f"{self.meta.get('path') or 'embeddings'}: embedded scans not in "
                                 f"{cohort.path}: {', '.join(unknown[:3])}. Fix: rerun "
                                 f"`bsym embed` on {cohort.path}")
        return self

    def scan_features(self, view=None):
        """``(X, table)``: one row per scan (mean over its windows)."""
        return self.views[self.view_name(view)]["subject"], self.scans.reset_index(drop=True)

    def subject_features(self, view=None, subjects=None):
        """``(X, subjects)``: the window-weighted mean over each subject's scans."""
        x = self.views[self.view_name(view)]["subject"]
        return _pool(x, self.scans, subjects)

    def roi(self, view=None):
        """ROI embeddings per scan, (n_scans, R, D); error when the model has none."""
        name = self.view_name(view)
        roi = self.views[name].get("roi")
        if roi is None:
            raise EmbeddingError(f"view {name!r} of model {self.model!r} has no ROI embeddings; "
                                 "network identification needs them")
        return roi

    def position(self, view=None):
        """Position-only ROI embeddings (R, D) of a view, or None when not kept."""
        return self.views[self.view_name(view)].get("position")

    @property
    def pretrain(self) -> dict:
        """Which point of a pretraining run the weights are (``label``: ``final`` or
        ``step<N>``, ``step``, ``fraction``, ``budget``); empty for plain features."""
        return dict(self.meta.get("pretrain") or {})

    @property
    def checkpoint_label(self) -> str:
        """``final``, or ``step<N>`` for a snapshot (``step0``: the initial weights)."""
        return str(self.pretrain.get("label") or "final")

    @property
    def is_random_init(self) -> bool:
        """Whether these are the untrained initial weights of a run (step 0)."""
        return self.pretrain.get("step") == 0

    def subject_roi(self, view=None, subjects=None):
        """``(R x D per subject, subjects)``: ROI embeddings pooled per subject."""
        roi = self.roi(view)
        pooled, subjects = _pool(roi.reshape(len(roi), -1), self.scans, subjects)
        return pooled.reshape(len(subjects), *roi.shape[1:]), subjects

    # -- files -----------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write an ``.npz`` file atomically (no pickled objects), with its SHA-256 in
        ``<path>.sha256``; a full disk leaves any previous file intact."""
        path = Path(path)
        arrays = {c: np.array(self.scans[c].astype(str).tolist(), dtype=str) for c in
                  ("scan", "subject", "session", "site")}
        arrays["n_windows"] = self.scans["n_windows"].to_numpy(dtype=np.int64)
        for name, view in self.views.items():
            if _SEP in name:
                raise EmbeddingError(f"view names may not contain {_SEP!r}: {name!r}")
            arrays[f"view{_SEP}{name}{_SEP}subject"] = np.asarray(view["subject"], np.float32)
            for kind in ("roi", "position"):
                if view.get(kind) is not None:
                    arrays[f"view{_SEP}{name}{_SEP}{kind}"] = np.asarray(view[kind], np.float32)
        meta = {k: v for k, v in self.meta.items() if k != "path"}
        arrays["meta"] = np.array(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                                              **meta}, default=str))
        with atomic_checksummed_path(path, what="the embeddings file") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
        self.meta["path"] = str(path)
        return path


def _pool(x, scans, subjects=None):
    weights = scans["n_windows"].to_numpy(dtype=float)
    order = subjects if subjects is not None else sorted(scans["subject"].unique())
    index = {s: i for i, s in enumerate(order)}
    rows = scans["subject"].map(index)
    keep = rows.notna().to_numpy()  # scans of other subjects are left out
    missing = sorted(set(order) - set(scans["subject"]))
    if missing:
        raise EmbeddingError(f"no embeddings for subject(s) {', '.join(map(str, missing[:5]))}; "
                             "expected every requested subject to have at least one scan")
    rows = rows[keep].astype(int).to_numpy()
    x = np.asarray(x, dtype=np.float64)[keep]
    w = weights[keep]
    sums = np.zeros((len(order), x.shape[1]))
    np.add.at(sums, rows, x * w[:, None])
    totals = np.bincount(rows, weights=w, minlength=len(order))
    return sums / totals[:, None], list(order)


def _damaged_fix(path):
    return (f"restore it (with its {CHECKSUM_SUFFIX} file) from a copy, or rerun `bsym embed` "
            f"with --out {path} --force to recompute it")


def _verified(path, fix):
    """``(bytes, digest)`` of an embeddings file read once and checked against its recorded
    SHA-256 (``digest`` None when not recorded)."""
    try:
        return read_verified(path, what="an embeddings file", fix=fix)
    except BsymError as err:
        raise EmbeddingError(str(err)) from None


def _read_meta(path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"]))


def is_embeddings_file(path) -> bool:
    """Whether ``path`` is an embeddings file written by ``bsym embed`` (by its content)."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        meta = _read_meta(path)
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _read_embeddings(path, content=None) -> EmbeddingSet:
    """Parse an embeddings file (from ``content``, its bytes, when already read); the
    recorded SHA-256 is the caller's to check."""
    try:
        with np.load(io.BytesIO(content) if content is not None else path,
                     allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            scans = pd.DataFrame({c: data[c].astype(str) for c in
                                  ("scan", "subject", "session", "site")})
            scans["n_windows"] = data["n_windows"].astype(int)
            views = {}
            for key in data.files:
                if not key.startswith(f"view{_SEP}"):
                    continue
                _, name, kind = key.split(_SEP)
                views.setdefault(name, {"subject": None, "roi": None})[kind] = data[key]
    except Exception as err:  # noqa: BLE001 - a damaged or foreign file raises many kinds
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else "no detail"
        raise EmbeddingError(f"{path}: cannot read embeddings ({type(err).__name__}: {detail}); "
                             "expected an .npz file written by `bsym embed`. Fix: give a file "
                             "written by `bsym embed`; if this was one, "
                             f"{_damaged_fix(path)}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise EmbeddingError(f"{path}: expected format {FORMAT!r}, received {got!r}. Fix: "
                             "give an embeddings file written by `bsym embed`")
    meta["path"] = str(path)
    return EmbeddingSet(scans=scans, views=views, meta=meta)


def load_embeddings(path, *, cohort=None) -> EmbeddingSet:
    """Read an embeddings file after checking its recorded SHA-256; with ``cohort``, check
    it was computed on that store.

    Raises
    ------
    EmbeddingError
        The file is missing, changed since bsym wrote it (checksum mismatch), unreadable,
        not written by ``bsym embed``, has no recorded SHA-256, or (with ``cohort``) was
        computed on another store.
    """
    path = Path(path)
    if path.is_dir():
        raise EmbeddingError(f"{path}: is a folder, expected an embeddings file. Fix: give a "
                             f"file in it (e.g. {path / 'final.npz'})")
    if not path.is_file():
        raise EmbeddingError(f"{path}: no such embeddings file. Fix: make it with `bsym embed` "
                             "(--out), or give the path it was written to")
    content, digest = _verified(path, _damaged_fix(path))
    out = _read_embeddings(path, content)
    if digest is None:
        sidecar = checksum_path(path)
        raise EmbeddingError(
            f"{path}: no recorded SHA-256 ({sidecar.name} is missing beside it), so bsym "
            "cannot tell whether the file changed since it was written (files written before "
            f"bsym kept these records have none). Fix: rerun `bsym embed` with --out {path} "
            f"(it recomputes the file with its record), or restore {sidecar.name} from where "
            "the file came from")
    if cohort is not None:
        out.check_cohort(cohort)
    return out


# -- computing ---------------------------------------------------------------------------
def _views(output):
    from bsym.models.base import Embeddings

    if isinstance(output, Embeddings):
        return {DEFAULT_VIEW: output}
    if isinstance(output, dict) and output and all(isinstance(v, Embeddings)
                                                  for v in output.values()):
        return dict(output)
    raise EmbeddingError(f"model.embed must return Embeddings or a dict of them, received "
                         f"{type(output).__name__}")


def compute_embeddings(model, cohort, *, window, stride=None, scaler=None, target_tr=None,
                       cleaning=None, sc_transform="log1p", scans=None, batch_size=32,
                       device="cpu", keep_roi=True, progress=True, meta=None) -> EmbeddingSet:
    """Embed every window of every scan with a frozen model and average per scan.

    Parameters
    ----------
    model : BrainModel
    cohort : Cohort
    window : int
        The model's window (time points).
    stride : int, optional
        Default ``window`` (non-overlapping windows).
    scaler : RobustScaler, optional
        The scaler fitted when the model was trained.
    target_tr : float, optional
        Resample scans to this TR first (as in training).
    cleaning : SignalCleaning, optional
    sc_transform : {"log1p", "none"}
    scans : sequence of str, optional
        Default every scan of the store.
    batch_size : int
    device : str
    keep_roi : bool
        Keep ROI embeddings (mean over windows) where the model has them, and the
        position-only ROI embeddings (:func:`position_embeddings`).
    progress : bool
    meta : dict, optional
        Extra metadata (model name, checkpoint hash).

    Returns
    -------
    EmbeddingSet
    """
    from bsym.data.dataset import WindowDataset

    dataset = WindowDataset(cohort, window, scans=scans, stride=stride, scaler=scaler,
                            target_tr=target_tr, cleaning=cleaning, sc_transform=sc_transform,
                            cover_end=True)

    def outputs(batch):
        out = {}
        for name, emb in _views(model.embed(batch)).items():
            out[(name, "subject")] = emb.subject
            if keep_roi and emb.roi is not None:
                out[(name, "roi")] = emb.roi
        return out

    table, n_windows, means = window_means(model, dataset, outputs, batch_size=batch_size,
                                           device=device, desc="embedding", progress=progress)
    views = {}
    for (name, level), value in means.items():
        views.setdefault(name, {"subject": None, "roi": None})[level] = value.astype(np.float32)
    if keep_roi:
        for name, value in position_embeddings(model, dataset[0], device=device).items():
            if name in views and views[name]["roi"] is not None:
                views[name]["position"] = value
    scan_table = table[["scan", "subject", "session", "site"]].astype(str).copy()
    scan_table["n_windows"] = n_windows
    meta = {"manifest_hash": cohort.manifest_hash, "dataset": cohort.path.name,
            "model": getattr(model, "name", None) or type(model).__name__,
            "checkpoint_sha256": None, "window": int(window), "stride": int(dataset.stride),
            "cover_end": True, "tr": dataset.tr,
            "sc_transform": sc_transform, "cleaning": dataset.cleaning.to_dict(),
            "bsym_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(meta or {})}
    meta["keys"] = {name: _cache_key(meta, name) for name in views}
    return EmbeddingSet(scans=scan_table, views=views, meta=meta)


def position_embeddings(model, item, *, device="cpu") -> dict:
    """ROI embeddings of an all-zero input shaped like ``item``: view -> (R, D) array.

    What a model gives from its ROI identity alone (its position code), with no data:
    the ``position_only`` control of network identification. Views without ROI
    embeddings (or with non-finite output) are left out.
    """
    import torch

    from bsym.train.devices import select_device

    device = select_device(device)
    batch = {key: torch.zeros_like(item[key])[None].to(device) for key in ("bold", "sc")
             if key in item}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = _views(model.embed(batch))
    finally:
        model.train(was_training)
    found = {}
    for name, emb in out.items():
        if emb.roi is None:
            continue
        value = emb.roi[0].detach().float().cpu().numpy()
        if np.isfinite(value).all():
            found[name] = value.astype(np.float32)
    return found


def window_means(model, dataset, outputs, *, batch_size, device, desc, progress):
    """Mean over each scan's windows of ``outputs(batch)`` (name -> (B, ...) tensors).

    The model runs in eval mode without gradients (its mode is restored after).

    Returns
    -------
    table : DataFrame
        The dataset's scans, in row order.
    n_windows : ndarray of int, shape (n_scans,)
    means : dict
        name -> float64 array (n_scans, ...).
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from bsym.train.devices import select_device
    from bsym.train.engine import to_device

    table = dataset.table.reset_index(drop=True)
    position = {s: i for i, s in enumerate(table["scan"])}
    n_windows = np.zeros(len(table), dtype=np.int64)
    sums, n_batches, seen = {}, 0, {}
    device = select_device(device)
    was_training = model.training
    model.eval()
    model.to(device)
    try:
        with torch.no_grad():
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
            for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress):
                rows = np.array([position[s] for s in batch["scan"]])
                inputs = to_device({k: v for k, v in batch.items()
                                    if k not in ("scan", "subject", "start")}, device)
                np.add.at(n_windows, rows, 1)
                n_batches += 1
                _add_to_sums(sums, seen, rows, outputs(inputs), len(table))
    finally:
        model.train(was_training)
    partial = [name for name, count in seen.items() if count != n_batches]
    if partial:
        raise EmbeddingError(f"output {partial[0]!r} was returned for some batches only")
    if (n_windows == 0).any():
        raise EmbeddingError("some scans gave no window")
    means = {name: total / n_windows.reshape((-1,) + (1,) * (total.ndim - 1))
             for name, total in sums.items()}
    return table, n_windows, means


def _add_to_sums(sums, seen, rows, outputs, n_scans):
    """Add one batch's ``outputs`` (name -> tensor, a row per window) to the per-scan
    ``sums`` (``rows``: each window's scan) and count the batch in ``seen``."""
    for name, value in outputs.items():
        value = value.detach().float().cpu().numpy().astype(np.float64)
        if name not in sums:
            sums[name] = np.zeros((n_scans, *value.shape[1:]))
        np.add.at(sums[name], rows, value)
        seen[name] = seen.get(name, 0) + 1


def _cache_key(meta, view) -> str:
    parts = {k: meta.get(k) for k in ("checkpoint_sha256", "manifest_hash", "window", "stride",
                                       "tr", "sc_transform", "cleaning", "model", "features")}
    if meta.get("cover_end"):  # keys of files made before whole-scan tiling stay as they were
        parts["cover_end"] = True
    parts["view"] = view
    return config_hash(parts)


def _checkpoint_settings(ckpt):
    data = ckpt.get("data") or {}
    dataset = data.get("dataset") or {}
    window = data.get("window") or dataset.get("window")
    if not window:
        raise EmbeddingError("the checkpoint does not record its window length; expected a "
                             "checkpoint written by bsym.train")
    return {"window": int(window), "target_tr": dataset.get("tr"),
            "cleaning": dataset.get("cleaning") or {},
            "sc_transform": dataset.get("sc_transform") or "log1p"}


def embed_checkpoint(checkpoint, cohort, out=None, *, stride=None, batch_size=32, device="cpu",
                     force=False, keep_roi=True, progress=True, subjects=None) -> EmbeddingSet:
    """Embeddings of ``cohort`` by a trained checkpoint, cached in ``out``.

    The file at ``out`` is reused only when it was made from a checkpoint with the same
    SHA-256, from the same data manifest and with the same windowing; otherwise (or with
    ``force``) the embeddings are recomputed and the file replaced. Only an embeddings
    file written by bsym is ever replaced (any other file at ``out`` is an error, with or
    without ``force``), and one that changed since bsym wrote it only with ``force``.

    Parameters
    ----------
    checkpoint : str or Path
        ``final.pt`` of a run (the scaler is read from its ``extra["scaler"]``).
    cohort : Cohort
    out : str or Path, optional
        ``.npz`` cache file.
    stride : int, optional
        Default: the window (non-overlapping).
    batch_size, device, keep_roi, progress
        See :func:`compute_embeddings`.
    force : bool
        Recompute even when the cache is current.
    subjects : sequence of str, optional
        Embed only these subjects' scans (default every scan), e.g. those never
        pretrained on: only they are ever probed.

    Returns
    -------
    EmbeddingSet
        With ``meta["cached"]`` telling whether the file was reused.
    """
    from bsym.data.preprocess import SignalCleaning
    from bsym.train.checkpoint import check_fits_store, load_checkpoint, load_trained

    checkpoint = Path(checkpoint)
    if out is not None:
        check_embeddings_out(out)
    ckpt = load_checkpoint(checkpoint)
    check_fits_store(ckpt, checkpoint, cohort, subjects=subjects)
    settings = _checkpoint_settings(ckpt)
    sha = file_sha256(checkpoint)
    expected = {"checkpoint_sha256": sha, "manifest_hash": cohort.manifest_hash,
                "window": settings["window"], "stride": int(stride or settings["window"]),
                "tr": None, "sc_transform": settings["sc_transform"],
                "cleaning": SignalCleaning(**settings["cleaning"]).to_dict(),
                "model": ckpt["model"]["name"], "features": None, "cover_end": True,
                "subjects": sorted(str(s) for s in subjects) if subjects is not None else None}
    cached = _current_file(out, expected) if out is not None and not force else None
    if cached is not None:
        return cached
    model, ckpt = load_trained(checkpoint)
    scaler = _checkpoint_scaler(ckpt, checkpoint)
    out_set = compute_embeddings(
        model, cohort, window=settings["window"], stride=stride, scaler=scaler,
        target_tr=settings["target_tr"], cleaning=SignalCleaning(**settings["cleaning"]),
        sc_transform=settings["sc_transform"], batch_size=batch_size, device=device,
        keep_roi=keep_roi, progress=progress,
        meta=_checkpoint_meta(ckpt, checkpoint, sha, expected["subjects"]),
        scans=_scans_of(cohort, subjects))
    if out is not None:
        out_set.save(out)
    return out_set


def _current_file(out, expected):
    """The embeddings file ``out`` when it exists, carries its recorded SHA-256 and was made
    as ``expected`` says (``meta["cached"]`` True); else None (it is recomputed)."""
    if not Path(out).is_file():
        return None
    content, recorded = _verified(out, f"pass --force to recompute and replace it, or "
                                  f"restore it (with its {CHECKSUM_SUFFIX} file) from a copy")
    try:  # unrecorded: recomputed
        cached = _read_embeddings(out, content) if recorded else None
    except EmbeddingError:
        return None
    if cached is None or any(cached.meta.get(k) != v for k, v in expected.items()
                             if k != "tr"):
        return None
    cached.meta["cached"] = True
    return cached


def _checkpoint_scaler(ckpt, checkpoint):
    """The robust scaler fitted in pretraining (a warning and None when there is none)."""
    import warnings

    from bsym.data.preprocess import RobustScaler

    state = (ckpt.get("extra") or {}).get("scaler")
    if state:
        return RobustScaler.from_state_dict(state)
    warnings.warn(f"{checkpoint}: no fitted scaler in the checkpoint; embedding unscaled "
                  "series", RuntimeWarning, stacklevel=3)
    return None


def _checkpoint_meta(ckpt, checkpoint, sha, subjects):
    """What an embeddings file records of the checkpoint behind it."""
    identity = ckpt["model"]
    return {"checkpoint_sha256": sha, "checkpoint": str(checkpoint.resolve()),
            "model": identity["name"], "preset": identity.get("preset"),
            "model_config": identity.get("config"), "features": None,
            "trained_on": (ckpt.get("data") or {}).get("manifest_hash"),
            "pretrain_subjects": (ckpt.get("extra") or {}).get("train_subjects"),
            "pretrain": run_point(ckpt), "cached": False, "subjects": subjects}


def _scans_of(cohort, subjects):
    """The scans of ``subjects`` (None: every scan); unknown subjects are an error."""
    if subjects is None:
        return None
    table = cohort.subjects
    unknown = sorted(set(map(str, subjects)) - set(table["subject"].astype(str)))
    if unknown:
        raise EmbeddingError(f"subject(s) {', '.join(unknown[:5])} are not in the store "
                             f"{cohort.path}; expected subject ids of this store")
    return table.loc[table["subject"].astype(str).isin(set(map(str, subjects))),
                     "scan"].tolist()


def check_embeddings_out(path) -> None:
    """Raise :class:`EmbeddingError` unless ``bsym embed`` may write the file ``path``:
    absent, or an embeddings file bsym wrote, in a location the user can write."""
    try:
        guard_output(path, is_ours=is_embeddings_file, what="file of embeddings", overwrite=True,
                     flag="--force", fix_other="choose another --out file (bsym embed writes "
                     f"the .npz and its {CHECKSUM_SUFFIX} record)")
    except BsymError as err:
        raise EmbeddingError(str(err)) from None


def is_embeddings_folder(path) -> bool:
    """Whether ``path`` is a folder of ``bsym embed --run``: embeddings files written by
    bsym, their records and temporary files only."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    for entry in path.iterdir():
        name = entry.name
        if name.startswith(".") and name.endswith(".tmp"):
            continue
        if name.endswith(".npz" + CHECKSUM_SUFFIX) and entry.is_file():
            continue
        if not (name.endswith(".npz") and is_embeddings_file(entry)):
            return False
    return True


def run_point(ckpt) -> dict:
    """Where in its pretraining run a checkpoint is: ``label`` (``final`` or ``step<N>``),
    ``step``, ``total_steps``, ``fraction`` and the run's ``budget`` up to it."""
    total = sum(int(b) for _, b in (ckpt.get("stages") or [])) or None
    step = int(ckpt.get("step") or 0)
    final = ckpt.get("kind") == "final" and bool(ckpt.get("finished"))
    return {"label": "final" if final else f"step{step}", "step": step, "total_steps": total,
            "fraction": (step / total) if total else None,
            "budget": dict(ckpt.get("budget") or {})}


def embed_run(run, cohort, out_dir, *, snapshots=True, **options) -> dict:
    """Embed a pretraining run's ``final.pt`` and (with ``snapshots``) each kept snapshot.

    Parameters
    ----------
    run : str or Path
        Run directory (``final.pt``, ``snapshots/step-N.pt``).
    cohort : Cohort
    out_dir : str or Path
        Gets ``final.npz`` and ``step<N>.npz`` (each reused while current).
    options
        Passed to :func:`embed_checkpoint`.

    Returns
    -------
    dict
        File stem (``final``, ``step0``, ...) -> EmbeddingSet.
    """
    from bsym.train.checkpoint import FINAL_NAME, check_fits_store, list_snapshots, load_checkpoint

    run, out_dir = Path(run), Path(out_dir)
    final = run / FINAL_NAME
    if not run.is_dir():
        raise EmbeddingError(f"{run}: no such run directory. Fix: give the --out folder of a "
                             "finished `bsym pretrain` run (or --checkpoint FILE)")
    if not final.is_file():
        raise EmbeddingError(f"{run}: no {FINAL_NAME}; expected the directory of a finished "
                             "`bsym pretrain` run. Fix: finish the run (`bsym pretrain ... "
                             "--resume`), or give a checkpoint with --checkpoint")
    points = [("final", final)]
    if snapshots:
        points += [(f"step{step}", path) for step, path in list_snapshots(run)]
    empty = out_dir.is_dir() and not out_dir.is_symlink() and not any(out_dir.iterdir())
    if not empty:
        try:
            guard_output(out_dir, is_ours=is_embeddings_folder, what="folder of embeddings",
                         overwrite=True, flag="--force", fix_other="choose a new or empty --out "
                         "folder (bsym embed --run writes final.npz and step<N>.npz there)")
        except BsymError as err:
            raise EmbeddingError(str(err)) from None
    check_writable(out_dir / "final.npz")
    for _, path in points:  # every checkpoint checked before anything is written
        check_fits_store(load_checkpoint(path), path, cohort, subjects=options.get("subjects"))
    out_dir.mkdir(parents=True, exist_ok=True)
    return {stem: embed_checkpoint(path, cohort, out_dir / f"{stem}.npz", **options)
            for stem, path in points}


def embedding_files(path) -> list:
    """The embeddings files at ``path``: the file itself, or a run's folder of them
    (``final.npz`` first, then the snapshots by step)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise EmbeddingError(f"{path}: no such embeddings file or folder (make it with "
                             "`bsym embed`)")
    steps = sorted(path.glob("step*.npz"), key=lambda p: int(p.stem[4:] or 0)
                   if p.stem[4:].isdigit() else -1)
    files = [p for p in [path / "final.npz"] if p.is_file()] + steps
    if not files:
        raise EmbeddingError(f"{path}: no final.npz or step<N>.npz in the folder; expected the "
                             "output folder of `bsym embed --run`")
    return files


def feature_embeddings(cohort, kind="fc", *, scans=None) -> EmbeddingSet:
    """Connectome features as an :class:`EmbeddingSet` (the classical baseline).

    Parameters
    ----------
    cohort : Cohort
    kind : {"fc", "sc", "fc+sc"}
        ``fc``: Fisher-z FC upper triangle per scan, ROI "embeddings" = Fisher-z FC rows
        (diagonal 0); ``sc``: log(1 + SC) upper triangle of the scan's subject, ROI
        embeddings = log-SC rows; ``fc+sc``: both concatenated.
    scans : sequence of str, optional

    Returns
    -------
    EmbeddingSet
        One view named ``kind``; ``n_windows`` is 1 per scan.
    """
    from bsym.data.features import ConnectomeFeatures, log_sc, upper_triangle

    if kind not in ("fc", "sc", "fc+sc"):
        raise EmbeddingError(f"kind must be 'fc', 'sc' or 'fc+sc', received {kind!r}")
    table = cohort.subjects
    if scans is not None:
        table = table[table["scan"].isin(list(scans))]
    table = table.reset_index(drop=True)
    if "sc" in kind:
        cohort.require(matrices=("sc",))
    subject_vectors, roi_rows = [], []
    sc_of = functools.cache(lambda subject: log_sc(np.asarray(cohort.sc(subject))))
    correlation = ConnectomeFeatures(kind="correlation")  # nilearn ConnectivityMeasure
    for row in table.itertuples(index=False):
        parts = []
        if "fc" in kind:
            parts.append(_fc_parts(np.asarray(cohort.bold(row.scan)), correlation))
        if "sc" in kind:
            parts.append((upper_triangle(sc_of(row.subject)), sc_of(row.subject)))
        subject_vectors.append(np.concatenate([vector for vector, _ in parts]))
        roi_rows.append(np.concatenate([rows for _, rows in parts], axis=1))
    scan_table = table[["scan", "subject", "session", "site"]].astype(str).copy()
    scan_table["n_windows"] = 1
    meta = {"manifest_hash": cohort.manifest_hash, "dataset": cohort.path.name,
            "model": f"connectome-{kind}", "features": kind, "checkpoint_sha256": None,
            "window": None, "stride": None, "tr": None, "sc_transform": None, "cleaning": None,
            "bsym_version": __version__}
    meta["keys"] = {kind: _cache_key(meta, kind)}
    views = {kind: {"subject": np.stack(subject_vectors).astype(np.float32),
                    "roi": np.stack(roi_rows).astype(np.float32)}}
    return EmbeddingSet(scans=scan_table, views=views, meta=meta)


def _fc_parts(bold, correlation):
    """``(Fisher-z FC upper triangle, Fisher-z FC rows with diagonal 0)`` of one scan."""
    vector = correlation.transform(bold.T)[0]
    z = np.zeros((len(bold), len(bold)))
    z[np.triu_indices(len(bold), 1)] = vector
    return vector, z + z.T
