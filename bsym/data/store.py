"""The cohort store: one directory per prepared dataset.

Layout::

    STORE/
      manifest.json        provenance, shapes and the SHA-256 of every file below
      subjects.parquet     one row per scan (subject, session, site, tr, labels, ...)
      rois.parquet         one row per ROI (name, network, x, y, z where known)
      bold/000000.npy      ROIs x time, float32, one file per scan
      sc/000000.npy        ROIs x ROIs, float32, one file per subject
      lengths/000000.npy   (optional) fibre lengths, one file per subject
      confounds/000000.npy (optional) time x confounds, one file per scan

Arrays are plain ``.npy`` files opened with memory mapping, so reading one
window touches only that window's pages (``benchmarks/store_read.py`` measures
this against a raw ``np.load(mmap_mode="r")`` and HDF5). A store is written in a
hidden sibling directory and renamed into place after its manifest is written:
a killed write never leaves a directory that reads as a valid store.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import uuid
from collections import OrderedDict
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from bsym.data.checks import check_bold, check_matrix, check_tr, check_unique
from bsym.data.errors import CohortError
from bsym.io import file_sha256, fsync_dir

FORMAT = "bsym-cohort"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

#: Columns of the subjects table that are not labels.
RESERVED_COLUMNS = (
    "scan", "subject", "session", "site", "tr", "n_timepoints", "family",
    "bold_file", "confounds_file",
)
MATRIX_KINDS = ("sc", "lengths")
#: How ROIs are numbered in a store: as the source gives them, or by a fixed, seeded
#: permutation (so that an ROI's index carries no information about its network).
ROI_ORDERS = ("original", "shuffled")


def _bsym_version() -> str:
    from bsym import __version__

    return __version__


class CohortWriter:
    """Write a cohort store atomically.

    Use as a context manager; add ROIs, scans and subject matrices, and the
    store appears at ``path`` only when the block ends without an error.
    Every array is checked as it is added, the whole cohort when it is committed.

    Parameters
    ----------
    path : str or Path
        Final store directory.
    source : dict
        Where the data came from (``{"name": "simulated", ...}``); saved in the manifest.
    atlas : str
        Name of the parcellation.
    preprocessing : dict, optional
        Parameters applied before storing (filtering, scaling, ...).
    sc_symmetric : bool
        Whether structural matrices must be symmetric.
    overwrite : bool
        Replace an existing store at ``path``.
    roi_order : {"original", "shuffled"}
        ``shuffled`` stores the ROIs in a fixed permutation drawn from ``roi_seed``:
        fMRI rows, matrix rows and columns and the ROI table are reordered alike, the ROI
        table keeps each ROI's ``source_index`` and the manifest records the permutation.
        Atlases (and the simulator) number ROIs network by network, so in the source
        order a model's ROI position code alone can "identify" networks.
    roi_seed : int
        Seed of the ``shuffled`` permutation.

    Examples
    --------
    >>> with CohortWriter(out, source={"name": "folder"}, atlas="AAL2") as w:  # doctest: +SKIP
    ...     w.set_rois(names=[...], networks=[...])
    ...     w.add_scan("sub-01", session="1", site="A", tr=0.72, bold=x, age=31)
    ...     w.add_matrix("sc", "sub-01", a)
    """

    def __init__(self, path, *, source, atlas, preprocessing=None, sc_symmetric=True,
                 overwrite=False, roi_order="original", roi_seed=0):
        self.path = Path(path)
        self.source = dict(source)
        self.atlas = str(atlas)
        self.preprocessing = dict(preprocessing or {})
        self.sc_symmetric = bool(sc_symmetric)
        self.overwrite = overwrite
        if roi_order not in ROI_ORDERS:
            raise ValueError(f"roi_order must be one of {ROI_ORDERS}, received {roi_order!r}")
        self.roi_order = roi_order
        self.roi_seed = int(roi_seed)
        self._permutation = None
        if self.path.exists() and not overwrite:
            raise CohortError(
                "a store already exists here", file=self.path,
                fix="choose another --out directory or pass --overwrite",
            )
        self._tmp = None
        self._rows = []
        self._scan_ids = set()
        self._matrices = {kind: {} for kind in MATRIX_KINDS}
        self._arrays = {}
        self._rois = None
        self._n_rois = None

    # -- context management ---------------------------------------------------------
    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.parent / f".{self.path.name}.partial-{uuid.uuid4().hex[:8]}"
        self._tmp.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self._commit()
            except BaseException:
                shutil.rmtree(self._tmp, ignore_errors=True)
                raise
        else:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return False

    # -- adding content -------------------------------------------------------------
    @property
    def n_rois(self):
        return self._n_rois

    def _order(self, n_rois):
        """Stored position -> source index (the identity unless shuffled)."""
        if self._permutation is None:
            if self.roi_order == "shuffled":
                rng = np.random.default_rng([self.roi_seed, n_rois])
                self._permutation = rng.permutation(n_rois)
            else:
                self._permutation = np.arange(n_rois)
        return self._permutation

    def set_rois(self, names, networks=None, coords=None, *, file=None):
        """Declare the ROIs: names, optional network labels and (x, y, z) coordinates."""
        names = [str(n) for n in names]
        check_unique(names, what="ROI name", file=file or "ROI table")
        table = pd.DataFrame({"index": np.arange(len(names)), "name": names})
        if networks is not None:
            networks = list(networks)
            if len(networks) != len(names):
                raise CohortError(
                    f"expected {len(names)} network labels, received {len(networks)}",
                    file=file or "ROI table", fix="give one network label per ROI",
                )
            table["network"] = [None if n is None else str(n) for n in networks]
        if coords is not None:
            coords = np.asarray(coords, dtype=float)
            if coords.shape != (len(names), 3):
                raise CohortError(
                    f"expected ROI coordinates shaped ({len(names)}, 3), received {coords.shape}",
                    file=file or "ROI table", fix="give x, y, z per ROI in mm",
                )
            table[["x", "y", "z"]] = coords
        if self._n_rois is not None and self._n_rois != len(names):
            raise CohortError(
                f"the ROI table has {len(names)} ROIs but the data have {self._n_rois}",
                file=file or "ROI table", fix="use the ROI table of the atlas the data were made with",
            )
        order = self._order(len(names))
        table = table.iloc[order].reset_index(drop=True)
        table["source_index"] = order
        table["index"] = np.arange(len(names))
        self._rois = table
        self._n_rois = len(names)

    def _save(self, folder, index, array):
        rel = f"{folder}/{index:06d}.npy"
        target = self._tmp / rel
        target.parent.mkdir(exist_ok=True)
        np.save(target, np.ascontiguousarray(array), allow_pickle=False)
        self._arrays[rel] = {"sha256": file_sha256(target), "shape": list(array.shape),
                             "dtype": str(array.dtype)}
        return rel

    def add_scan(self, scan=None, *, subject, bold, tr, session="1", site="unknown",
                 family=None, confounds=None, origin=None, **labels):
        """Add one fMRI scan (``bold``: ROIs x time) with its labels.

        ``scan`` defaults to ``"{subject}_ses-{session}"``; ``family`` groups
        related subjects for group-aware splits; ``origin`` names the raw file
        for error messages.
        """
        subject, session = str(subject), str(session)
        scan = str(scan) if scan is not None else f"{subject}_ses-{session}"
        origin = origin or f"scan {scan}"
        if scan in self._scan_ids:
            raise CohortError(
                f"duplicate scan id {scan!r}", file=origin, subject=subject,
                fix="give every scan a unique subject/session pair",
            )
        names = None if self._rois is None else \
            self._rois.sort_values("source_index")["name"].tolist()  # the source's order
        bold = check_bold(bold, file=origin, subject=subject, n_rois=self._n_rois,
                          roi_names=names)
        if self._n_rois is None:
            self._n_rois = bold.shape[0]
        bold = bold[self._order(self._n_rois)]
        tr = check_tr(tr, file=origin, subject=subject)
        row = {"scan": scan, "subject": subject, "session": session, "site": str(site),
               "tr": tr, "n_timepoints": int(bold.shape[1])}
        if family is not None and not (isinstance(family, float) and np.isnan(family)):
            row["family"] = str(family)
        for key in labels:
            if key in RESERVED_COLUMNS:
                raise CohortError(f"label name {key!r} is reserved", file=origin,
                                  subject=subject, fix="rename the column")
        row.update(labels)
        index = len(self._rows)
        row["bold_file"] = self._save("bold", index, bold)
        if confounds is not None:
            confounds = np.asarray(confounds, dtype=np.float32)
            if confounds.ndim == 1:
                confounds = confounds[:, None]
            if confounds.ndim != 2 or confounds.shape[0] != bold.shape[1]:
                raise CohortError(
                    f"confounds shaped {confounds.shape} do not match {bold.shape[1]} "
                    "time points (expected time x confounds)",
                    file=origin, subject=subject,
                    fix="give one confound row per fMRI volume",
                )
            if not np.isfinite(confounds).all():
                raise CohortError(
                    "confounds contain NaN/Inf", file=origin, subject=subject,
                    fix="fill the first rows of derivative confounds with 0",
                )
            row["confounds_file"] = self._save("confounds", index, confounds)
        self._rows.append(row)
        self._scan_ids.add(scan)
        return scan

    def add_matrix(self, kind, subject, matrix, *, origin=None):
        """Add a subject-level ROIs x ROIs matrix: ``"sc"`` or ``"lengths"``."""
        if kind not in MATRIX_KINDS:
            raise ValueError(f"matrix kind must be one of {MATRIX_KINDS}, got {kind!r}")
        subject = str(subject)
        origin = origin or f"{kind} of subject {subject}"
        if subject in self._matrices[kind]:
            raise CohortError(f"a second {kind} matrix for the same subject", file=origin,
                              subject=subject, fix="give one matrix per subject")
        matrix = check_matrix(matrix, kind=kind, file=origin, subject=subject,
                              n_rois=self._n_rois,
                              symmetric=self.sc_symmetric or kind == "lengths")
        if self._n_rois is None:
            self._n_rois = matrix.shape[0]
        order = self._order(self._n_rois)
        matrix = matrix[np.ix_(order, order)]
        index = len(self._matrices[kind])
        self._matrices[kind][subject] = self._save(kind, index, matrix)

    # -- commit ---------------------------------------------------------------------
    def _commit(self):
        if not self._rows:
            raise CohortError("no scans were added", file=self.path,
                              fix="check the input folder holds fMRI files")
        subjects = pd.DataFrame(self._rows)
        for kind, files in self._matrices.items():
            if not files:
                continue
            missing = sorted(set(subjects["subject"]) - set(files))
            if missing:
                raise CohortError(
                    f"no {kind} matrix for {len(missing)} subject(s) with fMRI: "
                    f"{', '.join(missing[:5])}",
                    file=self.path, subject=missing[0],
                    fix=f"provide a {kind} file for every subject or drop those subjects",
                )
            extra = sorted(set(files) - set(subjects["subject"]))
            if extra:
                raise CohortError(
                    f"{kind} matrices for subject(s) without fMRI: {', '.join(extra[:5])}",
                    file=self.path, subject=extra[0],
                    fix="remove them or add their fMRI",
                )
            subjects[f"{kind}_file"] = subjects["subject"].map(files)
        if self._rois is None:
            self.set_rois([f"roi{i:03d}" for i in range(self._n_rois)])
        subjects = _normalise_columns(subjects)
        tables = {}
        for name, table in (("subjects", subjects), ("rois", self._rois)):
            rel = f"{name}.parquet"
            table.to_parquet(self._tmp / rel, index=False)
            tables[rel] = file_sha256(self._tmp / rel)
        labels = [c for c in subjects.columns
                  if c not in RESERVED_COLUMNS and not c.endswith("_file")]
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bsym_version": _bsym_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": {"python": platform.python_version(), "numpy": np.__version__},
            "source": self.source,
            "atlas": self.atlas,
            "preprocessing": self.preprocessing,
            "sc_symmetric": self.sc_symmetric,
            "roi_order": {"order": self.roi_order, "seed": self.roi_seed,
                          "source_index": [int(i) for i in self._order(self._n_rois)]},
            "n_rois": int(self._n_rois),
            "n_scans": len(subjects),
            "n_subjects": int(subjects["subject"].nunique()),
            "matrices": [k for k, v in self._matrices.items() if v],
            "labels": labels,
            "tables": tables,
            "arrays": self._arrays,
        }
        tmp_manifest = self._tmp / (MANIFEST + ".tmp")
        with open(tmp_manifest, "w") as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True, default=_json_default)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_manifest, self._tmp / MANIFEST)
        fsync_dir(self._tmp)
        old = None
        if self.path.exists():
            if not self.overwrite:
                raise CohortError("a store appeared here while writing", file=self.path,
                                  fix="pass --overwrite or choose another directory")
            old = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.path, old)
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray,)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in the manifest")


def _normalise_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Make label columns Parquet-friendly: numbers stay numbers, the rest strings."""
    table = table.copy()
    for column in table.columns:
        if column in ("tr", "n_timepoints"):
            continue
        values = table[column]
        if values.dtype == object:
            numeric = pd.to_numeric(values, errors="coerce")
            if numeric.notna().sum() == values.notna().sum() and column not in (
                    "scan", "subject", "session", "site", "family"):
                table[column] = numeric
            else:
                table[column] = values.map(lambda v: None if pd.isna(v) else str(v))
    return table


