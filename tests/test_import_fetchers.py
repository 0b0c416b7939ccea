"""nilearn-fetcher importers, with the downloads replaced by files in tmp_path."""

from __future__ import annotations

import nibabel as nib
import nilearn.datasets
import numpy as np
import pandas as pd
import pytest
import requests
from _builders import AFFINE, SHAPE, assert_fails
from sklearn.utils import Bunch

from bsym.data import CohortError
from bsym.data.sources.fetchers import ABIDE_SITE_TR, import_fetched
from bsym.testing import write_toy_store

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::FutureWarning", "ignore::UserWarning")


def run(name, out, **kwargs):
    kwargs.setdefault("progress", False)
    return import_fetched(name, out, **kwargs)


def _never(**kwargs):
    raise AssertionError("the fetcher must not be called")


# -- ABIDE ----------------------------------------------------------------------------
@pytest.fixture
def abide(monkeypatch):
    """Fake fetch_abide_pcp: 4 subjects, 10 ROIs, ROI 3 all-zero in one subject."""
    rng = np.random.default_rng(0)
    pheno = pd.DataFrame({
        "SUB_ID": [50003, 50004, 51456, 50772], "FILE_ID": ["Pitt_0050003", "Pitt_0050004",
                                                            "Caltech_0051456", "Mars_0050772"],
        "SITE_ID": ["PITT", "PITT", "CALTECH", "MARS"], "DX_GROUP": [1, 2, 1, 2],
        "AGE_AT_SCAN": [24.5, 19.0, 30.1, 12.0], "SEX": [1, 2, 1, 1]})
    series = [rng.normal(size=(60, 10)) for _ in range(4)]
    series[2][:, 3] = 0.0
    calls = {}

    def fetch(**kwargs):
        calls.update(kwargs)
        n = kwargs.get("n_subjects") or 4
        return Bunch(phenotypic=pheno.iloc[:n], rois_cc200=series[:n], description="")

    monkeypatch.setattr(nilearn.datasets, "fetch_abide_pcp", fetch)
    return series, calls


def test_abide(abide, tmp_path):
    series, calls = abide
    cohort = run("abide", tmp_path / "out", data_dir=tmp_path / "cache")
    assert calls["derivatives"] == ["rois_cc200"] and calls["data_dir"] == str(tmp_path / "cache")
    table = cohort.subjects.set_index("subject")
    assert list(table.index) == ["50003", "50004", "51456", "50772"]
    assert list(table["diagnosis"]) == ["ASD", "control", "ASD", "control"]
    assert list(table["sex"]) == ["M", "F", "M", "M"]
    assert table.loc["50003", "tr"] == ABIDE_SITE_TR["PITT"] == 1.5
    assert table.loc["51456", "tr"] == 2.0 and table.loc["51456", "site"] == "CALTECH"
    assert table.loc["50004", "age"] == 19.0
    pre = cohort.manifest["preprocessing"]
    assert pre["tr_assumed"] == {"MARS": 2.0}
    assert list(pre["dropped_rois"]) == ["cc200_004"]
    assert pre["dropped_rois"]["cc200_004"] == ["51456_ses-1"]
    assert cohort.n_rois == 9 and "cc200_004" not in set(cohort.rois["name"])
    expected = np.delete(series[0].T, 3, axis=0)
    assert np.allclose(cohort.bold("50003_ses-1"), expected, rtol=1e-6)
    cohort.verify()


def test_abide_n_subjects_and_files(abide, tmp_path, monkeypatch):
    series, _ = abide
    cohort = run("abide", tmp_path / "out", n_subjects=2)
    assert cohort.manifest["n_subjects"] == 2 and cohort.n_rois == 10
    # older nilearn returned file paths; a broken file names itself
    paths = []
    for i, x in enumerate(series[:2]):
        paths.append(tmp_path / f"s{i}_rois_cc200.1D")
        np.savetxt(paths[-1], x, header=" ".join(f"#{k}" for k in range(10)))
    paths[1].write_text("1 2 3\n4 5\n")
    pheno = pd.DataFrame({"SUB_ID": [1, 2], "SITE_ID": ["NYU", "NYU"], "DX_GROUP": [1, 2],
                          "AGE_AT_SCAN": [20, 21], "SEX": [1, 2]})
    monkeypatch.setattr(nilearn.datasets, "fetch_abide_pcp",
                        lambda **kw: Bunch(phenotypic=pheno, rois_cc200=paths))
    assert_fails(lambda: run("abide", tmp_path / "o2"), tmp_path / "o2",
                 file=paths[1].name, subject="2", problem="cannot read the ROI time series")


