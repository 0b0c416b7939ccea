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
a killed write never leaves a directory that reads as a valid store, and a full
disk leaves the previous store as it was.

Nothing else is ever replaced: ``--out`` may name a new path, an empty folder or
a store bsym wrote (with ``overwrite``); any other file or folder is refused.
Every file is verified on read: the manifest carries the SHA-256 of its own
content and of every table and array, and each file is hashed the first time a
process opens it (see :func:`checked_sha256`), so a changed byte is an error
naming the file rather than silently different data.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import platform
import re
import shutil
import tokenize
import uuid
import warnings
from collections import OrderedDict
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from bsym.data.checks import check_bold, check_matrix, check_tr, check_unique
from bsym.data.errors import CohortError
from bsym.errors import BsymError
from bsym.io import check_writable, disk_error, file_sha256, fsync_dir, guard_output, json_sha256

FORMAT = "bsym-cohort"
#: 2: the manifest records the SHA-256 of its own content and each array's size in bytes.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
#: The manifest field holding the SHA-256 of the canonical JSON of every other field.
CHECKSUM_FIELD = "content_sha256"

#: Columns of the subjects table that are not labels.
RESERVED_COLUMNS = (
    "scan", "subject", "session", "site", "tr", "n_timepoints", "family",
    "bold_file", "confounds_file",
)
MATRIX_KINDS = ("sc", "lengths")
ARRAY_FOLDERS = ("bold", *MATRIX_KINDS, "confounds")
TABLES = ("subjects.parquet", "rois.parquet")
#: The names of the array files bsym writes (``bold/000000.npy``, ...).
ARRAY_FILE = re.compile(r"(bold|sc|lengths|confounds)/[0-9]{6}\.npy")
#: What to do about a store file that does not match its manifest.
DAMAGED_FIX = ("restore the file from a backup, or re-create the store with the command "
               "that wrote it (`bsym data simulate` / `bsym data import ... --overwrite`)")
#: How ROIs are numbered in a store: as the source gives them, or by a fixed, seeded
#: permutation (so that an ROI's index carries no information about its network).
ROI_ORDERS = ("original", "shuffled")


def _bsym_version() -> str:
    from bsym import __version__

    return __version__


