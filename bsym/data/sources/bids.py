"""fMRIPrep-style derivatives: NIfTI BOLD + a label atlas, parcellated with nilearn.

Layout
------
::

    DERIVATIVES/
      participants.tsv                     (optional; or pass participants=)
      sub-<label>/[ses-<label>/]func/
        sub-<label>[_ses-<label>]_task-<label>[_run-<n>]_space-<space>_desc-preproc_bold.nii.gz
        ... the same name with .json        sidecar with RepetitionTime (optional)
        sub-<label>[_ses-<label>]_task-<label>[_run-<n>]_desc-confounds_timeseries.tsv
    CONNECTOMES/                           (optional; pass connectomes=)
      **/sub-<label>[_<entities>]_connectome.<csv|tsv|npy|mat>

* Every ``*_desc-preproc_bold.nii[.gz]`` under ``sub-*/func`` or
  ``sub-*/ses-*/func`` is one scan. When the derivatives hold several
  ``space-`` variants, the one named in the atlas file name (``space-X`` or
  ``tpl-X``) is used; otherwise the import stops and asks.
* TR: the NIfTI header (4th zoom) and the sidecar's ``RepetitionTime``; either
  is enough, and when both exist they must agree ("wrong TR" otherwise).
* Confounds: the named columns of the matching confounds file (fMRIPrep names;
  ``_desc-confounds_regressors.tsv`` of older fMRIPrep is accepted) are
  regressed out while parcellating; NaN in their first rows (derivative
  regressors) become 0. ``confounds=()`` skips this.
* Parcellation: :class:`nilearn.maskers.NiftiLabelsMasker` (mean over each
  region's voxels; the atlas is resampled to the BOLD grid, nearest
  neighbour), no filtering, no detrending, z-scoring only with
  ``standardize=True``. A region whose voxels are all zero in a scan (outside
  the brain mask or the field of view) stops the import.
* ``atlas_labels``: ``None`` (names ``region_<value>``), a list with one name
  per non-zero label value in increasing order (a leading ``Background`` entry
  is skipped), or a ``.tsv``/``.csv`` table with ``index`` and ``name`` and
  optionally ``network``, ``x``, ``y``, ``z`` (BIDS ``dseg.tsv`` style).
* SC: one connectome per subject, ROIs in the order of the atlas label values
  (QSIPrep matrices need renaming to this pattern). Connectomes of subjects
  without BOLD are ignored; subjects with BOLD but no connectome are an error.
* ``participants.tsv``: ``participant_id`` (``sub-01`` or ``01``), optional
  ``site``, ``family``; other columns become labels. Subjects missing from it
  get empty labels. The BIDS ``task`` and ``run`` entities become labels too.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from nibabel.filebasedimages import ImageFileError

from bsym.data.errors import CohortError
from bsym.data.sources.readers import (
    ARRAY_SUFFIXES,
    ID_COLUMNS,
    progress_bar,
    read_array,
    read_confounds,
    read_json,
    read_participants,
    read_tsv,
    suffix,
)
from bsym.data.store import RESERVED_COLUMNS, CohortWriter, open_cohort

BOLD_PATTERNS = ("*_desc-preproc_bold.nii.gz", "*_desc-preproc_bold.nii")
CONFOUND_SUFFIXES = ("_desc-confounds_timeseries.tsv", "_desc-confounds_regressors.tsv")
#: Entities that name a variant of the same run rather than the run itself.
VARIANT_ENTITIES = ("space", "res", "den", "desc", "cohort")
TR_RTOL = 1e-3
#: fMRIPrep confound columns regressed out by default: 6 motion parameters, CSF, white matter.
DEFAULT_CONFOUNDS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "csf",
                     "white_matter")
#: What nibabel raises for unreadable or truncated images.
NIFTI_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError)


# -- file names -----------------------------------------------------------------------
def entities(name: str) -> dict:
    """BIDS ``key-value`` entities of a file name, in order."""
    stem = name.split(".", 1)[0]
    return dict(part.split("-", 1) for part in stem.split("_") if "-" in part)


def _find_bold(root: Path) -> list:
    found = []
    for level in ("sub-*/func", "sub-*/ses-*/func"):
        for pattern in BOLD_PATTERNS:
            found += root.glob(f"{level}/{pattern}")
    return sorted(set(found))


def _pick_space(files, atlas_name, root):
    spaces = sorted({entities(f.name).get("space", "") for f in files})
    if len(spaces) <= 1:
        return files, spaces[0] if spaces else ""
    named = entities(atlas_name)
    wanted = named.get("space") or named.get("tpl")
    if wanted in spaces:
        return [f for f in files if entities(f.name).get("space", "") == wanted], wanted
    raise CohortError(
        f"the derivatives hold BOLD in several spaces ({', '.join(s or 'none' for s in spaces)}) "
        "and the atlas file name does not say which one it is in",
        file=root, fix="name the atlas file with space-<label> (or tpl-<label>) of its space",
    )


def _confounds_file(bold: Path):
    stem = bold.name.split(".", 1)[0]
    parts = [p for p in stem.split("_")[:-1] if p.split("-", 1)[0] not in VARIANT_ENTITIES]
    candidates = [bold.parent / ("_".join(parts) + s) for s in CONFOUND_SUFFIXES]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _scan_id(ents: dict) -> str:
    return "_".join(f"{k}-{v}" for k, v in ents.items() if k not in VARIANT_ENTITIES)


# -- TR -------------------------------------------------------------------------------
def _header_tr(img):
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or not zooms[3] or zooms[3] <= 0:
        return None
    unit = img.header.get_xyzt_units()[1]
    return float(zooms[3]) * {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)


def _sidecar_tr(bold: Path, subject):
    sidecar = bold.parent / (bold.name.split(".", 1)[0] + ".json")
    if not sidecar.is_file():
        return None, sidecar
    value = read_json(sidecar).get("RepetitionTime")
    if value is None:
        return None, sidecar
    try:
        return float(value), sidecar
    except (TypeError, ValueError):
        raise CohortError(f"expected RepetitionTime in seconds, received {value!r}",
                          file=sidecar, subject=subject, fix="fix the sidecar") from None


def scan_tr(bold: Path, img, subject) -> float:
    """TR from the header and the sidecar; error when they disagree or both are absent."""
    header = _header_tr(img)
    sidecar, sidecar_file = _sidecar_tr(bold, subject)
    if header is not None and sidecar is not None and not np.isclose(header, sidecar,
                                                                       rtol=TR_RTOL):
        raise CohortError(
            f"wrong TR: the NIfTI header says {header:g} s but the sidecar RepetitionTime "
            f"says {sidecar:g} s", file=bold, subject=subject,
            fix=f"correct whichever is wrong (the header zooms or {sidecar_file.name})",
        )
    tr = sidecar if sidecar is not None else header
    if tr is None:
        raise CohortError(
            "no TR: the NIfTI header has no time zoom and there is no sidecar "
            "RepetitionTime", file=bold, subject=subject,
            fix=f"add {sidecar_file.name} with RepetitionTime in seconds",
        )
    return tr


# -- atlas ----------------------------------------------------------------------------
def _load_atlas(atlas):
    import nibabel as nib

    if isinstance(atlas, (str, Path)):
        path = Path(atlas)
        if not path.is_file():
            raise CohortError("no such atlas file", file=path,
                              fix="give a 3-D label image (NIfTI) in the space of the BOLD")
        try:
            img = nib.load(path)
        except NIFTI_ERRORS as err:
            raise CohortError(f"cannot read the atlas ({err})", file=path,
                              fix="give a NIfTI label image") from None
        name = path.name
    else:
        img, name = atlas, getattr(atlas, "get_filename", lambda: None)() or "atlas image"
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
        img = nib.Nifti1Image(data, img.affine)
    if data.ndim != 3:
        raise CohortError(f"expected a 3-D label image, received shape {data.shape}",
                          file=name, fix="use a deterministic (label) atlas; probabilistic "
                          "maps are not supported here")
    if not np.allclose(data, np.round(data)):
        raise CohortError("expected integer label values, found fractions", file=name,
                          fix="use a deterministic (label) atlas")
    values = [int(v) for v in np.unique(np.round(data)) if v != 0]
    if not values:
        raise CohortError("the atlas has no labelled voxels", file=name,
                          fix="check the atlas image")
    return img, name, values


def _atlas_table(atlas_labels, values, atlas_name):
    """Names, networks and coordinates for the atlas label values."""
    if atlas_labels is None:
        return [f"region_{v}" for v in values], None, None
    if isinstance(atlas_labels, (str, Path)):
        return _labels_from_table(Path(atlas_labels), values)
    names = [str(n) for n in atlas_labels]
    if len(names) == len(values) + 1 and names[0].lower() in ("background", "unknown", "0"):
        names = names[1:]
    if len(names) != len(values):
        raise CohortError(
            f"expected {len(values)} atlas label names (one per non-zero label value), "
            f"received {len(names)}", file=atlas_name,
            fix="give one name per region in increasing label order, or a table with "
            "index and name",
        )
    return names, None, None


def _labels_from_table(path, values):
    import pandas as pd

    if not path.is_file():
        raise CohortError("no such atlas label table", file=path,
                          fix="give a .tsv with columns index and name")
    table = read_tsv(path, what="atlas label table", categories=("network",))
    missing = [c for c in ("index", "name") if c not in table.columns]
    if missing:
        raise CohortError(f"expected columns index and name, missing {', '.join(missing)}",
                          file=path, fix="add the columns (BIDS dseg.tsv style)")
    index = pd.to_numeric(table["index"], errors="coerce")
    if index.isna().any():
        raise CohortError("the index column holds non-numbers", file=path,
                          fix="use the integer label values")
    table = table.assign(index=index.astype(int)).set_index("index")
    absent = [v for v in values if v not in table.index]
    extra = [int(v) for v in table.index if v != 0 and v not in values]
    if absent or extra:
        raise CohortError(
            f"the label table and the atlas image disagree: values without a name "
            f"{absent[:5]}, names without voxels {extra[:5]}", file=path,
            fix="use the label table that belongs to this atlas image",
        )
    table = table.loc[values]
    networks = table["network"].tolist() if "network" in table.columns else None
    coords = None
    if {"x", "y", "z"} <= set(table.columns):
        coords = table[["x", "y", "z"]].apply(pd.to_numeric, errors="coerce").to_numpy()
    return table["name"].tolist(), networks, coords


def _masker(atlas_img, standardize):
    """A NiftiLabelsMasker fitted once and reused (it re-resamples only for a new grid)."""
    from nilearn.maskers import NiftiLabelsMasker

    return NiftiLabelsMasker(labels_img=atlas_img, resampling_target="data", strategy="mean",
                             standardize="zscore_sample" if standardize else False).fit()


def _parcellate(masker, bold, img, values, *, tr, confounds, subject):
    """Region series (ROIs x time), columns in the order of the atlas label ``values``."""
    from nilearn.image.resampling import BoundingBoxError

    masker.set_params(t_r=tr)
    try:
        series = masker.transform(img, confounds=confounds)
    except BoundingBoxError:  # the atlas lies wholly outside the BOLD's field of view
        _check_overlap(masker.labels_img, img, values, bold=bold, subject=subject)
        raise
    ids = [v for k, v in sorted((k, v) for k, v in masker.region_ids_.items()
                                if k != "background")]
    got = {int(v): i for i, v in enumerate(ids)}
    lost = [v for v in values if v not in got]
    if lost:
        _check_overlap(masker.labels_img, img, lost, bold=bold, subject=subject)
        raise CohortError(
            f"atlas region(s) {', '.join(map(str, lost[:5]))} have no voxels on this "
            "scan's grid", file=bold, subject=subject,
            fix="use an atlas whose regions are larger than the BOLD voxels, or drop them",
        )
    return np.asarray(series)[:, [got[v] for v in values]].T


def _check_overlap(atlas_img, img, lost, *, bold, subject):
    """Refuse an atlas whose lost regions lie outside the BOLD image (another space)."""
    from nibabel.affines import apply_affine

    labels = np.round(np.asanyarray(atlas_img.dataobj)).astype(int)
    ijk = np.argwhere(labels != 0)
    voxels = apply_affine(np.linalg.inv(img.affine), apply_affine(atlas_img.affine, ijk))
    inside = np.all((voxels > -0.5) & (voxels < np.array(img.shape[:3]) - 0.5), axis=1)
    values = labels[tuple(ijk.T)]
    outside = [v for v in lost if inside[values == v].mean() < 0.5]
    if not outside:
        return
    space = entities(bold.name).get("space")
    raise CohortError(
        f"atlas region(s) {', '.join(map(str, outside[:5]))} lie outside this BOLD image "
        f"(only {inside.mean():.0%} of the atlas's labelled voxels fall inside it): the atlas "
        "and the BOLD are in different spaces or do not overlap",
        file=bold, subject=subject,
        fix="use the atlas in the BOLD's space"
        + (f" (space-{space}: the tpl-{space} version of the atlas)" if space else "")
        + ", or register and resample it onto this BOLD (nearest neighbour); if the scan's "
        "field of view really misses those regions, drop them from the atlas",
    )


def _scan_series(scan, masker, values, confounds):
    """Parcellated, confound-cleaned series (ROIs x time) of one scan, and its TR."""
    import nibabel as nib

    bold, subject = scan["bold"], scan["id"]
    try:
        img = nib.load(bold)
    except NIFTI_ERRORS as err:
        raise CohortError(f"cannot read the NIfTI image ({err})", file=bold, subject=subject,
                          fix="re-run fMRIPrep for this scan") from None
    if img.ndim != 4:
        raise CohortError(f"expected a 4-D BOLD image, received shape {img.shape}", file=bold,
                          subject=subject, fix="give the preprocessed BOLD series")
    tr = scan_tr(bold, img, subject)
    regressors = None
    if confounds:
        conf_file = _confounds_file(bold)
        if not conf_file.is_file():
            raise CohortError(
                f"expected the confounds file {conf_file.name} next to the BOLD, it is missing",
                file=conf_file, subject=subject,
                fix="add it, or import with confounds=() to skip confound regression",
            )
        regressors, _ = read_confounds(conf_file, subject=subject, columns=confounds,
                                       n_timepoints=img.shape[3], fill_leading_nan=True)
    try:
        series = _parcellate(masker, bold, img, values, tr=tr, confounds=regressors,
                             subject=subject)
    except (OSError, EOFError, zlib.error) as err:
        raise CohortError(f"cannot read the NIfTI data ({err})", file=bold, subject=subject,
                          fix="the file is truncated; re-create it") from None
    return series, tr


# -- participants and connectomes -----------------------------------------------------
def _sub(label) -> str:
    label = str(label)
    return label if label.startswith("sub-") else f"sub-{label}"


def _participants(path):
    rows = read_participants(path)
    table = {}
    for row in rows:
        labels = {k: v for k, v in row.items() if k not in ID_COLUMNS and not k.startswith("_")}
        reserved = sorted(set(labels) & set(RESERVED_COLUMNS))
        if reserved:
            raise CohortError(f"column name(s) {', '.join(reserved)} are reserved", file=path,
                              fix="rename those columns")
        key = (_sub(row["subject"]), row.get("session") or "")
        table[key] = {"site": row.get("site") or "unknown",
                      "family": row.get("family") or None, "labels": labels}
    return table


def _lookup(table, subject, session):
    return table.get((subject, session)) or table.get((subject, "")) or {
        "site": "unknown", "family": None, "labels": {}}


def _connectomes(folder: Path) -> dict:
    if not folder.is_dir():
        raise CohortError("no such connectome folder", file=folder,
                          fix="give the folder holding sub-*_connectome.csv files")
    by_subject = {}
    for path in sorted(folder.rglob("sub-*_connectome.*")):
        if suffix(path) in ARRAY_SUFFIXES:
            by_subject.setdefault(_sub(entities(path.name)["sub"]), []).append(path)
    if not by_subject:
        raise CohortError("no sub-*_connectome.<csv|tsv|npy|mat> files", file=folder,
                          fix="name the files sub-<label>_connectome.csv")
    for subject, files in by_subject.items():
        if len(files) > 1:
            raise CohortError(
                f"several connectomes for one subject: {', '.join(f.name for f in files)}",
                file=folder, subject=subject, fix="keep one connectome per subject",
            )
    return {s: files[0] for s, files in by_subject.items()}


# -- the importer ---------------------------------------------------------------------
def _plan(root, atlas_name, connectomes, participants):
    bolds = _find_bold(root)
    if not bolds:
        raise CohortError(
            "no sub-*/[ses-*/]func/*_desc-preproc_bold.nii.gz files", file=root,
            fix="point at an fMRIPrep derivatives folder",
        )
    bolds, space = _pick_space(bolds, atlas_name, root)
    if participants is None and (root / "participants.tsv").is_file():
        participants = root / "participants.tsv"
    table = _participants(Path(participants)) if participants is not None else {}
    scans = []
    for bold in bolds:
        ents = entities(bold.name)
        subject, session = _sub(ents["sub"]), ents.get("ses", "")
        info = _lookup(table, subject, session)
        extra = {k: ents[k] for k in ("task", "run") if k in ents}
        scans.append({"bold": bold, "id": _scan_id(ents), "subject": subject,
                      "session": session or "1", "site": info["site"],
                      "family": info["family"], "labels": {**info["labels"], **extra}})
    sc = {}
    if connectomes is not None:
        found = _connectomes(Path(connectomes))
        for subject in dict.fromkeys(s["subject"] for s in scans):
            if subject not in found:
                raise CohortError(
                    f"expected a connectome {subject}[_...]_connectome.csv for this subject, "
                    "none found", file=Path(connectomes), subject=subject,
                    fix="add it, or import without connectomes",
                )
            sc[subject] = found[subject]
    return scans, sc, space, participants


def import_bids(derivatives, out, *, atlas, atlas_labels=None, connectomes=None,
                participants=None,
                confounds=DEFAULT_CONFOUNDS,
                standardize=False, overwrite=False, progress=True, roi_order="original",
                roi_seed=0):
    """Parcellate fMRIPrep derivatives with a label atlas and import them.

    See :mod:`bsym.data.sources.bids` for the expected layout.

    Parameters
    ----------
    derivatives : str or Path
        The fMRIPrep output folder (holding ``sub-*``).
    out : str or Path
        Cohort store to create.
    atlas : str, Path or nibabel image
        3-D label atlas in the space of the BOLD images.
    atlas_labels : sequence of str or str or Path, optional
        Region names (one per non-zero label, increasing) or a label table.
    connectomes : str or Path, optional
        Folder with ``sub-<label>*_connectome.csv`` structural matrices.
    participants : str or Path, optional
        Participants table; defaults to ``derivatives/participants.tsv`` if present.
    confounds : sequence of str
        Confound columns regressed out (default :data:`DEFAULT_CONFOUNDS`: ``trans_x``,
        ``trans_y``, ``trans_z``, ``rot_x``, ``rot_y``, ``rot_z``, ``csf``,
        ``white_matter``); ``()`` for none.
    standardize : bool
        z-score each region's series (off by default: the models scale inputs).
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
    import nilearn

    root = Path(derivatives)
    if not root.is_dir():
        raise CohortError("no such derivatives folder", file=root,
                          fix="give the fMRIPrep output folder")
    atlas_img, atlas_name, values = _load_atlas(atlas)
    names, networks, coords = _atlas_table(atlas_labels, values, atlas_name)
    scans, sc_files, space, participants = _plan(root, atlas_name, connectomes, participants)
    confounds = [c for c in (confounds or ()) if c]
    source = {"name": "bids", "path": str(root.resolve()), "space": space or None,
              "participants": str(participants) if participants else None,
              "connectomes": str(connectomes) if connectomes else None}
    preprocessing = {
        "parcellation": "nilearn NiftiLabelsMasker, mean over region voxels, atlas "
                        "resampled to the BOLD grid",
        "nilearn_version": nilearn.__version__, "confounds_regressed": confounds,
        "confound_nan": "leading NaN set to 0", "standardize": bool(standardize),
        "detrend": False, "filter": None, "atlas_label_values": values,
    }
    with CohortWriter(out, source=source, atlas=atlas_name, preprocessing=preprocessing,
                      sc_symmetric=True, overwrite=overwrite, roi_order=roi_order,
                      roi_seed=roi_seed) as writer:
        writer.set_rois(names, networks=networks, coords=coords, file=atlas_name)
        for subject, path in sc_files.items():
            matrix = read_array(path, subject=subject, kind="sc")
            writer.add_matrix("sc", subject, matrix, origin=path)
        masker = _masker(atlas_img, standardize)
        for scan in progress_bar(scans, desc="parcellating", progress=progress):
            series, tr = _scan_series(scan, masker, values, confounds)
            writer.add_scan(scan["id"], subject=scan["subject"], session=scan["session"],
                            site=scan["site"], tr=tr, bold=series, origin=scan["bold"],
                            family=scan["family"], **scan["labels"])
    return open_cohort(out)