# -- ADHD and development (NIfTI + MSDL) -------------------------------------------------
@pytest.fixture
def msdl(tmp_path, monkeypatch):
    """Fake fetch_atlas_msdl: 3 probabilistic maps on the 6x6x6 grid."""
    maps = np.zeros(SHAPE + (3,), dtype=np.float32)
    maps[:3, :, :, 0] = 1.0
    maps[3:, :3, :, 1] = 0.8
    maps[3:, 3:, :, 2] = 0.5
    path = tmp_path / "msdl_rois.nii"
    nib.save(nib.Nifti1Image(maps, AFFINE), path)
    bunch = Bunch(maps=str(path), labels=["L Aud", "R Aud", "Striate"],
                  region_coords=[(-53.3, -21.8, 7.5), (52.6, -18.0, 7.0), (0.2, -85.2, 9.6)],
                  networks=[b"Aud", b"Aud", b"Striate"])
    monkeypatch.setattr(nilearn.datasets, "fetch_atlas_msdl", lambda **kw: bunch)
    return bunch


def _nifti_subjects(folder, names, *, n_vols=30, sep=","):
    rng = np.random.default_rng(1)
    funcs, confounds = [], []
    for name in names:
        data = 100 + rng.normal(size=SHAPE + (n_vols,)).astype(np.float32)
        img = nib.Nifti1Image(data, AFFINE)
        img.header.set_zooms((3.0, 3.0, 3.0, 2.0))
        funcs.append(str(folder / f"{name}.nii.gz"))
        nib.save(img, funcs[-1])
        conf = pd.DataFrame(rng.normal(size=(n_vols, 3)), columns=["a", "b", "c"])
        conf.iloc[0, 2] = np.nan
        confounds.append(str(folder / f"{name.split('_')[0]}_regressors.csv"))
        conf.to_csv(confounds[-1], sep=sep, index=False)
    return funcs, confounds


def test_adhd(msdl, tmp_path, monkeypatch):
    funcs, confounds = _nifti_subjects(tmp_path, ["0010042_rest_tshift_RPI_voreg_mni",
                                                  "0010064_rest_tshift_RPI_voreg_mni"],
                                       sep="\t")
    pheno = pd.DataFrame({"Subject": [10064, 10042], "adhd": [1, 0], "age": [9.1, 11.3],
                          "sex": ["M", "F"], "site": ["NYU", "Peking"]})
    monkeypatch.setattr(nilearn.datasets, "fetch_adhd", lambda **kw: Bunch(
        func=funcs, confounds=confounds, phenotypic=pheno, t_r=2.0))
    cohort = run("adhd", tmp_path / "out")
    table = cohort.subjects.set_index("subject")
    assert list(table.index) == ["10042", "10064"]
    assert table.loc["10042", "diagnosis"] == "control" and table.loc["10064", "site"] == "NYU"
    assert table.loc["10042", "age"] == 11.3 and set(table["tr"]) == {2.0}
    assert list(cohort.rois["name"]) == ["L Aud", "R Aud", "Striate"]
    assert list(cohort.rois["network"]) == ["Aud", "Aud", "Striate"]
    assert np.isclose(cohort.rois["x"].iloc[0], -53.3)
    assert cohort.bold("10042_ses-1").shape == (3, 30)
    cohort.verify()


