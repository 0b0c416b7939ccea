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
  cells and ``n/a`` are missing values. A label (or ``site``) column has one
  coding: all numbers or all words, one spelling per category.
* UTF-8, tab-separated, unique column names, one cell per column on every line.

Array files:

* fMRI is read as ROIs x time. Files stored time x ROIs need
  ``"orientation": "time_x_rois"`` in ``dataset.json`` (for every func file).
  A file whose time axis has the ROI count of ``rois.tsv``, the SC or the
  scans before it, or (with none of these) has more ROIs than time points, is
  refused as transposed.
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
line in participants.tsv, and anything ambiguous: duplicated columns, labels
coded several ways, fMRI that looks transposed) stops the import with a
message that names the file and the subject, and nothing is written.
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
    scans, lines = [], {}
    for row in rows:
        stem = _scan_stem(row)
        if stem in lines:
            raise CohortError(
                f"lines {lines[stem]} and {row['_line']} both point to the fMRI file "
                f"func/{stem}.<ext> (subject + _ses- + session)", file=table, subject=stem,
                fix="give every line its own scan: fix the subject or session of one line",
            )
        lines[stem] = row["_line"]
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
        matrix_counts = _matrix_roi_counts(folder, kinds, scans[0]["subject"], variables)
        known = dict(matrix_counts)
        if rois is not None:
            known[len(rois[0])] = f"rois.tsv lists {len(rois[0])} ROIs"
        for k, scan in enumerate(progress_bar(scans, desc="folder", progress=progress)):
            bold = _read_func(scan, variables, orientation)
            _check_orientation(bold, known, orientation, file=scan["func"],
                               subject=scan["stem"])
            if k == 0 and rois is not None and len(rois[0]) not in matrix_counts:
                _check_roi_table(folder, len(rois[0]), bold, scans, variables, orientation)
            known.setdefault(bold.shape[0], f"func/{scan['func'].name} has {bold.shape[0]} ROIs")
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


def _read_func(scan, variables, orientation):
    bold = read_array(scan["func"], subject=scan["stem"], variable=variables.get("func"),
                      kind="bold")
    return orient(bold, orientation, file=scan["func"], subject=scan["stem"])


def _on_disk(bold, orientation) -> str:
    n_rois, n_time = bold.shape
    return f"{n_rois} x {n_time}" if orientation == "rois_x_time" else f"{n_time} x {n_rois}"


def _matrix_roi_counts(folder: Path, kinds, subject, variables) -> dict:
    """ROI counts the first subject's SC/lengths state: {count: where}."""
    counts = {}
    for kind in kinds:
        path = _matrix_file(folder, kind, subject)
        shape = read_array(path, subject=subject, variable=variables.get(kind), kind=kind).shape
        if shape[0] == shape[1]:
            counts.setdefault(shape[0], f"{kind}/{path.name} is {shape[0]} x {shape[1]}")
    return counts


def _check_orientation(bold, known: dict, orientation, *, file, subject) -> None:
    """Refuse fMRI whose shape says it is more likely stored the other way round.

    ``known`` maps ROI counts already stated (rois.tsv, SC, earlier scans) to
    where they are stated. A scan is transposed when its time axis has a known
    ROI count and its ROI axis has none; with nothing known, more ROIs than time
    points is taken as transposed.
    """
    n_rois, n_time = bold.shape
    if n_rois in known:
        return
    declared = "ROIs x time" if orientation == "rois_x_time" else "time x ROIs"
    other = "time x ROIs" if orientation == "rois_x_time" else "ROIs x time"
    fix = f"save it as {declared}: np.save(path, x.T)"
    if orientation == "rois_x_time":
        fix += (' (or, if every func file is stored time x ROIs, set "orientation": '
                '"time_x_rois" in dataset.json)')
    else:
        fix += ' (dataset.json says "orientation": "time_x_rois" for every func file)'
    if n_time in known:
        raise CohortError(
            f"stored {other} ({_on_disk(bold, orientation)}), not {declared}: "
            f"{known[n_time]}", file=file, subject=subject, fix=fix,
        )
    if not known and n_rois > n_time:
        raise CohortError(
            f"looks stored {other} ({_on_disk(bold, orientation)}): read as {declared} it "
            f"has {n_rois} ROIs but only {n_time} time points", file=file,
            subject=subject, fix=fix + "; if it really has more ROIs than time points, add "
            "rois.tsv (one line per ROI) to confirm the ROI count",
        )


def _check_roi_table(folder: Path, n_listed, bold, scans, variables, orientation) -> None:
    """Blame rois.tsv, not the first func file, when the fMRI files agree among themselves."""
    n_rois = bold.shape[0]
    if n_rois == n_listed:
        return
    others = []
    for scan in scans[1:4]:
        try:
            others.append(_read_func(scan, variables, orientation).shape[0])
        except CohortError:
            continue
    if n_listed in others:
        return  # the first func file is the odd one out: the store names it
    first = scans[0]["func"]
    raise CohortError(
        f"rois.tsv lists {n_listed} ROIs but the fMRI has {n_rois} (func/{first.name} is "
        f"{_on_disk(bold, orientation)}"
        + (f"; the next {len(others)} func file(s) have {', '.join(map(str, others))} ROIs"
           if others else "") + ")",
        file=folder / "rois.tsv",
        fix=f"give rois.tsv one line per ROI ({n_rois} after the header), in the order of the "
        "fMRI rows, or delete rois.tsv",
    )


def _check_extra_matrices(folder: Path, kinds, subjects: set) -> None:
    for kind in kinds:
        for path in sorted((folder / kind).iterdir()):
            if (path.is_file() and not path.name.startswith(".")
                    and suffix(path) in ARRAY_SUFFIXES and path.stem not in subjects):
                raise CohortError(
                    f"this {kind} file belongs to no subject in participants.tsv", file=path,
                    subject=path.stem, fix="add the subject's scans or remove the file",
                )
