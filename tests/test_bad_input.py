"""The catalogue of broken inputs.

Each case corrupts one thing in an otherwise valid bring-your-own-data folder
and runs the real CLI. Every case must exit non-zero with a message naming the
file, the subject and the fix, and must leave no store (complete or partial).
"""

import numpy as np
import pandas as pd
import pytest

from bsym.cli import main

N_ROIS, N_TIME = 6, 40
SUBJECTS = ("sub-01", "sub-02", "sub-03")


def _valid_folder(root):
    rng = np.random.default_rng(0)
    (root / "func").mkdir(parents=True)
    (root / "sc").mkdir()
    pd.DataFrame({"subject": SUBJECTS, "tr": [2.0] * 3, "age": [30, 41, 52],
                  "sex": ["F", "M", "F"]}).to_csv(root / "participants.tsv", sep="\t", index=False)
    for subject in SUBJECTS:
        np.save(root / "func" / f"{subject}.npy", rng.standard_normal((N_ROIS, N_TIME)))
        a = np.triu(rng.integers(0, 500, (N_ROIS, N_ROIS)).astype(float), 1)
        np.save(root / "sc" / f"{subject}.npy", a + a.T)
    return root


def _edit_func(root, fn):
    path = root / "func" / "sub-02.npy"
    np.save(path, fn(np.load(path)))


def _edit_sc(root, fn):
    path = root / "sc" / "sub-02.npy"
    np.save(path, fn(np.load(path)))


def _set(array, index, value):
    array = array.copy()
    array[index] = value
    return array


def _asymmetric(sc):
    sc = sc.copy()
    sc[0, 1] += 10
    return sc


def _edit_participants(root, fn):
    table = pd.read_csv(root / "participants.tsv", sep="\t")
    fn(table).to_csv(root / "participants.tsv", sep="\t", index=False)


def _truncate(root):
    path = root / "func" / "sub-02.npy"
    path.write_bytes(path.read_bytes()[:150])


CASES = {
    "nan": (lambda r: _edit_func(r, lambda x: _set(x, (1, 5), np.nan)), "func/sub-02.npy",
            "NaN"),
    "inf": (lambda r: _edit_func(r, lambda x: _set(x, (2, 7), np.inf)), "func/sub-02.npy",
            "Inf"),
    "constant ROI": (lambda r: _edit_func(r, lambda x: _set(x, 3, 1.5)), "func/sub-02.npy",
                     "constant"),
    "all-zero ROI": (lambda r: _edit_func(r, lambda x: _set(x, 3, 0.0)), "func/sub-02.npy",
                     "all-zero"),
    "ROI count fMRI vs SC": (lambda r: _edit_sc(r, lambda a: a[:5, :5]), "sc/sub-02.npy",
                             "5 ROIs"),
    "asymmetric SC": (lambda r: _edit_sc(r, _asymmetric), "sc/sub-02.npy", "symmetric"),
    "negative counts": (lambda r: _edit_sc(r, lambda a: _set(a, (0, 0), -3.0)), "sc/sub-02.npy",
                        "negative"),
    "duplicate subject": (lambda r: _edit_participants(r, lambda t: pd.concat([t, t.iloc[[1]]])),
                          "participants.tsv", "duplicate"),
    "missing file": (lambda r: (r / "func" / "sub-02.npy").unlink(), "func/sub-02", "none found"),
    "truncated npy": (_truncate, "func/sub-02.npy", ""),
    "wrong shape": (lambda r: _edit_func(r, lambda x: x[None]), "func/sub-02.npy", "shape"),
    "wrong TR": (lambda r: _edit_participants(r, lambda t: t.assign(tr=[2.0, -1.0, 2.0])),
                 "participants.tsv", "TR"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_input_fails_cleanly(tmp_path, capsys, case):
    corrupt, file_part, problem = CASES[case]
    folder = _valid_folder(tmp_path / "in")
    corrupt(folder)
    out = tmp_path / "stores" / "cohort"
    code = main(["data", "import", "folder", str(folder), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert file_part in err, err
    assert "sub-02" in err, err
    assert problem in err, err
    assert "Fix:" in err, err
    assert not out.exists()
    assert not (tmp_path / "stores").exists() or list((tmp_path / "stores").iterdir()) == []


def test_the_valid_folder_imports(tmp_path, capsys):
    folder = _valid_folder(tmp_path / "in")
    out = tmp_path / "cohort"
    assert main(["data", "import", "folder", str(folder), "--out", str(out), "--quiet"]) == 0
    assert main(["data", "validate", str(out), "--quiet", "--labels", "age,sex",
                 "--window", "40", "--tr", "2", "--matrices", "sc"]) == 0


@pytest.mark.parametrize("argv, problem", [
    (["--labels", "diagnosis"], "no label column 'diagnosis'"),
    (["--window", "41"], "shorter than the 41-point window"),
    (["--tr", "0.72"], "expected TR 0.72 s, received 2.0 s"),
])
def test_task_requirements_are_checked(tmp_path, capsys, argv, problem):
    folder = _valid_folder(tmp_path / "in")
    out = tmp_path / "cohort"
    assert main(["data", "import", "folder", str(folder), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["data", "validate", str(out), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert problem in err and "Fix:" in err
