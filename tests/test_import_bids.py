"""fMRIPrep-style derivatives importer (tiny NIfTI images built with nibabel)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from _builders import CONFOUNDS, assert_fails, atlas_data, write_atlas, write_bids, write_bold

from bsym.data.sources.bids import entities, import_bids

NAMES = ["north", "east", "south", "west"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::FutureWarning", "ignore::UserWarning")


def run(deriv, out, atlas, **kwargs):
    kwargs.setdefault("progress", False)
    return import_bids(deriv, out, atlas=atlas, **kwargs)


@pytest.fixture(scope="module")
def bids(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids")
    return write_bids(root, sessions={"01": ["a", "b"]})


@pytest.fixture(scope="module")
def store(bids, tmp_path_factory):
    deriv, atlas, conn = bids
    return run(deriv, tmp_path_factory.mktemp("o") / "store", atlas, atlas_labels=NAMES,
               connectomes=conn)


def test_scans_labels_and_sc(store, bids):
    assert store.scans == ["sub-01_ses-a_task-rest", "sub-01_ses-b_task-rest",
                           "sub-02_task-rest", "sub-03_task-rest"]
    table = store.subjects.set_index("scan")
    assert list(table["session"]) == ["a", "b", "1", "1"]
    assert table.loc["sub-02_task-rest", "age"] == 31
    assert table.loc["sub-02_task-rest", "site"] == "X"
    assert set(table["task"]) == {"rest"} and set(table["tr"]) == {2.0}
    assert set(table["n_timepoints"]) == {40}
    assert list(store.rois["name"]) == NAMES and store.n_rois == 4
    sc = np.loadtxt(bids[2] / "sub-02" / "dwi" / "sub-02_atlas-test_connectome.csv",
                    delimiter=",")
    assert np.allclose(store.sc("sub-02"), sc)
    pre = store.manifest["preprocessing"]
    assert pre["confounds_regressed"] == list(CONFOUNDS) and pre["standardize"] is False
    assert store.manifest["source"]["space"] == "MNI152NLin2009cAsym"
    store.verify()


def test_parcellation_matches_nilearn_and_removes_confounds(store, bids):
    from nilearn.maskers import NiftiLabelsMasker

    deriv, atlas, _ = bids
    func = deriv / "sub-02" / "func"
    bold = next(func.glob("*_bold.nii.gz"))
    table = np.genfromtxt(next(func.glob("*confounds*")), delimiter="\t", names=True)
    conf = np.column_stack([table[c] for c in CONFOUNDS])
    expected = NiftiLabelsMasker(atlas, t_r=2.0).fit_transform(bold, confounds=conf).T
    got = np.asarray(store.bold("sub-02_task-rest"))
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4)
    # each region carried 5 x one confound; after regression no correlation is left
    centred = conf - conf.mean(0)
    assert np.abs(centred.T @ (got - got.mean(1, keepdims=True)).T).max() < 1e-2


def test_standardize_and_no_confounds(tmp_path):
    deriv, atlas, _ = _one_subject(tmp_path)
    cohort = run(deriv, tmp_path / "out", atlas, confounds=(), standardize=True)
    x = np.asarray(cohort.bold("sub-07_task-rest"))
    assert np.allclose(x.mean(1), 0, atol=1e-5) and np.allclose(x.std(1, ddof=1), 1, atol=1e-4)
    assert list(cohort.rois["name"]) == ["region_1", "region_2", "region_3", "region_5"]
    assert cohort.matrices == []


def test_label_table_and_participants_elsewhere(tmp_path):
    deriv, atlas, _ = write_bids(tmp_path, subjects=("02", "03"), connectomes=False,
                                 participants=False)
    table = tmp_path / "atlas_dseg.tsv"
    table.write_text("index\tname\tnetwork\n0\tBackground\tnone\n5\tw\tB\n1\tn\tA\n"
                     "2\te\tA\n3\ts\tB\n")
    people = tmp_path / "people.tsv"
    people.write_text("participant_id\tscore\n01\t1.5\n02\t2.5\n03\tn/a\n")
    cohort = run(deriv, tmp_path / "out", atlas, atlas_labels=table, participants=people,
                 confounds=("csf",))
    assert list(cohort.rois["name"]) == ["n", "e", "s", "w"]
    assert list(cohort.rois["network"]) == ["A", "A", "B", "B"]
    scores = cohort.subjects.set_index("scan")["score"]
    assert scores["sub-02_task-rest"] == 2.5 and np.isnan(scores["sub-03_task-rest"])
    assert "age" not in cohort.labels


def test_tr_from_sidecar_only_and_space_choice(tmp_path):
    rng = np.random.default_rng(1)
    deriv = tmp_path / "d"
    for space in ("MNI152NLin2009cAsym", "T1w"):
        write_bold(deriv / "sub-01" / "func", "sub-01_task-rest", rng=rng, tr=1.5,
                   header_tr=0.0, space=space)
    atlas = write_atlas(tmp_path / "tpl-MNI152NLin2009cAsym_atlas-toy_dseg.nii.gz")
    cohort = run(deriv, tmp_path / "out", atlas)
    assert list(cohort.subjects["tr"]) == [1.5]
    assert cohort.manifest["source"]["space"] == "MNI152NLin2009cAsym"
    plain = write_atlas(tmp_path / "atlas.nii.gz")
    assert_fails(lambda: run(deriv, tmp_path / "o2", plain), tmp_path / "o2",
                 problem="several spaces (MNI152NLin2009cAsym, T1w)")


def test_entities():
    assert entities("sub-01_ses-2_task-rest_run-1_space-MNI_desc-preproc_bold.nii.gz") == {
        "sub": "01", "ses": "2", "task": "rest", "run": "1", "space": "MNI", "desc": "preproc"}


# -- errors ---------------------------------------------------------------------------
def _one_subject(tmp_path, **bold_kwargs):
    rng = np.random.default_rng(2)
    deriv = tmp_path / "d"
    bold = write_bold(deriv / "sub-07" / "func", "sub-07_task-rest", rng=rng, **bold_kwargs)
    return deriv, write_atlas(tmp_path / "atlas.nii.gz"), bold


def test_wrong_tr(tmp_path):
    deriv, atlas, bold = _one_subject(tmp_path, tr=2.0, header_tr=2.5)
    assert_fails(lambda: run(deriv, tmp_path / "out", atlas), tmp_path / "out",
                 file=bold.name, subject="sub-07", problem="wrong TR")


def test_no_tr(tmp_path):
    deriv, atlas, bold = _one_subject(tmp_path, header_tr=0.0, sidecar=False)
    assert_fails(lambda: run(deriv, tmp_path / "out", atlas), tmp_path / "out",
                 file=bold.name, subject="sub-07", problem="no TR")


def test_region_outside_the_brain(tmp_path):
    deriv, atlas, bold = _one_subject(tmp_path, zero_region=3)
    assert_fails(lambda: run(deriv, tmp_path / "out", atlas, atlas_labels=NAMES),
                 tmp_path / "out", file=bold.name, subject="sub-07",
                 problem="1 all-zero ROI(s): south")


def test_confound_problems(tmp_path):
    deriv, atlas, bold = _one_subject(tmp_path)
    assert_fails(lambda: run(deriv, tmp_path / "out", atlas, confounds=("global_signal",)),
                 tmp_path / "out", file="confounds_timeseries.tsv", subject="sub-07",
                 problem="expected confound column(s) global_signal")
    conf = next(bold.parent.glob("*confounds*"))
    conf.unlink()
    assert_fails(lambda: run(deriv, tmp_path / "out", atlas), tmp_path / "out",
                 file=conf.name, subject="sub-07", problem="confounds=()")
    assert run(deriv, tmp_path / "out", atlas, confounds=()).n_rois == 4


def test_atlas_problems(tmp_path):
    deriv, atlas, _ = _one_subject(tmp_path)
    out = tmp_path / "out"
    assert_fails(lambda: run(deriv, out, atlas, atlas_labels=NAMES[:3]), out,
                 file="atlas.nii.gz", problem="expected 4 atlas label names")
    assert_fails(lambda: run(deriv, out, tmp_path / "nope.nii.gz"), out,
                 file="nope.nii.gz", problem="no such atlas")
    frac = atlas_data().astype(float) * 0.5
    assert_fails(lambda: run(deriv, out, write_atlas(tmp_path / "f.nii.gz", frac)), out,
                 problem="integer label values")
    table = tmp_path / "labels.tsv"
    table.write_text("index\tname\n1\ta\n2\tb\n3\tc\n4\td\n")
    assert_fails(lambda: run(deriv, out, atlas, atlas_labels=table), out,
                 file="labels.tsv", problem="values without a name [5], names without voxels [4]")


def test_connectome_problems(bids, tmp_path):
    deriv, atlas, conn = bids
    conn2 = tmp_path / "conn"
    shutil.copytree(conn, conn2)
    (conn2 / "sub-03" / "dwi" / "sub-03_atlas-test_connectome.csv").unlink()
    assert_fails(lambda: run(deriv, tmp_path / "out", atlas, connectomes=conn2),
                 tmp_path / "out", subject="sub-03", problem="expected a connectome")
    np.savetxt(conn2 / "sub-03_connectome.csv", np.ones((3, 3)), delimiter=",")
    assert_fails(lambda: run(deriv, tmp_path / "out", atlas, connectomes=conn2),
                 tmp_path / "out", file="sub-03_connectome.csv", subject="sub-03",
                 problem="sc has 3 ROIs but the fMRI time series have 4")


def test_empty_and_missing_folders(tmp_path):
    atlas = write_atlas(tmp_path / "atlas.nii.gz")
    assert_fails(lambda: run(tmp_path / "nope", tmp_path / "out", atlas), tmp_path / "out",
                 problem="no such derivatives folder")
    (tmp_path / "d").mkdir()
    assert_fails(lambda: run(tmp_path / "d", tmp_path / "out", atlas), tmp_path / "out",
                 problem="desc-preproc_bold")


def test_truncated_bold(tmp_path):
    deriv, atlas, bold = _one_subject(tmp_path)
    data = bold.read_bytes()
    bold.write_bytes(data[: len(data) // 2])
    assert_fails(lambda: run(deriv, tmp_path / "out", atlas), tmp_path / "out",
                 file=bold.name, subject="sub-07", problem="cannot read")


def test_sidecar_not_a_number(tmp_path):
    deriv, atlas, bold = _one_subject(tmp_path)
    sidecar = bold.parent / bold.name.replace(".nii.gz", ".json")
    sidecar.write_text(json.dumps({"RepetitionTime": "two"}))
    assert_fails(lambda: run(deriv, tmp_path / "out", atlas), tmp_path / "out",
                 file=sidecar.name, subject="sub-07", problem="'two'")


def test_header_units_msec(tmp_path):
    deriv, atlas, bold = _one_subject(tmp_path, sidecar=False)
    img = nib.load(bold)
    img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms(img.header.get_zooms()[:3] + (2000.0,))
    nib.save(img, bold)
    assert list(run(deriv, tmp_path / "out", atlas).subjects["tr"]) == [2.0]
