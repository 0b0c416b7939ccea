"""Public datasets downloaded by nilearn's fetchers (needs internet on first use).

=============  ==============================  ============================  ===============
name           nilearn fetcher                 regions                       labels
=============  ==============================  ============================  ===============
``abide``      ``fetch_abide_pcp`` (C-PAC,     CC200 ROI series shipped by   diagnosis, age,
               band-pass, no GSR, QC'd)        ABIDE Preprocessed (200)      sex, site
``adhd``       ``fetch_adhd`` (40 subjects)    MSDL probabilistic atlas      diagnosis, age,
                                               (39, NiftiMapsMasker)         sex, site
``development`` ``fetch_development_fmri``     MSDL probabilistic atlas      age, child_adult,
               (155 subjects, movie)           (39, NiftiMapsMasker)         sex, handedness
=============  ==============================  ============================  ===============

* ``abide``: ``diagnosis`` is ``ASD`` (DX_GROUP 1) or ``control`` (2), ``sex``
  ``M`` (1) or ``F`` (2), ``age`` = AGE_AT_SCAN, ``site`` = SITE_ID. The ROI
  files carry no TR, so it comes from :data:`ABIDE_SITE_TR` (ABIDE I scan
  parameters per site; an unlisted site gets 2.0 s and is listed under
  ``tr_assumed`` in the manifest).
* ``adhd`` and ``development``: the NIfTI images are parcellated with the MSDL
  maps (names, networks and MNI coordinates come with the atlas), regressing
  out every column of the confounds file that nilearn provides (the reduced
  fMRIPrep set for ``development``; NaN in first rows set to 0). TR is the
  fetcher's ``t_r`` (2.0 s for both), else the NIfTI header.
* ROIs that are constant (e.g. all zero: outside the field of view) or hold
  NaN in any downloaded scan are dropped for every scan, because the data
  cannot be fixed at the source; the manifest lists them under
  ``dropped_rois``. (Local imports fail on such ROIs instead.)
* Without internet the fetchers fail; the error says how to import local files
  with ``bsym data import folder`` or ``bsym data import bids`` instead.
  ``data_dir`` is passed to nilearn (default: ``~/nilearn_data``), so files
  downloaded once are reused offline.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from bsym.data.errors import CohortError
from bsym.data.sources.readers import flat_rois, progress_bar, read_confounds
from bsym.data.store import CohortWriter, check_store_output, open_cohort

#: ABIDE I repetition time (seconds) per SITE_ID, from the per-site scan
#: parameter sheets of ABIDE I (fcon_1000.projects.nitrc.org/indi/abide/).
ABIDE_SITE_TR = {
    "CALTECH": 2.0, "CMU": 2.0, "KKI": 2.5, "LEUVEN_1": 1.656, "LEUVEN_2": 1.656,
    "MAX_MUN": 3.0, "NYU": 2.0, "OHSU": 2.5, "OLIN": 1.5, "PITT": 1.5, "SBL": 2.2,
    "SDSU": 2.0, "STANFORD": 2.0, "TRINITY": 2.0, "UCLA_1": 3.0, "UCLA_2": 3.0,
    "UM_1": 2.0, "UM_2": 2.0, "USM": 2.0, "YALE": 2.0,
}
ABIDE_DEFAULT_TR = 2.0
ABIDE_DERIVATIVE = "rois_cc200"
OFFLINE_FIX = ("nilearn's fetchers need internet access on first use (files are cached in "
               "data_dir afterwards); offline, import local files with `bsym data import "
               "folder` or `bsym data import bids`")
NAMES = ("abide", "adhd", "development")


def _fetch(fetcher, what, data_dir, **kwargs):
    """Call a nilearn fetcher, turning download failures into a CohortError."""
    try:
        return fetcher(data_dir=None if data_dir is None else str(data_dir), verbose=0,
                       **kwargs)
    except (OSError, ConnectionError) as err:  # requests' and urllib's errors are OSErrors
        raise CohortError(f"could not download {what} ({type(err).__name__}: {err})",
                          file=data_dir or "~/nilearn_data", fix=OFFLINE_FIX) from None


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf8", "replace")
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def _drop_flat(records, names):
    """Drop ROIs flat in any scan; returns the records, kept names and a manifest note."""
    for rec in records:
        if rec["bold"].ndim != 2 or rec["bold"].shape[0] != len(names):
            raise CohortError(
                f"expected {len(names)} ROIs x time, received shape {rec['bold'].shape}",
                file=rec["origin"], subject=rec["scan"],
                fix="delete the cached file so nilearn downloads it again",
            )
    flat = {}
    for rec in records:
        for i in flat_rois(rec["bold"]):
            flat.setdefault(int(i), []).append(rec["scan"])
    if not flat:
        return records, names, None
    keep = [i for i in range(len(names)) if i not in flat]
    if not keep:
        raise CohortError("every ROI is constant in some scan", file=records[0]["origin"],
                          subject=records[0]["scan"], fix="check the downloaded files")
    for rec in records:
        rec["bold"] = rec["bold"][keep]
    note = {names[i]: scans[:10] + ([f"... {len(scans) - 10} more"] if len(scans) > 10 else [])
            for i, scans in sorted(flat.items())}
    return records, [names[i] for i in keep], note


def _write(out, records, *, source, atlas, preprocessing, rois, options, progress):
    names, networks, coords = rois
    records, kept, dropped = _drop_flat(records, names)
    if dropped:
        index = [names.index(n) for n in kept]
        networks = None if networks is None else [networks[i] for i in index]
        coords = None if coords is None else np.asarray(coords)[index]
        preprocessing["dropped_rois"] = dropped
        preprocessing["dropped_rois_reason"] = ("constant (e.g. all zero) in the listed "
                                                "scans; dropped for every scan")
    with CohortWriter(out, source=source, atlas=atlas, preprocessing=preprocessing,
                      **options) as writer:
        writer.set_rois(kept, networks=networks, coords=coords, file=atlas)
        for rec in progress_bar(records, desc="storing", progress=progress):
            writer.add_scan(rec["scan"], subject=rec["subject"], session="1",
                            site=rec["site"], tr=rec["tr"], bold=rec["bold"],
                            origin=rec["origin"], **rec["labels"])
    return open_cohort(out)


def _check_out(out, overwrite):
    check_store_output(out, overwrite=overwrite)  # before any download


# -- ABIDE ----------------------------------------------------------------------------
def _abide_labels(row):
    dx = {1: "ASD", 2: "control"}.get(_int(row.get("DX_GROUP")))
    sex = {1: "M", 2: "F"}.get(_int(row.get("SEX")))
    age = pd.to_numeric(row.get("AGE_AT_SCAN"), errors="coerce")
    return {"diagnosis": dx, "age": None if pd.isna(age) else float(age), "sex": sex}


def _int(value):
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _abide_series(entry, subject):
    if isinstance(entry, (str, Path)):
        try:
            return np.loadtxt(entry, ndmin=2), str(entry)
        except (OSError, ValueError) as err:
            raise CohortError(f"cannot read the ROI time series ({err})", file=entry,
                              subject=subject, fix="delete the file so nilearn downloads it "
                              "again") from None
    return np.asarray(entry, dtype=np.float64), None


def _import_abide(out, n_subjects, data_dir, options, progress):
    from nilearn import datasets

    bunch = _fetch(datasets.fetch_abide_pcp, "ABIDE Preprocessed", data_dir,
                   n_subjects=n_subjects, pipeline="cpac", band_pass_filtering=True,
                   global_signal_regression=False, derivatives=[ABIDE_DERIVATIVE],
                   quality_checked=True)
    pheno = pd.DataFrame(bunch["phenotypic"]).reset_index(drop=True)
    series = list(bunch[ABIDE_DERIVATIVE])
    if len(series) != len(pheno):
        raise CohortError(f"{len(series)} ROI files but {len(pheno)} phenotype rows",
                          file=data_dir or "~/nilearn_data", fix="delete the cached ABIDE "
                          "files so nilearn downloads them again")
    records, assumed = [], set()
    for entry, (_, row) in zip(series, pheno.iterrows()):
        subject = str(_int(row.get("SUB_ID")) or row.get("FILE_ID"))
        bold, origin = _abide_series(entry, subject)
        site = str(_text(row.get("SITE_ID")) or "unknown").strip()
        if site not in ABIDE_SITE_TR:
            assumed.add(site)
        records.append({
            "scan": f"{subject}_ses-1", "subject": subject, "site": site,
            "tr": ABIDE_SITE_TR.get(site, ABIDE_DEFAULT_TR), "bold": bold.T,
            "origin": origin or f"ABIDE {row.get('FILE_ID', subject)}_{ABIDE_DERIVATIVE}.1D",
            "labels": _abide_labels(row),
        })
    if not records:
        raise CohortError("the fetcher returned no subjects", file=data_dir or "~/nilearn_data",
                          fix="check n_subjects")
    n_rois = records[0]["bold"].shape[0]
    preprocessing = {"pipeline": "cpac", "band_pass_filtering": True,
                     "global_signal_regression": False, "quality_checked": True,
                     "derivative": ABIDE_DERIVATIVE, "tr_source": "ABIDE_SITE_TR table"}
    if assumed:
        preprocessing["tr_assumed"] = {s: ABIDE_DEFAULT_TR for s in sorted(assumed)}
    return _write(out, records, source={"name": "abide", "fetcher": "fetch_abide_pcp"},
                  atlas="CC200 (Craddock 2012)", preprocessing=preprocessing,
                  rois=([f"cc200_{i:03d}" for i in range(1, n_rois + 1)], None, None),
                  options=options, progress=progress)


# -- ADHD and development: NIfTI + MSDL -----------------------------------------------
def _msdl(data_dir):
    from nilearn import datasets

    atlas = _fetch(datasets.fetch_atlas_msdl, "the MSDL atlas", data_dir)
    names = [str(_text(n)) for n in atlas["labels"]]
    networks = atlas.get("networks")
    networks = None if networks is None else [str(_text(n)) for n in networks]
    coords = atlas.get("region_coords")
    coords = None if coords is None else np.asarray(coords, dtype=float)
    return atlas["maps"], (names, networks, coords)


def _parcellate(maps, func, confounds_file, tr, subject):
    """MSDL region series (ROIs x time) of one NIfTI scan, and its TR."""
    import nibabel as nib
    from nilearn.maskers import NiftiMapsMasker

    try:
        img = nib.load(func)
    except (OSError, ValueError, EOFError) as err:
        raise CohortError(f"cannot read the NIfTI image ({err})", file=func, subject=subject,
                          fix="delete it so nilearn downloads it again") from None
    if tr is None:
        zooms = img.header.get_zooms()
        tr = float(zooms[3]) if len(zooms) > 3 and zooms[3] > 0 else None
    if tr is None:
        raise CohortError("no TR from the fetcher or the NIfTI header", file=func,
                          subject=subject, fix="report this to the bsym developers")
    regressors = None
    if confounds_file is not None:
        regressors, _ = read_confounds(Path(confounds_file), subject=subject,
                                       n_timepoints=img.shape[3], fill_leading_nan=True)
    masker = NiftiMapsMasker(maps_img=maps, standardize=False, t_r=tr,
                             resampling_target="data")
    return masker.fit_transform(img, confounds=regressors).T, float(tr)


def _column(pheno, name, what):
    if name not in pheno.columns:
        raise CohortError(f"expected a {name!r} column in the {what} phenotypes, received "
                          f"{', '.join(map(str, pheno.columns[:10]))}", file="nilearn fetcher",
                          fix="update bsym or nilearn; the fetcher's format changed")
    return pheno[name]


def _match(paths, keys, pattern, what):
    """Index of the phenotype row (by id) for each file name."""
    by_key = {k: i for i, k in enumerate(keys)}
    order = []
    for path in paths:
        found = re.search(pattern, Path(path).name)
        key = found.group(1) if found else None
        if key not in by_key:
            raise CohortError(f"no {what} phenotype row for this file (id {key!r})", file=path,
                              fix="delete the cached files so nilearn downloads them again")
        order.append(by_key[key])
    return order


def _nifti_records(bunch, maps, pheno, keys, pattern, what, labels_of, site_of, progress):
    funcs = list(bunch["func"])
    confounds = list(bunch.get("confounds") or [None] * len(funcs))
    rows = _match(funcs, keys, pattern, what)
    records = []
    for func, conf, row_index in progress_bar(list(zip(funcs, confounds, rows)),
                                              desc="parcellating", progress=progress):
        subject, row = keys[row_index], pheno.iloc[row_index]
        series, tr = _parcellate(maps, func, conf, bunch.get("t_r"), subject)
        records.append({"scan": f"{subject}_ses-1", "subject": subject, "site": site_of(row),
                        "tr": tr, "bold": series, "origin": str(func),
                        "labels": labels_of(row)})
    return records


def _float(value):
    value = pd.to_numeric(value, errors="coerce")
    return None if pd.isna(value) else float(value)


def _adhd_labels(row):
    return {"diagnosis": {1: "ADHD", 0: "control"}.get(_int(row.get("adhd"))),
            "age": _float(row.get("age")), "sex": _text(row.get("sex"))}


def _development_labels(row):
    return {"age": _float(row.get("Age")), "child_adult": _text(row.get("Child_Adult")),
            "age_group": _text(row.get("AgeGroup")), "sex": _text(row.get("Gender")),
            "handedness": _text(row.get("Handedness"))}


def _import_adhd(out, n_subjects, data_dir, options, progress):
    from nilearn import datasets

    kwargs = {} if n_subjects is None else {"n_subjects": n_subjects}
    bunch = _fetch(datasets.fetch_adhd, "ADHD-200 (nilearn sample)", data_dir, **kwargs)
    maps, rois = _msdl(data_dir)
    pheno = pd.DataFrame(bunch["phenotypic"]).reset_index(drop=True)
    keys = [str(_int(s)) for s in _column(pheno, "Subject", "ADHD")]
    records = _nifti_records(bunch, maps, pheno, keys, r"^0*(\d+)", "ADHD", _adhd_labels,
                             lambda row: str(_text(row.get("site")) or "unknown"), progress)
    return _write(out, records, source={"name": "adhd", "fetcher": "fetch_adhd"},
                  atlas="MSDL (39 regions)", preprocessing=_nifti_preprocessing(),
                  rois=rois, options=options, progress=progress)


def _import_development(out, n_subjects, data_dir, options, progress):
    from nilearn import datasets

    bunch = _fetch(datasets.fetch_development_fmri, "the development fMRI dataset", data_dir,
                   n_subjects=n_subjects, reduce_confounds=True)
    maps, rois = _msdl(data_dir)
    pheno = pd.DataFrame(bunch["phenotypic"]).reset_index(drop=True)
    keys = [str(s) for s in _column(pheno, "participant_id", "development")]
    records = _nifti_records(bunch, maps, pheno, keys, r"^(sub-[^_]+)", "development",
                             _development_labels, lambda row: "ds000228", progress)
    preprocessing = _nifti_preprocessing()
    preprocessing["task"] = "movie watching (Pixar short), not rest"
    return _write(out, records, source={"name": "development",
                                        "fetcher": "fetch_development_fmri"},
                  atlas="MSDL (39 regions)", preprocessing=preprocessing, rois=rois,
                  options=options, progress=progress)


def _nifti_preprocessing():
    import nilearn

    return {"parcellation": "nilearn NiftiMapsMasker with the MSDL maps",
            "nilearn_version": nilearn.__version__,
            "confounds_regressed": "all columns of the fetcher's confounds files",
            "standardize": False, "detrend": False, "filter": None}


def import_fetched(name, out, *, n_subjects=None, data_dir=None, overwrite=False,
                   progress=True, roi_order="original", roi_seed=0):
    """Download a public dataset with nilearn and import it.

    Parameters
    ----------
    name : {"abide", "adhd", "development"}
        Which dataset; see :mod:`bsym.data.sources.fetchers`.
    out : str or Path
        Cohort store to create.
    n_subjects : int, optional
        Limit the number of subjects (all by default; ``adhd`` has 40).
    data_dir : str or Path, optional
        nilearn's download cache (default ``~/nilearn_data``).
    overwrite : bool
        Replace an existing store at ``out``.
    progress : bool
        Show progress bars.
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
    importers = {"abide": _import_abide, "adhd": _import_adhd,
                 "development": _import_development}
    if name not in importers:
        raise ValueError(f"name must be one of {NAMES}, received {name!r}")
    if n_subjects is not None and (int(n_subjects) != n_subjects or n_subjects < 1):
        raise ValueError(f"n_subjects must be a positive integer, received {n_subjects!r}")
    _check_out(out, overwrite)
    options = {"overwrite": overwrite, "roi_order": roi_order, "roi_seed": roi_seed}
    return importers[name](out, n_subjects, data_dir, options, progress)