class Cohort:
    """A cohort store opened for lazy reading; see :func:`open_cohort`."""

    #: Open memory maps kept per store (each holds a file descriptor).
    MAX_OPEN_ARRAYS = 256

    def __init__(self, path, manifest):
        self.path = Path(path)
        self.manifest = manifest
        self._maps = OrderedDict()

    def __getstate__(self):
        # Memory maps are reopened in the receiving process (e.g. DataLoader workers).
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()
        return state

    def __repr__(self):
        m = self.manifest
        return (f"Cohort({str(self.path)!r}: {m['n_subjects']} subjects, {m['n_scans']} scans, "
                f"{m['n_rois']} ROIs, source={m['source'].get('name')!r})")

    # -- tables -----------------------------------------------------------------------
    @cached_property
    def subjects(self) -> pd.DataFrame:
        """One row per scan."""
        return pd.read_parquet(self.path / "subjects.parquet")

    @cached_property
    def rois(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "rois.parquet")

    @property
    def n_rois(self) -> int:
        return int(self.manifest["n_rois"])

    @property
    def scans(self) -> list:
        return self.subjects["scan"].tolist()

    @property
    def labels(self) -> list:
        """Label (phenotype) columns of the subjects table."""
        return list(self.manifest["labels"])

    @property
    def matrices(self) -> list:
        return list(self.manifest["matrices"])

    @cached_property
    def manifest_hash(self) -> str:
        """SHA-256 of the manifest: names the exact data a result came from."""
        return file_sha256(self.path / MANIFEST)

    @cached_property
    def _records(self):
        return {row["scan"]: row for row in self.subjects.to_dict("records")}

    @cached_property
    def _subject_records(self):
        return {row["subject"]: row for row in reversed(self.subjects.to_dict("records"))}

    def row(self, scan) -> dict:
        """The subjects-table row of one scan, as a dict."""
        try:
            return self._records[str(scan)]
        except KeyError:
            raise KeyError(f"no scan {scan!r} in {self.path}; known scans start with "
                           f"{self.scans[:3]}") from None

    # -- arrays -----------------------------------------------------------------------
    def _open(self, rel):
        array = self._maps.get(rel)
        if array is None:
            array = _load_npy(self.path / rel, None)
            self._maps[rel] = array
            if len(self._maps) > self.MAX_OPEN_ARRAYS:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(rel)
        return array

    def bold(self, scan) -> np.ndarray:
        """The scan's time series, ROIs x time, memory-mapped (read-only)."""
        return self._open(self.row(scan)["bold_file"])

    def window(self, scan, start, length) -> np.ndarray:
        """Copy of time points ``start:start+length`` of one scan (ROIs x length)."""
        bold = self.bold(scan)
        if start < 0 or start + length > bold.shape[1]:
            raise CohortError(
                f"window {start}:{start + length} exceeds the {bold.shape[1]} time points",
                file=self.path / self.row(scan)["bold_file"], subject=scan,
                fix="use a shorter window or drop short scans",
            )
        return np.array(bold[:, start:start + length])

    def matrix(self, kind, subject) -> np.ndarray:
        """A subject-level matrix (``"sc"`` or ``"lengths"``), memory-mapped."""
        if kind not in self.matrices:
            raise CohortError(
                f"this store has no {kind!r} matrices (it has: {self.matrices or 'none'})",
                file=self.path, fix="import a source that provides them, or use an "
                "fMRI-only model",
            )
        try:
            rel = self._subject_records[str(subject)][f"{kind}_file"]
        except KeyError:
            raise KeyError(f"no subject {subject!r} in {self.path}") from None
        return self._open(rel)

    def sc(self, subject) -> np.ndarray:
        return self.matrix("sc", subject)

    def confounds(self, scan):
        """Confound regressors (time x n) of a scan, or None."""
        rel = self.row(scan).get("confounds_file")
        if rel is None or (isinstance(rel, float) and np.isnan(rel)):
            return None
        return self._open(rel)

    # -- validation -------------------------------------------------------------------
    def check_structure(self):
        """Cheap checks on read: tables, files present, shapes as in the manifest."""
        for rel, digest in self.manifest["tables"].items():
            if not (self.path / rel).is_file():
                raise CohortError(f"missing table {rel}", file=self.path,
                                  fix="the store is damaged; re-create it")
            if file_sha256(self.path / rel) != digest:
                raise CohortError(f"{rel} does not match its manifest checksum",
                                  file=self.path / rel,
                                  fix="the store was modified after writing; re-create it")
        subjects = self.subjects
        check_unique(subjects["scan"], what="scan id", file=self.path / "subjects.parquet")
        arrays = self.manifest["arrays"]
        for column in [c for c in subjects.columns if c.endswith("_file")]:
            for rel, scan in zip(subjects[column], subjects["scan"]):
                if rel is None or (isinstance(rel, float) and np.isnan(rel)):
                    continue
                if rel not in arrays:
                    raise CohortError(f"{rel} is not listed in the manifest",
                                      file=self.path, subject=scan,
                                      fix="the store is damaged; re-create it")
                if not (self.path / rel).is_file():
                    raise CohortError("file is missing", file=self.path / rel, subject=scan,
                                      fix="the store is damaged; re-create it")
        return self

    def verify(self, *, progress=False):
        """Full validation: every checksum, every value (NaN/Inf, flat ROIs, SC shape).

        Raises :class:`CohortError` on the first problem; returns self.
        """
        from tqdm.auto import tqdm

        self.check_structure()
        arrays = self.manifest["arrays"]
        owner = {}
        for _, row in self.subjects.iterrows():
            for column in row.index:
                if column.endswith("_file") and isinstance(row[column], str):
                    owner.setdefault(row[column], row["subject"])
        for rel in tqdm(sorted(arrays), desc="verifying", disable=not progress, unit="file"):
            file = self.path / rel
            subject = owner.get(rel)
            if not file.is_file():
                raise CohortError("file is missing", file=file, subject=subject,
                                  fix="the store is damaged; re-create it")
            if file_sha256(file) != arrays[rel]["sha256"]:
                raise CohortError("checksum differs from the manifest", file=file,
                                  subject=subject,
                                  fix="the file changed after writing; re-create the store")
            array = _load_npy(file, subject)
            if list(array.shape) != arrays[rel]["shape"]:
                raise CohortError(f"shape {array.shape} differs from the manifest",
                                  file=file, subject=subject, fix="re-create the store")
            kind = rel.split("/")[0]
            if kind == "bold":
                check_bold(array, file=file, subject=subject, n_rois=self.n_rois)
            elif kind in MATRIX_KINDS:
                check_matrix(array, kind=kind, file=file, subject=subject, n_rois=self.n_rois,
                             symmetric=self.manifest["sc_symmetric"] or kind == "lengths")
        for tr, scan in zip(self.subjects["tr"], self.subjects["scan"]):
            check_tr(tr, file=self.path / "subjects.parquet", subject=scan)
        return self

    def require(self, *, labels=(), window=None, tr=None, matrices=()):
        """Check the store can serve a task: labels present, scans long enough, TR.

        Parameters
        ----------
        labels : sequence of str
            Label columns the task needs; every scan must have a value.
        window : int, optional
            Window length in time points; every scan must be at least this long.
        tr : float, optional
            Required repetition time (seconds); every scan must have it.
        matrices : sequence of str
            Subject matrices the task needs (e.g. ``("sc",)``).
        """
        table = self.subjects
        file = self.path / "subjects.parquet"
        for label in labels:
            if label not in table.columns:
                raise CohortError(
                    f"no label column {label!r}; available: {', '.join(self.labels) or 'none'}",
                    file=file, fix="pick one of the available labels or add the column "
                    "to the participants table and re-import",
                )
            missing = table.loc[table[label].isna(), "scan"].tolist()
            if missing:
                raise CohortError(
                    f"label {label!r} is missing for {len(missing)} scan(s)",
                    file=file, subject=missing[0],
                    fix="fill the label or drop those subjects from the task",
                )
        if window is not None:
            short = table.loc[table["n_timepoints"] < window]
            if len(short):
                raise CohortError(
                    f"{len(short)} scan(s) are shorter than the {window}-point window "
                    f"(shortest: {int(short['n_timepoints'].min())})",
                    file=self.path / short.iloc[0]["bold_file"], subject=short.iloc[0]["scan"],
                    fix="use a shorter window or exclude the short scans",
                )
        if tr is not None:
            off = table.loc[~np.isclose(table["tr"], tr, rtol=1e-3)]
            if len(off):
                raise CohortError(
                    f"expected TR {tr} s, received {float(off.iloc[0]['tr'])} s "
                    f"({len(off)} scan(s) differ)",
                    file=self.path / "subjects.parquet", subject=off.iloc[0]["scan"],
                    fix="resample to the target TR (target_tr in the dataset options) or "
                    "select scans of one TR",
                )
        for kind in matrices:
            if kind not in self.matrices:
                self.matrix(kind, None)
        return self

    def roi_order_text(self) -> str:
        """``original`` or ``shuffled (seed S)``, as the manifest records it."""
        order = self.manifest.get("roi_order") or {"order": "original"}
        if order.get("order") == "shuffled":
            return f"shuffled (seed {order.get('seed')})"
        return str(order.get("order"))

    def summary(self) -> str:
        """Human-readable description (``bsym data info``)."""
        m, t = self.manifest, self.subjects
        def counts(column, fmt="{}"):
            pairs = t[column].value_counts().sort_index().items()
            return ", ".join(f"{fmt.format(k)} ({v})" for k, v in pairs)

        lines = [
            f"cohort store  {self.path}",
            f"source        {m['source'].get('name')}  (atlas {m['atlas']})",
            f"created       {m['created']} by bsym {m['bsym_version']}",
            f"subjects      {m['n_subjects']}  scans {m['n_scans']}  ROIs {m['n_rois']}",
            f"sites         {counts('site')}",
            f"TR (s)        {counts('tr', '{:g}')}",
            f"time points   min {int(t['n_timepoints'].min())}  median "
            f"{int(t['n_timepoints'].median())}  max {int(t['n_timepoints'].max())}",
            f"matrices      {', '.join(m['matrices']) or 'none'}",
            f"ROI order     {self.roi_order_text()}",
        ]
        if "network" in self.rois.columns:
            nets = self.rois["network"].value_counts().sort_index()
            lines.append(f"networks      {len(nets)}: " + ", ".join(f"{k} ({v})" for k, v in nets.items()))
        for label in m["labels"]:
            col = t[label]
            if pd.api.types.is_numeric_dtype(col) and col.nunique() > 5:
                lines.append(f"label {label:<8}mean {col.mean():.3g}  sd {col.std():.3g}  "
                             f"range {col.min():.3g}..{col.max():.3g}  missing {int(col.isna().sum())}")
            else:
                counts = col.value_counts(dropna=False).sort_index()
                lines.append(f"label {label:<8}" + ", ".join(f"{k}: {v}" for k, v in counts.items()))
        lines.append(f"manifest      sha256 {self.manifest_hash}")
        return "\n".join(lines)


