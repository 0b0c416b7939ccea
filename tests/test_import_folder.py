"""Bring-your-own-data folder importer."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import scipy.io
from _builders import assert_fails, series, write_folder

from bsym.data import CohortError
from bsym.data.sources.folder import import_folder


def run(folder, out, **kwargs):
    return import_folder(folder, out, progress=False, **kwargs)


def test_valid_folder(tmp_path):
    folder = write_folder(tmp_path / "in", sessions={"s01": ["1", "2"], "s02": ["1"],
                                                     "s03": ["1"]})
    cohort = run(folder, tmp_path / "out")
    assert cohort.scans == ["s01_ses-1", "s01_ses-2", "s02_ses-1", "s03_ses-1"]
    assert cohort.n_rois == 5 and cohort.matrices == ["sc"]
    raw = np.load(folder / "func" / "s01_ses-2.npy")
    assert np.allclose(cohort.bold("s01_ses-2"), raw, rtol=1e-6)
    assert np.array_equal(cohort.sc("s02"), np.load(folder / "sc" / "s02.npy"))
    table = cohort.subjects.set_index("scan")
    assert table.loc["s02_ses-1", "age"] == 21 and table.loc["s02_ses-1", "site"] == "A"
    assert set(cohort.labels) == {"age", "diagnosis"}
    assert list(cohort.rois["network"][:2]) == ["net0", "net1"]
    assert cohort.rois["z"].iloc[2] == 4
    cohort.verify()


def test_formats_orientation_and_defaults(tmp_path):
    rng = np.random.default_rng(3)
    folder = write_folder(tmp_path / "in", subjects=("a", "b", "c", "d"), sc=False,
                          rois=False, tr_column=False,
                          options={"tr": 0.8, "orientation": "time_x_rois", "atlas": "toy",
                                   "mat_variable": {"func": "ts"},
                                   "preprocessing": {"bandpass": [0.01, 0.1]}})
    data = {s: series(rng, 5, 30).T for s in "abcd"}  # time x ROIs on disk
    for path in (folder / "func").iterdir():
        path.unlink()
    np.save(folder / "func" / "a.npy", data["a"])
    header = ",".join(f"roi{i}" for i in range(5))
    np.savetxt(folder / "func" / "b.csv", data["b"], delimiter=",", header=header, comments="")
    np.savetxt(folder / "func" / "c.tsv", data["c"], delimiter="\t")
    scipy.io.savemat(folder / "func" / "d.mat", {"ts": data["d"], "other": np.ones((2, 2))})
    cohort = run(folder, tmp_path / "out")
    for s in "abcd":
        assert np.allclose(cohort.bold(f"{s}_ses-1"), data[s].T, rtol=1e-5)
    assert set(cohort.subjects["tr"]) == {0.8}
    assert cohort.manifest["atlas"] == "toy"
    assert cohort.manifest["preprocessing"]["bandpass"] == [0.01, 0.1]


def test_csv_written_by_pandas_and_mat_single_variable(tmp_path):
    import pandas as pd

    folder = write_folder(tmp_path / "in", subjects=("a", "b"), rois=False)
    x = np.load(folder / "func" / "a.npy")
    (folder / "func" / "a.npy").unlink()
    pd.DataFrame(x).to_csv(folder / "func" / "a.csv")  # header row and index column
    scipy.io.savemat(folder / "sc" / "b.mat", {"whatever": np.load(folder / "sc" / "b.npy")})
    (folder / "sc" / "b.npy").unlink()
    cohort = run(folder, tmp_path / "out")
    assert np.allclose(cohort.bold("a_ses-1"), x, rtol=1e-6)
    assert cohort.sc("b").shape == (5, 5)


def test_directed_sc_and_confounds(tmp_path):
    folder = write_folder(tmp_path / "in", subjects=("a", "b"))
    sc = np.load(folder / "sc" / "a.npy")
    sc[0, 1] += 3
    np.save(folder / "sc" / "a.npy", sc)
    (folder / "confounds").mkdir()
    for s in "ab":
        rows = ["fd\tcsf"] + [f"{i * 0.01}\t{i}" for i in range(30)]
        (folder / "confounds" / f"{s}.tsv").write_text("\n".join(rows) + "\n")
    assert_fails(lambda: run(folder, tmp_path / "sym"), tmp_path / "sym",
                 file="sc/a.npy", subject="a", problem="declared symmetric")
    cohort = run(folder, tmp_path / "out", sc_symmetric=False)
    assert cohort.confounds("a_ses-1").shape == (30, 2)
    assert cohort.manifest["preprocessing"]["confound_columns"] == ["fd", "csf"]


def test_family_column(tmp_path):
    folder = write_folder(tmp_path / "in", subjects=("a", "b"),
                          extra_columns={"family": ["f1", "f1"]})
    keeps = _store_has_family()
    with contextlib.nullcontext() if keeps else pytest.warns(UserWarning, match="family"):
        cohort = run(folder, tmp_path / "out")
    assert "family" not in cohort.labels
    if keeps:
        assert list(cohort.subjects["family"]) == ["f1", "f1"]


def _store_has_family():
    import inspect

    from bsym.data.store import CohortWriter

    return "family" in inspect.signature(CohortWriter.add_scan).parameters


# -- errors ---------------------------------------------------------------------------
def _edit_npy(name, change):
    def edit(folder):
        path = folder / name
        x = np.load(path)
        np.save(path, change(x))
    return edit


def _set(index, value):
    def change(x):
        x = x.copy()
        x[index] = value
        return x
    return change


def _write(name, text):
    def edit(folder):
        (folder / name).write_text(text)
    return edit


def _truncate(folder):
    path = folder / "func" / "s02.npy"
    path.write_bytes(path.read_bytes()[:100])


def _participants_edit(transform):
    def edit(folder):
        path = folder / "participants.tsv"
        path.write_text(transform(path.read_text()))
    return edit


def _negative_sc(x):
    x = x.copy()
    x[0, 1] = x[1, 0] = -2
    return x


CASES = [
    ("missing func", lambda f: (f / "func" / "s02.npy").unlink(), "func", "s02",
     "expected the fMRI file func/s02."),
    ("truncated npy", _truncate, "s02.npy", "s02", "cannot read the .npy array"),
    ("ragged csv", lambda f: ((f / "func" / "s02.npy").unlink(),
                              (f / "func" / "s02.csv").write_text("1,2,3\n4,5\n6,7,8,9\n")),
     "s02.csv", "s02", "cannot read the table"),
    ("text in csv", lambda f: ((f / "func" / "s02.npy").unlink(),
                               (f / "func" / "s02.csv").write_text("1,2,3\n4,x,6\n7,8,9\n")),
     "s02.csv", "s02", "received 'x' at data row 2"),
    ("3-D array", _edit_npy("func/s02.npy", lambda x: x[None]), "s02.npy", "s02",
     "expected a 2-D array"),
    ("ROI count", _edit_npy("func/s03.npy", lambda x: x[:4]), "s03.npy", "s03",
     "expected 5 ROIs"),
    ("transposed", _edit_npy("func/s03.npy", lambda x: x.T.copy()), "s03.npy", "s03",
     "stored time x ROIs (30 x 5), not ROIs x time: rois.tsv lists 5 ROIs"),
    ("NaN", _edit_npy("func/s02.npy", _set((1, 3), np.nan)), "s02.npy", "s02", "NaN"),
    ("Inf", _edit_npy("func/s02.npy", _set((1, 3), np.inf)), "s02.npy", "s02", "Inf"),
    ("constant ROI", _edit_npy("func/s01.npy", _set(2, 7.0)), "s01.npy", "s01",
     "constant ROI(s): roi2"),
    ("SC ROI count", _edit_npy("sc/s02.npy", lambda x: x[:4, :4]), "sc/s02.npy", "s02",
     "sc has 4 ROIs but the fMRI time series have 5"),
    ("asymmetric SC", _edit_npy("sc/s02.npy", _set((0, 1), 999.0)), "sc/s02.npy", "s02",
     "declared symmetric"),
    ("negative SC", _edit_npy("sc/s02.npy", _negative_sc), "sc/s02.npy", "s02", "negative"),
    ("missing SC", lambda f: (f / "sc" / "s03.npy").unlink(), "/sc", "s03",
     "expected sc/s03."),
    ("orphan SC", lambda f: np.save(f / "sc" / "s09.npy", np.zeros((5, 5))), "sc/s09.npy",
     "s09", "belongs to no subject"),
    ("unlisted func", lambda f: np.save(f / "func" / "s09.npy", np.zeros((5, 30))),
     "func/s09.npy", "s09", "no line in participants.tsv"),
    ("duplicate subject", _participants_edit(lambda t: t + t.splitlines()[1] + "\n"),
     "participants.tsv", "s01", "duplicate subject id: s01 is on lines 2 and 5"),
    ("missing tr", _participants_edit(lambda t: t.replace("\t2.0\t", "\t\t", 1)),
     "participants.tsv", "s01", "missing TR"),
    ("bad tr", _participants_edit(lambda t: t.replace("\t2.0\t", "\t-1\t", 1)),
     "participants.tsv", "s01", "expected a repetition time"),
    ("text tr", _participants_edit(lambda t: t.replace("\t2.0\t", "\tfast\t", 1)),
     "participants.tsv", "s01", "'fast'"),
    ("no subject column", _participants_edit(lambda t: t.replace("subject", "id", 1)),
     "participants.tsv", None, "expected a 'subject' column"),
    ("reserved column", _participants_edit(
        lambda t: "\n".join(line + ("\tn_timepoints" if i == 0 else "\t1")
                            for i, line in enumerate(t.splitlines())) + "\n"),
     "participants.tsv", None, "reserved"),
    ("rois count", _write("rois.tsv", "name\nr1\nr2\n"), "rois.tsv", None,
     "rois.tsv lists 2 ROIs but the fMRI has 5"),
    ("dataset.json key", _write("dataset.json", json.dumps({"orientaton": "x"})),
     "dataset.json", None, "unknown key(s) orientaton"),
    ("dataset.json orientation", _write("dataset.json", json.dumps({"orientation": "x"})),
     "dataset.json", None, "expected orientation"),
    ("dataset.json syntax", _write("dataset.json", "{tr: 2"), "dataset.json", None,
     "not valid JSON"),
    ("two files one scan", lambda f: np.savetxt(f / "func" / "s01.csv", np.ones((5, 30))),
     "func", "s01", "several files for one scan"),
    ("unknown suffix in mat var", _write("dataset.json",
                                         json.dumps({"mat_variable": {"fmri": "x"}})),
     "dataset.json", None, "expected mat_variable"),
]


@pytest.mark.parametrize("name, edit, file, subject, problem", CASES, ids=[c[0] for c in CASES])
def test_errors_name_file_and_subject(tmp_path, name, edit, file, subject, problem):
    folder = write_folder(tmp_path / "in")
    edit(folder)
    assert_fails(lambda: run(folder, tmp_path / "out"), tmp_path / "out", file=file,
                 subject=subject, problem=problem)


def test_mat_with_several_arrays_needs_a_name(tmp_path):
    folder = write_folder(tmp_path / "in", subjects=("a", "b"), sc=False)
    x = np.load(folder / "func" / "b.npy")
    (folder / "func" / "b.npy").unlink()
    scipy.io.savemat(folder / "func" / "b.mat", {"x1": x, "x2": x})
    assert_fails(lambda: run(folder, tmp_path / "out"), tmp_path / "out", file="b.mat",
                 subject="b", problem="x1, x2")


def test_confounds_problems(tmp_path):
    folder = write_folder(tmp_path / "in", subjects=("a", "b"))
    (folder / "confounds").mkdir()
    (folder / "confounds" / "a.tsv").write_text("fd\n" + "0.1\n" * 30)
    assert_fails(lambda: run(folder, tmp_path / "out"), tmp_path / "out",
                 file="confounds/b.tsv", subject="b", problem="confounds file")
    (folder / "confounds" / "b.tsv").write_text("fd\n" + "0.1\n" * 29)
    assert_fails(lambda: run(folder, tmp_path / "out"), tmp_path / "out",
                 file="confounds/b.tsv", subject="b", problem="expected 30 confound rows")
    (folder / "confounds" / "b.tsv").write_text("fd\nn/a\n" + "0.1\n" * 29)
    assert_fails(lambda: run(folder, tmp_path / "out"), tmp_path / "out",
                 file="confounds/b.tsv", subject="b", problem="missing or non-numeric")


def test_missing_layout_pieces(tmp_path):
    assert_fails(lambda: run(tmp_path, tmp_path / "out"), tmp_path / "out",
                 problem="expected a func/ folder")
    (tmp_path / "func").mkdir()
    assert_fails(lambda: run(tmp_path, tmp_path / "out"), tmp_path / "out",
                 file="participants.tsv", problem="missing")


def test_existing_store_is_kept(tmp_path):
    folder = write_folder(tmp_path / "in", subjects=("a", "b"))
    first = run(folder, tmp_path / "out")
    digest = first.manifest_hash
    with pytest.raises(CohortError, match="already exists"):
        run(folder, tmp_path / "out")
    np.save(folder / "func" / "a.npy", np.full((5, 30), np.nan))
    with pytest.raises(CohortError, match="NaN"):
        run(folder, tmp_path / "out", overwrite=True)
    from bsym.data import open_cohort

    assert open_cohort(tmp_path / "out").manifest_hash == digest