def test_development(msdl, tmp_path, monkeypatch):
    names = ["sub-pixar001_task-pixar_space-MNI_desc-preproc_bold",
             "sub-pixar123_task-pixar_space-MNI_desc-preproc_bold"]
    funcs, confounds = _nifti_subjects(tmp_path, names, sep="\t")
    pheno = pd.DataFrame({"participant_id": ["sub-pixar001", "sub-pixar123"],
                          "Age": [3.5, 25.0], "AgeGroup": ["3yo", "Adult"],
                          "Child_Adult": ["child", "adult"], "Gender": ["F", "M"],
                          "Handedness": ["R", "R"]})
    seen = {}

    def fetch(**kwargs):
        seen.update(kwargs)
        return Bunch(func=funcs, confounds=confounds, phenotypic=pheno, t_r=2)

    monkeypatch.setattr(nilearn.datasets, "fetch_development_fmri", fetch)
    cohort = run("development", tmp_path / "out", n_subjects=2)
    assert seen["n_subjects"] == 2
    table = cohort.subjects.set_index("subject")
    assert list(table["child_adult"]) == ["child", "adult"]
    assert table.loc["sub-pixar123", "age"] == 25.0 and table.loc["sub-pixar001", "sex"] == "F"
    assert cohort.manifest["preprocessing"]["task"].startswith("movie")


# -- failures ---------------------------------------------------------------------------
def test_offline_becomes_a_clear_error(tmp_path, monkeypatch):
    def offline(**kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'fcp-indi.s3.amazonaws.com'")

    monkeypatch.setattr(nilearn.datasets, "fetch_abide_pcp", offline)
    error = assert_fails(lambda: run("abide", tmp_path / "out"), tmp_path / "out",
                         problem="could not download ABIDE")
    assert "internet" in error.fix and "bsym data import folder" in error.fix


def test_offline_atlas(tmp_path, monkeypatch):
    monkeypatch.setattr(nilearn.datasets, "fetch_adhd", lambda **kw: Bunch(
        func=[], confounds=[], phenotypic=pd.DataFrame({"Subject": []}), t_r=2.0))

    def offline(**kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(nilearn.datasets, "fetch_atlas_msdl", offline)
    assert_fails(lambda: run("adhd", tmp_path / "out"), tmp_path / "out",
                 problem="could not download the MSDL atlas")


def test_existing_store_checked_before_downloading(tmp_path, monkeypatch):
    write_toy_store(tmp_path / "out")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a store\n")
    monkeypatch.setattr(nilearn.datasets, "fetch_abide_pcp", _never)
    with pytest.raises(CohortError, match="already exists"):
        run("abide", tmp_path / "out")
    with pytest.raises(CohortError, match="not a cohort store written by bsym"):
        run("abide", tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "not a store\n"


def test_unmatched_file_and_bad_arguments(msdl, tmp_path, monkeypatch):
    funcs, confounds = _nifti_subjects(tmp_path, ["0099999_rest"])
    monkeypatch.setattr(nilearn.datasets, "fetch_adhd", lambda **kw: Bunch(
        func=funcs, confounds=confounds, phenotypic=pd.DataFrame({"Subject": [1]}), t_r=2.0))
    assert_fails(lambda: run("adhd", tmp_path / "out"), tmp_path / "out",
                 file="0099999_rest.nii.gz", problem="no ADHD phenotype row")
    with pytest.raises(ValueError, match="abide"):
        run("hcp", tmp_path / "x")
    with pytest.raises(ValueError, match="n_subjects"):
        run("adhd", tmp_path / "x", n_subjects=0)


def test_abide_roi_count_differs(tmp_path, monkeypatch):
    pheno = pd.DataFrame({"SUB_ID": [1, 2], "FILE_ID": ["NYU_1", "NYU_2"],
                          "SITE_ID": ["NYU", "NYU"], "DX_GROUP": [1, 2],
                          "AGE_AT_SCAN": [20, 21], "SEX": [1, 2]})
    rng = np.random.default_rng(4)
    series = [rng.normal(size=(50, 10)), rng.normal(size=(50, 9))]
    monkeypatch.setattr(nilearn.datasets, "fetch_abide_pcp",
                        lambda **kw: Bunch(phenotypic=pheno, rois_cc200=series))
    assert_fails(lambda: run("abide", tmp_path / "out"), tmp_path / "out",
                 file="NYU_2_rois_cc200.1D", subject="2_ses-1", problem="expected 10 ROIs")