def _load_npy(file, subject):
    try:
        return np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise CohortError(f"cannot read the array ({err})", file=file, subject=subject,
                          fix="the file is truncated or not a .npy file; re-create it") from None


def open_cohort(path, *, verify=False) -> Cohort:
    """Open a cohort store for lazy reading.

    Parameters
    ----------
    path : str or Path
        The store directory.
    verify : bool
        Also re-hash every array and check every value (slow on big stores).
    """
    path = Path(path)
    if not path.is_dir():
        raise CohortError("no such store directory", file=path,
                          fix="create it with `bsym data simulate` or `bsym data import`")
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise CohortError(
            "not a complete cohort store (no manifest.json)", file=path,
            fix="the write was interrupted or this is not a bsym store; re-run the import",
        )
    try:
        manifest = json.loads(manifest_file.read_text())
    except json.JSONDecodeError as err:
        raise CohortError(f"manifest is not valid JSON ({err})", file=manifest_file,
                          fix="re-create the store") from None
    if manifest.get("format") != FORMAT:
        raise CohortError(f"expected format {FORMAT!r}, received {manifest.get('format')!r}",
                          file=manifest_file, fix="point bsym at a cohort store directory")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise CohortError(
            f"store format version {manifest['format_version']} is newer than this bsym "
            f"reads ({FORMAT_VERSION})", file=manifest_file, fix="upgrade bsym",
        )
    cohort = Cohort(path, manifest)
    cohort.check_structure()
    if verify:
        cohort.verify()
    return cohort
