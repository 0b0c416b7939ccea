"""Bring your own data: a plain folder of region time series and connectomes.

Layout
------
::

    FOLDER/
      participants.tsv            one line per scan (required)
      dataset.json                options (optional)
      rois.tsv                    ROI names, networks, coordinates (optional)
      func/<subject>.<ext>                 one fMRI scan, ROIs x time
      func/<subject>_ses-<session>.<ext>   ... when participants.tsv has a session
      sc/<subject>.<ext>          structural connectivity, ROIs x ROIs (optional)
      lengths/<subject>.<ext>     fibre lengths, ROIs x ROIs (optional)
      confounds/<scan>.tsv        time x regressors, with a header (optional)

``<ext>`` is ``npy``, ``csv``, ``tsv`` or ``mat``; exactly one file per scan.
``<scan>`` is the func file name without its extension. In the store, scans
are named ``<subject>_ses-<session>`` (session ``1`` when there is none).

``participants.tsv`` (tab-separated, header row):

* ``subject`` (or BIDS ``participant_id``): required; used as written in file
  names (``sub-01`` and ``01`` are different subjects).
* ``session``: optional; a subject may have several lines with different
  sessions. The same subject and session twice is an error.
* ``tr``: repetition time in seconds; required unless ``dataset.json`` gives a
  default ``"tr"`` (a value in the column wins for its line).
* ``site``: optional (default from ``dataset.json``, else ``unknown``).
* ``family``: optional, for group-aware splits.
* any other column is a label (``age``, ``sex``, ``diagnosis``, ...); empty
  cells and ``n/a`` are missing values.

Array files:

* fMRI is read as ROIs x time. Files stored time x ROIs need
  ``"orientation": "time_x_rois"`` in ``dataset.json`` (for every func file).
* ``.csv``/``.tsv``: numbers only, plus optionally one header row and/or one
  first column of names (a header whose first cell is empty, as pandas
  writes, marks both).
* ``.mat``: the file's only 2-D numeric array, else the variable named in
  ``dataset.json`` (``"mat_variable": {"func": "tc", "sc": "sc"}``), else a
  common name (``tc``, ``bold``, ``timeseries`` for fMRI; ``sc``,
  ``connectome`` for SC; ``len``, ``lengths`` for lengths). MATLAB v7.3 files
  need h5py.
* SC: non-negative (raw streamline counts; bsym scales them itself), same ROI
  order as fMRI, symmetric unless imported with ``sc_symmetric=False``. When
  ``sc/`` exists, every subject needs a file (the same holds for
  ``lengths/`` and ``confounds/``).
* Confounds are stored beside the scan, not regressed out: clean the series
  before exporting them.

``rois.tsv`` (tab-separated): ``name`` required; ``network``, ``x``, ``y``,
``z`` (mm) optional; ``index`` optional (rows are sorted by it). One line per
ROI, in the order of the rows of the fMRI arrays.

``dataset.json`` keys (all optional): ``name``, ``atlas``, ``tr``, ``site``,
``orientation`` (``rois_x_time`` or ``time_x_rois``), ``mat_variable``
(``{"func": ..., "sc": ..., "lengths": ...}``), ``preprocessing`` (a dict
recorded in the manifest, e.g. ``{"bandpass": [0.01, 0.1]}``).

Every problem (a missing or unreadable file, wrong shape, NaN/Inf, a constant
ROI, ROI counts that differ between fMRI and SC, an asymmetric SC, negative
counts, duplicate subject ids, a missing or bad TR, a func file that has no
line in participants.tsv) stops the import with a message that names the file
and the subject, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

from bsym.data.checks import check_tr
from bsym.data.errors import CohortError
from bsym.data.sources.readers import (
    ARRAY_SUFFIXES,
    ID_COLUMNS,
    find_array_file,
    orient,
    progress_bar,
    read_array,
    read_confounds,
    read_json,
    read_participants,
    read_rois,
    suffix,
)
from bsym.data.store import RESERVED_COLUMNS, CohortWriter, open_cohort

OPTIONS = ("name", "atlas", "tr", "site", "orientation", "mat_variable", "preprocessing")
ORIENTATIONS = ("rois_x_time", "time_x_rois")
MATRIX_DIRS = ("sc", "lengths")


def _options(folder: Path) -> dict:
    path = folder / "dataset.json"
    if not path.is_file():
        return {}
    options = read_json(path)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise CohortError(f"unknown key(s) {', '.join(unknown)}; known keys: "
                          f"{', '.join(OPTIONS)}", file=path, fix="fix the key names")
    if options.get("orientation", "rois_x_time") not in ORIENTATIONS:
        raise CohortError(f"expected orientation {' or '.join(ORIENTATIONS)}, received "
                          f"{options['orientation']!r}", file=path, fix="fix 'orientation'")
    variables = options.get("mat_variable", {})
    if not isinstance(variables, dict) or set(variables) - {"func", "sc", "lengths"}:
        raise CohortError(f"expected mat_variable as {{'func': ..., 'sc': ..., 'lengths': ...}}, "
                          f"received {variables!r}", file=path, fix="fix 'mat_variable'")
    if not isinstance(options.get("preprocessing", {}), dict):
        raise CohortError("expected 'preprocessing' to be an object", file=path,
                          fix='write "preprocessing": {"name": value, ...}')
    if "tr" in options:
        check_tr(options["tr"], file=path, subject=None)
    return options


def _scan_stem(row) -> str:
    return f"{row['subject']}_ses-{row['session']}" if row["session"] else row["subject"]


def _scans(folder: Path, options: dict) -> list:
    """participants.tsv lines, checked, with their tr/site/labels and func file."""
    table = folder / "participants.tsv"
    if not table.is_file():
        raise CohortError("expected participants.tsv (one line per scan), it is missing",
                          file=table, fix="create it with at least the columns subject and tr")
    rows = read_participants(table)
    if not rows:
        raise CohortError("participants.tsv has no lines", file=table,
                          fix="add one line per scan")
    scans = []
    for row in rows:
        stem = _scan_stem(row)
        tr = row.get("tr")
        if tr is None:
            tr = options.get("tr")
        if tr is None:
            raise CohortError(
                f"missing TR (line {row['_line']}): no value in the 'tr' column and no "
                "default in dataset.json", file=table, subject=stem,
                fix='add a tr column (seconds) or {"tr": 2.0} to dataset.json',
            )
        tr = check_tr(tr, file=table, subject=stem)
        func = find_array_file(folder / "func", stem, subject=stem)
        if func is None:
            raise CohortError(
                f"expected the fMRI file func/{stem}.<{'|'.join(e[1:] for e in ARRAY_SUFFIXES)}>"
                f" for line {row['_line']} of participants.tsv, none found",
                file=folder / "func", subject=stem,
                fix="add the file, fix the subject/session in participants.tsv, or delete "
                "the line",
            )
        labels = {k: v for k, v in row.items()
                  if k not in ID_COLUMNS and not k.startswith("_")}
        reserved = sorted(set(labels) & set(RESERVED_COLUMNS))
        if reserved:
            raise CohortError(f"column name(s) {', '.join(reserved)} are reserved", file=table,
                              fix="rename those columns")
        scans.append({"stem": stem, "subject": row["subject"],
                      "session": row["session"] or "1",
                      "site": row.get("site") or options.get("site", "unknown"), "tr": tr,
                      "family": row.get("family") or None, "func": func, "labels": labels})
    _check_unlisted(folder / "func", {s["stem"] for s in scans})
    return scans


def _check_unlisted(func_dir: Path, stems: set) -> None:
    for path in sorted(func_dir.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.stem not in stems:
            raise CohortError(
                "this fMRI file has no line in participants.tsv", file=path,
                subject=path.stem,
                fix="add a line for it (subject and session) or move the file out of func/",
            )


def _matrix_file(folder: Path, kind: str, subject: str):
    path = find_array_file(folder / kind, subject, subject=subject)
    if path is None:
        raise CohortError(
            f"expected {kind}/{subject}.<npy|csv|tsv|mat> because {kind}/ exists, none found",
            file=folder / kind, subject=subject,
            fix=f"add the {kind} file for this subject or remove the subject",
        )
    return path


def _confounds(folder: Path, scan: dict, n_timepoints: int, columns):
    path = folder / "confounds" / f"{scan['stem']}.tsv"
    if not path.is_file():
        raise CohortError("expected a confounds file because confounds/ exists, it is missing",
                          file=path, subject=scan["stem"],
                          fix="add it for every scan or remove the confounds folder")
    values, names = read_confounds(path, subject=scan["stem"], n_timepoints=n_timepoints)
    if columns is not None and names != columns:
        raise CohortError(f"expected the confound columns {', '.join(columns)}, received "
                          f"{', '.join(names)}", file=path, subject=scan["stem"],
                          fix="use the same confound columns, in the same order, for every scan")
    return values, names


def import_folder(folder, out, *, sc_symmetric=True, overwrite=False, progress=True,
                  roi_order="original", roi_seed=0):
    """Import a folder laid out as described in :mod:`bsym.data.sources.folder`.

    Parameters
    ----------
    folder : str or Path
        The input folder (with ``participants.tsv`` and ``func/``).
    out : str or Path
        Cohort store to create.
    sc_symmetric : bool
        Require symmetric SC (set False for directed connectomes).
    overwrite : bool
        Replace an existing store at ``out``.
    progress : bool
        Show a progress bar over scans.
    roi_order : {"original", "shuffled"}
        Store the ROIs in the source's order, or in a fixed permutation drawn from
        ``roi_seed`` (recorded in the manifest; see :class:`bsym.data.store.CohortWriter`).
    roi_seed : int
        Seed of the shuffled order.

    Returns
    -------
    Cohort
        The new store, opened.
    """
    folder = Path(folder)
    if not (folder / "func").is_dir():
        raise CohortError("expected a func/ folder with one fMRI file per scan", file=folder,
                          fix="see the folder layout in `bsym data import folder --help`")
    options = _options(folder)
    scans = _scans(folder, options)
    rois = read_rois(folder / "rois.tsv") if (folder / "rois.tsv").is_file() else None
    variables = options.get("mat_variable", {})
    orientation = options.get("orientation", "rois_x_time")
    kinds = [k for k in MATRIX_DIRS if (folder / k).is_dir()]
    _check_extra_matrices(folder, kinds, {s["subject"] for s in scans})
    with_confounds = (folder / "confounds").is_dir()
    source = {"name": "folder", "path": str(folder.resolve()),
              "dataset": options.get("name", folder.name)}
    preprocessing = dict(options.get("preprocessing", {}))
    preprocessing["orientation_on_disk"] = orientation
    with CohortWriter(out, source=source, atlas=options.get("atlas", "unknown"),
                      preprocessing=preprocessing, sc_symmetric=sc_symmetric,
                      overwrite=overwrite, roi_order=roi_order, roi_seed=roi_seed) as writer:
        if rois is not None:
            names, networks, coords = rois
            writer.set_rois(names, networks=networks, coords=coords, file=folder / "rois.tsv")
        confound_names = None
        for scan in progress_bar(scans, desc="folder", progress=progress):
            bold = read_array(scan["func"], subject=scan["stem"],
                              variable=variables.get("func"), kind="bold")
            bold = orient(bold, orientation, file=scan["func"], subject=scan["stem"])
            confounds = None
            if with_confounds:
                confounds, confound_names = _confounds(folder, scan, bold.shape[1],
                                                       confound_names)
            writer.add_scan(subject=scan["subject"], session=scan["session"],
                            site=scan["site"], tr=scan["tr"], bold=bold, confounds=confounds,
                            origin=scan["func"], family=scan["family"], **scan["labels"])
        for subject in dict.fromkeys(s["subject"] for s in scans):
            for kind in kinds:
                path = _matrix_file(folder, kind, subject)
                matrix = read_array(path, subject=subject, variable=variables.get(kind),
                                    kind=kind)
                writer.add_matrix(kind, subject, matrix, origin=path)
        if confound_names is not None:
            writer.preprocessing["confound_columns"] = confound_names
            writer.preprocessing["confounds"] = "stored, not regressed out"
    return open_cohort(out)


def _check_extra_matrices(folder: Path, kinds, subjects: set) -> None:
    for kind in kinds:
        for path in sorted((folder / kind).iterdir()):
            if (path.is_file() and not path.name.startswith(".")
                    and suffix(path) in ARRAY_SUFFIXES and path.stem not in subjects):
                raise CohortError(
                    f"this {kind} file belongs to no subject in participants.tsv", file=path,
                    subject=path.stem, fix="add the subject's scans or remove the file",
                )