# -- what an output path may be -------------------------------------------------------
def _marked_manifest(folder: Path):
    """The manifest of ``folder`` if it parses and carries the store format marker."""
    try:
        manifest = json.loads((folder / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _foreign_entries(folder: Path) -> list:
    """Files and folders in ``folder`` that a store writer does not write."""
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name in (MANIFEST, *TABLES) and entry.is_file() and not entry.is_symlink():
            continue
        if entry.name in ARRAY_FOLDERS and entry.is_dir() and not entry.is_symlink():
            foreign += [f for f in sorted(entry.iterdir())
                        if f.is_symlink() or not f.is_file()
                        or not ARRAY_FILE.fullmatch(f"{entry.name}/{f.name}")]
            continue
        foreign.append(entry)
    return foreign


def is_store(path) -> bool:
    """Whether ``path`` is a cohort store written by bsym (and holds nothing else).

    True for a real folder whose ``manifest.json`` parses and carries the store format
    marker, and which holds only the files a store writer writes. Only such a folder
    may be replaced (with ``overwrite``): anything else at an output path is the user's.
    """
    path = Path(path)
    if path.is_symlink() or not path.is_dir() or _marked_manifest(path) is None:
        return False
    try:
        return not _foreign_entries(path)
    except OSError:
        return False


def check_store_output(path, *, overwrite):
    """Raise :class:`CohortError` unless a cohort store may be written at ``path``.

    Allowed: a new path in a writable folder, an empty folder, or (with ``overwrite``)
    a store bsym wrote. Refused, with or without ``overwrite``: a file, a symlink, or a
    folder holding anything else, so nothing of the user's is ever deleted. Run it
    before any slow work; :class:`CohortWriter` runs it again when it commits.
    """
    path = Path(path)
    fix = "choose an --out location in a folder you can write to"
    try:
        check_writable(path, fix=fix)
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            return  # an empty folder: filled in place of nothing
        if path.is_dir() and not path.is_symlink() and _marked_manifest(path) is not None:
            foreign = _foreign_entries(path)
            if foreign:
                more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
                raise CohortError(
                    f"this cohort store also holds {foreign[0].relative_to(path)}{more}, which "
                    "bsym did not write; bsym never deletes files it did not write, with or "
                    "without --overwrite", file=path,
                    fix="move those files out of the store, or choose another --out path")
        guard_output(path, is_ours=is_store, what="cohort store", overwrite=overwrite,
                     fix_other="choose another --out path (a new or empty folder), or move "
                     "this one away yourself (a damaged store too: bsym cannot tell it is one)")
    except CohortError:
        raise
    except BsymError as err:
        raise CohortError(str(err)) from None
    except OSError as err:
        raise CohortError(f"cannot inspect the output location ({err.strerror or err})",
                          file=path, fix=fix) from None


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
        Replace an existing store at ``path`` (only a store bsym wrote: any other file
        or non-empty folder there is refused; see :func:`check_store_output`).
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
        check_store_output(self.path, overwrite=overwrite)
        self._tmp = None
        self._rows = {}  # table position -> row
        self._scan_ids = set()
        self._matrices = {kind: {} for kind in MATRIX_KINDS}
        self._arrays = {}
        self._rois = None
        self._n_rois = None

    # -- context management ---------------------------------------------------------
    def __enter__(self):
        tmp = self.path.parent / f".{self.path.name}.partial-{uuid.uuid4().hex[:8]}"
        with self._disk_errors():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        self._tmp = tmp
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

    @contextlib.contextmanager
    def _disk_errors(self):
        """Report a failed write (a full disk, a permission problem) as a BsymError."""
        try:
            yield
        except OSError as err:
            raise disk_error(err, self.path, what="the cohort store") from err

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
        # The bytes of np.save, written by Python so that a full disk raises ENOSPC
        # (numpy's own writer reports only a short count).
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
        data = buffer.getvalue()
        with self._disk_errors():
            target.parent.mkdir(exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(data)
        self._arrays[rel] = {"sha256": hashlib.sha256(data).hexdigest(),
                             "shape": list(array.shape), "dtype": str(array.dtype),
                             "bytes": len(data)}
        return rel

    def add_scan(self, scan=None, *, subject, bold, tr, session="1", site="unknown",
                 family=None, confounds=None, origin=None, **labels):
        """Add one fMRI scan (``bold``: ROIs x time) with its labels.

        ``scan`` defaults to ``"{subject}_ses-{session}"``; ``family`` groups
        related subjects for group-aware splits; ``origin`` names the raw file
        for error messages.
        """
        return self.place_scan(len(self._rows), scan, subject=subject, bold=bold, tr=tr,
                               session=session, site=site, family=family,
                               confounds=confounds, origin=origin, **labels)

    def place_scan(self, position, scan=None, *, subject, bold, tr, session="1",
                   site="unknown", family=None, confounds=None, origin=None, **labels):
        """Add one scan as row ``position`` of the subjects table (0-based).

        For scans that become ready out of order (the simulator finishes them site by
        site): each is written at once, and by the commit the positions must be
        exactly 0 .. n_scans - 1. Otherwise as :meth:`add_scan`.
        """
        position = int(position)
        if position < 0 or position in self._rows:
            raise ValueError(f"scan position must be a new row index >= 0, received {position} "
                             f"({'taken' if position >= 0 else 'negative'}); give each scan "
                             "its own position")
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
        row["bold_file"] = self._save("bold", position, bold)
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
            row["confounds_file"] = self._save("confounds", position, confounds)
        self._rows[position] = row
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
        gaps = sorted(set(range(len(self._rows))) - set(self._rows))
        if gaps:
            raise CohortError(f"no scan was placed at row(s) {gaps[:5]} of {len(self._rows)}",
                              file=self.path, fix="place one scan at every position "
                              "0 .. n_scans - 1 (or add the scans in order with add_scan)")
        subjects = pd.DataFrame([self._rows[i] for i in range(len(self._rows))])
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
            with self._disk_errors():
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
        }
        # Plain JSON types for what callers gave (numpy numbers, paths); the array records
        # are plain already and, one per file, too many to copy.
        manifest = json.loads(json.dumps(manifest, default=_json_default))
        manifest["arrays"] = self._arrays
        manifest[CHECKSUM_FIELD] = json_sha256(manifest)
        tmp_manifest = self._tmp / (MANIFEST + ".tmp")
        with self._disk_errors():
            with open(tmp_manifest, "w") as fh:
                json.dump(manifest, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_manifest, self._tmp / MANIFEST)
            fsync_dir(self._tmp)
        # Something may have appeared at the output while the store was being written.
        check_store_output(self.path, overwrite=self.overwrite)
        self._replace()

    def _replace(self):
        """Rename the complete new store into place; the old one goes only afterwards."""
        old = None
        with self._disk_errors():
            if self.path.exists():  # a store bsym wrote, or an empty folder
                old = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(self.path, old)
            try:
                os.replace(self._tmp, self.path)
            except OSError:
                if old is not None:
                    os.replace(old, self.path)  # put the old store back
                raise
            fsync_dir(self.path.parent)
        if old is not None:
            if is_store(old):
                shutil.rmtree(old, ignore_errors=True)
            else:
                try:
                    old.rmdir()
                except OSError:  # files were added to it since the check: keep them
                    warnings.warn(f"{self.path} was replaced, but files that appeared in it "
                                  f"while the store was written were kept in {old}",
                                  stacklevel=3)


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
        return self._table("subjects.parquet")

    @cached_property
    def rois(self) -> pd.DataFrame:
        return self._table("rois.parquet")

    def _table(self, rel) -> pd.DataFrame:
        file = self._check_file(rel, self.manifest["tables"][rel], what="table")
        try:
            return pd.read_parquet(file)
        except Exception as err:  # pyarrow reports a damaged file in many exception types
            raise CohortError(f"cannot read the table ({type(err).__name__}: {err})",
                              file=file, fix=DAMAGED_FIX) from None

    def _check_file(self, rel, expected, subject=None, *, what="file"):
        """The path of store file ``rel`` once its SHA-256 matches ``expected``."""
        file = self.path / rel
        try:
            digest = checked_sha256(file)
        except FileNotFoundError:
            raise CohortError(f"missing {what} {rel}" if what == "table" else "file is missing",
                              file=file, subject=subject, fix=DAMAGED_FIX) from None
        except OSError as err:
            raise CohortError(f"cannot read the {what} ({err.strerror or err})", file=file,
                              subject=subject, fix="make the store readable to you") from None
        if digest != expected:
            problem = (f"{rel} does not match its manifest checksum" if what == "table"
                       else "checksum differs from the manifest")
            raise CohortError(f"{problem}: the file changed after the store was written",
                              file=file, subject=subject, fix=DAMAGED_FIX)
        return file

    @cached_property
    def _owners(self) -> dict:
        """Array file -> the subject it belongs to."""
        owners, subjects = {}, self.subjects["subject"].tolist()
        for column in [c for c in self.subjects.columns if c.endswith("_file")]:
            for rel, subject in zip(self.subjects[column].tolist(), subjects):
                if isinstance(rel, str):
                    owners.setdefault(rel, subject)
        return owners

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
            array = self._load(rel)
            self._maps[rel] = array
            if len(self._maps) > self.MAX_OPEN_ARRAYS:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(rel)
        return array

    def _load(self, rel) -> np.ndarray:
        """Memory-map array file ``rel`` after checking it against the manifest."""
        subject = self._owners.get(rel)
        entry = self.manifest["arrays"].get(rel)
        if entry is None:
            raise CohortError(f"{rel} is not listed in the manifest", file=self.path,
                              subject=subject, fix=DAMAGED_FIX)
        file = self._check_file(rel, entry["sha256"], subject)
        array = _load_npy(file, subject)
        if list(array.shape) != entry["shape"] or str(array.dtype) != entry.get(
                "dtype", str(array.dtype)):
            raise CohortError(
                f"expected shape {tuple(entry['shape'])} {entry.get('dtype', '')} as in the "
                f"manifest, received {array.shape} {array.dtype}", file=file, subject=subject,
                fix=DAMAGED_FIX)
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
        """Cheap checks on read: tables intact, every file present at its recorded size.

        Run by :func:`open_cohort`; the tables are hashed (once per process), the arrays
        only checked for presence and size (each is hashed when first read, see
        :meth:`check_checksums`).
        """
        subjects = self.subjects  # reading a table checks its checksum
        self._check_file("rois.parquet", self.manifest["tables"]["rois.parquet"], what="table")
        table = self.path / "subjects.parquet"
        missing = [c for c in ("scan", "subject", "session", "site", "tr", "n_timepoints",
                               "bold_file") if c not in subjects.columns]
        if missing or len(subjects) != self.manifest["n_scans"]:
            raise CohortError(
                f"expected {self.manifest['n_scans']} scans with columns scan, subject, "
                f"bold_file, ...; received {len(subjects)} rows"
                + (f" without {', '.join(missing)}" if missing else ""),
                file=table, fix=DAMAGED_FIX)
        check_unique(subjects["scan"], what="scan id", file=table)
        arrays = self.manifest["arrays"]
        for column in [c for c in subjects.columns if c.endswith("_file")]:
            for rel, scan in zip(subjects[column].tolist(), subjects["scan"].tolist()):
                if rel is None or (isinstance(rel, float) and np.isnan(rel)):
                    continue
                if rel not in arrays:
                    raise CohortError(f"{rel} is not listed in the manifest",
                                      file=self.path, subject=scan, fix=DAMAGED_FIX)
        base = os.fspath(self.path)
        for rel, entry in arrays.items():
            try:
                size = os.stat(os.path.join(base, rel)).st_size
            except FileNotFoundError:
                raise CohortError("file is missing", file=self.path / rel,
                                  subject=self._owners.get(rel), fix=DAMAGED_FIX) from None
            if "bytes" in entry and size != entry["bytes"]:
                raise CohortError(
                    f"expected {entry['bytes']} bytes as in the manifest, received {size} "
                    f"({'truncated' if size < entry['bytes'] else 'extended'})",
                    file=self.path / rel, subject=self._owners.get(rel), fix=DAMAGED_FIX)
        return self

    def check_checksums(self, *, progress=False):
        """Hash every table and array and compare with the manifest (``bsym data info``).

        Each file is hashed once per process (see :func:`checked_sha256`), so reading the
        arrays afterwards costs nothing more. Raises :class:`CohortError`; returns self.
        """
        from tqdm.auto import tqdm

        for rel, digest in self.manifest["tables"].items():
            self._check_file(rel, digest, what="table")
        arrays = self.manifest["arrays"]
        for rel in tqdm(sorted(arrays), desc="checksums", disable=not progress, unit="file"):
            self._check_file(rel, arrays[rel]["sha256"], self._owners.get(rel))
        return self

    def verify(self, *, progress=False):
        """Full validation: every checksum, every value (NaN/Inf, flat ROIs, SC shape).

        Raises :class:`CohortError` on the first problem; returns self.
        """
        from tqdm.auto import tqdm

        self.check_structure()
        self.check_checksums()
        for rel in tqdm(sorted(self.manifest["arrays"]), desc="verifying",
                        disable=not progress, unit="file"):
            file, subject = self.path / rel, self._owners.get(rel)
            array = self._load(rel)
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
                lines.append(f"label {label + ' ':<8}mean {col.mean():.3g}  sd {col.std():.3g}  "
                             f"range {col.min():.3g}..{col.max():.3g}  missing {int(col.isna().sum())}")
            else:
                counts = col.value_counts(dropna=False).sort_index()
                lines.append(f"label {label + ' ':<8}" + ", ".join(f"{k}: {v}" for k, v in counts.items()))
        lines.append(f"manifest      sha256 {self.manifest_hash}")
        return "\n".join(lines)


#: SHA-256 of the store files this process has hashed, by path, size, mtime and inode.
_DIGESTS: dict = {}


def checked_sha256(file) -> str:
    """SHA-256 of ``file``, computed once per process while the file stays unchanged.

    Store files are verified the first time a process opens them; repeated reads (every
    window of every epoch) then cost one ``stat``. A file rewritten since (another size,
    modification time or inode) is hashed again.
    """
    stat = os.stat(file)
    key = (os.path.abspath(file), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    digest = _DIGESTS.get(key)
    if digest is None:
        digest = _DIGESTS[key] = file_sha256(file)
    return digest


def _load_npy(file, subject):
    try:
        return np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as err:
        raise CohortError(f"cannot read the array ({err})", file=file, subject=subject,
                          fix=DAMAGED_FIX) from None


_MANIFEST_FIELDS = {
    "format": str, "format_version": int, "bsym_version": str, "created": str,
    "source": dict, "atlas": str, "sc_symmetric": bool, "n_rois": int, "n_scans": int,
    "n_subjects": int, "matrices": list, "labels": list, "tables": dict, "arrays": dict,
}
_OPTIONAL_FIELDS = {"host": dict, "preprocessing": dict, "roi_order": dict, CHECKSUM_FIELD: str}


def _check_manifest(manifest, file):
    """Raise :class:`CohortError` unless ``manifest`` is complete, consistent and intact."""
    fix = ("restore manifest.json from a backup, or delete the store folder and re-create "
           "it (`bsym data simulate` / `bsym data import ...`)")

    def damaged(problem):
        return CohortError(f"{problem}: the manifest was edited or damaged after the store "
                           "was written", file=file, fix=fix)

    recorded = manifest.get(CHECKSUM_FIELD)
    if recorded is not None or manifest["format_version"] >= 2:
        content = {k: v for k, v in manifest.items() if k != CHECKSUM_FIELD}
        if recorded != json_sha256(content):
            raise damaged(f"its content does not match its {CHECKSUM_FIELD}"
                          if recorded else f"no {CHECKSUM_FIELD} field")
    unknown = sorted(set(manifest) - set(_MANIFEST_FIELDS) - set(_OPTIONAL_FIELDS))
    if unknown:
        raise damaged(f"unknown field {unknown[0]!r}")
    for key, kind in {**_MANIFEST_FIELDS, **_OPTIONAL_FIELDS}.items():
        if key not in manifest:
            if key in _MANIFEST_FIELDS:
                raise damaged(f"no {key!r} field")
        elif not isinstance(manifest[key], kind) or (kind is int and isinstance(
                manifest[key], bool)):
            raise damaged(f"field {key!r} is a {type(manifest[key]).__name__}, expected a "
                          f"{kind.__name__}")
    if min(manifest["n_rois"], manifest["n_scans"], manifest["n_subjects"]) < 1:
        raise damaged("n_rois, n_scans and n_subjects must be positive")
    if not set(manifest["matrices"]) <= set(MATRIX_KINDS):
        raise damaged(f"matrices {manifest['matrices']} are not among {MATRIX_KINDS}")
    if not all(isinstance(label, str) for label in manifest["labels"]):
        raise damaged("labels must be column names")
    tables = manifest["tables"]
    if sorted(tables) != sorted(TABLES) or not all(isinstance(v, str) for v in tables.values()):
        raise damaged(f"expected tables {', '.join(TABLES)} with their SHA-256")
    for rel, entry in manifest["arrays"].items():
        if not ARRAY_FILE.fullmatch(rel):
            raise damaged(f"array {rel!r} is not a store file name")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("shape"), list)
                and all(isinstance(n, int) and n >= 0 for n in entry["shape"])
                and isinstance(entry.get("bytes", 0), int)
                and isinstance(entry.get("dtype", ""), str)):
            raise damaged(f"array {rel!r} lacks its sha256 or shape")


def _interrupted_replacement(path: Path):
    """The previous store left beside ``path`` by a replacement that was cut short."""
    for old in sorted(path.parent.glob(f".{path.name}.old-*")):
        if _marked_manifest(old) is not None:
            return old
    return None


def open_cohort(path, *, verify=False) -> Cohort:
    """Open a cohort store for lazy reading.

    The manifest and both tables are checked at once, every array's presence and size
    too; each array is hashed and compared with the manifest when first read.

    Parameters
    ----------
    path : str or Path
        The store directory.
    verify : bool
        Also re-hash every array and check every value (slow on big stores).
    """
    path = Path(path)
    if not path.is_dir():
        old = _interrupted_replacement(path) if not path.exists() else None
        if old is not None:
            raise CohortError(
                "no such store directory, but the store it was replacing is intact beside it "
                f"({old.name}): the replacement was interrupted", file=path,
                fix=f"rename {old} to {path}, or write the new store again")
        raise CohortError("no such store directory", file=path,
                          fix="create it with `bsym data simulate` or `bsym data import`")
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise CohortError(
            "not a complete cohort store (no manifest.json)", file=path,
            fix="the write was interrupted or this is not a bsym store; re-run the import",
        )
    try:
        manifest = json.loads(manifest_file.read_bytes())
    except ValueError as err:  # invalid JSON or invalid UTF-8
        raise CohortError(f"manifest is not valid JSON ({err})", file=manifest_file,
                          fix="restore it from a backup, or delete the store folder and "
                          "re-create it") from None
    except OSError as err:
        raise CohortError(f"cannot read the manifest ({err.strerror or err})",
                          file=manifest_file, fix="make the store readable to you") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        received = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise CohortError(f"expected format {FORMAT!r}, received {str(received)[:40]!r}",
                          file=manifest_file, fix="point bsym at a cohort store directory "
                          "(or, if this is a damaged one, re-create it)")
    version = manifest.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CohortError(f"format_version is {str(version)[:20]!r}, expected a number",
                          file=manifest_file, fix="restore manifest.json from a backup, or "
                          "delete the store folder and re-create it")
    if version > FORMAT_VERSION:
        raise CohortError(
            f"store format version {manifest['format_version']} is newer than this bsym "
            f"reads ({FORMAT_VERSION})", file=manifest_file, fix="upgrade bsym",
        )
    manifest.setdefault("format_version", version)
    _check_manifest(manifest, manifest_file)
    cohort = Cohort(path, manifest)
    cohort.check_structure()
    if verify:
        cohort.verify()
    return cohort
