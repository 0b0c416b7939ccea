"""The catalogue of broken inputs.

Each case corrupts one thing in an otherwise valid bring-your-own-data folder
and runs the real CLI. Every case must exit non-zero with a message naming the
file, the subject and the fix, and must leave no store (complete or partial).
"""

import json

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


# -- ambiguous or mistaken inputs of the importers --------------------------------------
# Each entry: (corrupt, file named, problem, subject named or None, text of the fix).
def _table(root, text):
    (root / "participants.tsv").write_text(text)


def _column(name, values):
    """Append a column to participants.tsv, cells exactly as given."""
    def corrupt(root):
        path = root / "participants.tsv"
        lines = path.read_text().splitlines()
        lines = [line + "\t" + cell for line, cell in zip(lines, [name, *values])]
        path.write_text("\n".join(lines) + "\n")
    return corrupt


def _replace(text, new, *, name="participants.tsv", count=1):
    def corrupt(root):
        path = root / name
        path.write_text(path.read_text().replace(text, new, count))
    return corrupt


def _rename_func(old, new):
    def corrupt(root):
        (root / "func" / f"{old}.npy").rename(root / "func" / f"{new}.npy")
    return corrupt


def _transpose_all(root):
    for subject in SUBJECTS:
        _edit_one(root / "func" / f"{subject}.npy", lambda x: x.T.copy())
    for path in (root / "sc").iterdir():
        path.unlink()
    (root / "sc").rmdir()


def _edit_one(path, fn):
    np.save(path, fn(np.load(path)))


def _rois(n):
    def corrupt(root):
        (root / "rois.tsv").write_text("name\n" + "".join(f"roi{i}\n" for i in range(n)))
    return corrupt


def _transposed_with_rois(root):
    _rois(N_ROIS)(root)
    for path in (root / "sc").iterdir():
        path.unlink()
    (root / "sc").rmdir()
    _edit_func(root, lambda x: x.T.copy())


def _directed_sc(root):
    for subject in SUBJECTS:
        _edit_one(root / "sc" / f"{subject}.npy", np.triu)  # one direction only, as exported


def _listed_twice(root):
    table = pd.read_csv(root / "participants.tsv", sep="\t")
    table.insert(1, "session", ["", "1", ""])
    extra = table.iloc[[1]].assign(subject="sub-02_ses-1", session="")
    pd.concat([table, extra]).to_csv(root / "participants.tsv", sep="\t", index=False)
    _rename_func("sub-02", "sub-02_ses-1")(root)


def _dataset_tr(tr):
    def corrupt(root):
        _edit_participants(root, lambda t: t.drop(columns="tr"))
        (root / "dataset.json").write_text(json.dumps({"tr": tr}))
    return corrupt


def _pickled_objects(root):
    np.save(root / "func" / "sub-02.npy", np.array([[1.0, "a"]], dtype=object),
            allow_pickle=True)


def _csv_with_numbered_header(root):
    x = np.load(root / "func" / "sub-02.npy")
    (root / "func" / "sub-02.npy").unlink()
    pd.DataFrame(x).to_csv(root / "func" / "sub-02.csv", index=False)  # header 0, 1, ...


def _mat_with_two_candidates(root):
    import scipy.io

    x = np.load(root / "func" / "sub-02.npy")
    (root / "func" / "sub-02.npy").unlink()
    scipy.io.savemat(root / "func" / "sub-02.mat", {"tc": x, "bold": x[::-1].copy()})


def _confounds(header):
    def corrupt(root):
        (root / "confounds").mkdir()
        for subject in SUBJECTS:
            rows = "".join(f"{0.01 * i}\t{i % 3}\n" for i in range(N_TIME))
            (root / "confounds" / f"{subject}.tsv").write_text(header + "\n" + rows)
    return corrupt


CSV_FIX = "save it tab-separated"
RECODE = "to one coding: all numbers or all words"
RESPELL = "to one spelling per category"
ORIENT_FIX = "save it as ROIs x time: np.save(path, x.T)"
CASES.update({
    "duplicated label column": (
        _replace("\tsex\n", "\tage\n"), "participants.tsv",
        "duplicate column 'age' (columns 3 and 4)", None, "give every column a unique name"),
    "columns differing only in case": (
        _column("Age", ["1", "2", "3"]), "participants.tsv",
        "columns 'age' (column 3) and 'Age' (column 5) differ only in case", None,
        "give every column a unique name"),
    "sex coded 1, M, F": (
        _column("gender", ["1", "M", "F"]), "participants.tsv",
        "column 'gender' mixes numbers and words: '1' (line 2), 'M' (line 3), 'F' (line 4)",
        None, RECODE),
    "sex spelled F, f": (
        _column("gender", ["F", "f", "M"]), "participants.tsv",
        "column 'gender' spells one value several ways: 'F' (line 2), 'f' (line 3)", None,
        RESPELL),
    "sex spelled F, female": (
        _column("gender", ["female", "F", "male"]), "participants.tsv",
        "column 'gender' mixes an abbreviation and a word", None, RESPELL),
    "category with stray spaces": (
        _column("group", [" M", "M", "F"]), "participants.tsv",
        "column 'group', line 2: ' M' has stray spaces around it", None,
        "write 'M' without the spaces"),
    "category spelled with _ and space": (
        _column("diagnosis", ["healthy control", "Healthy_Control", "patient"]),
        "participants.tsv", "column 'diagnosis' spells one value several ways", None, RESPELL),
    "word in a numeric column": (
        _column("score", ["12", "unknown", "14"]), "participants.tsv",
        "column 'score' mixes numbers and words: '12' (line 2), 'unknown' (line 3)", None,
        RECODE),
    "missing-value marker": (
        _column("score", ["12", "-", "14"]), "participants.tsv",
        "column 'score', line 3: '-' is neither a value nor a missing value", None,
        "missing values as n/a or an empty cell"),
    "infinite label": (
        _column("score", ["12", "inf", "14"]), "participants.tsv",
        "column 'score', line 3: 'inf' is not a finite number", None, RECODE),
    "site spelled two ways": (
        _column("site", ["NYU", "nyu", "NYU"]), "participants.tsv",
        "column 'site' spells one value several ways: 'NYU' (lines 2, 4), 'nyu' (line 3)",
        None, RESPELL),
    "fMRI transposed (SC says 6 ROIs)": (
        lambda r: _edit_func(r, lambda x: x.T.copy()), "func/sub-02.npy",
        "stored time x ROIs (40 x 6), not ROIs x time: sc/sub-01.npy is 6 x 6", "sub-02",
        ORIENT_FIX),
    "fMRI transposed (rois.tsv says 6 ROIs)": (
        _transposed_with_rois, "func/sub-02.npy",
        "stored time x ROIs (40 x 6), not ROIs x time: rois.tsv lists 6 ROIs", "sub-02",
        ORIENT_FIX),
    "fMRI with more ROIs than time points": (
        _transpose_all, "func/sub-01.npy",
        "looks stored time x ROIs (40 x 6): read as ROIs x time it has 40 ROIs but only 6 "
        "time points", "sub-01", '"orientation": "time_x_rois"'),
    "rois.tsv with too few rows": (
        _rois(4), "rois.tsv", "rois.tsv lists 4 ROIs but the fMRI has 6 (func/sub-01.npy is "
        "6 x 40", None, "give rois.tsv one line per ROI (6 after the header)"),
    "rois.tsv with too many rows": (
        _rois(9), "rois.tsv", "rois.tsv lists 9 ROIs but the fMRI has 6", None,
        "give rois.tsv one line per ROI (6 after the header)"),
    "directed SC without --directed-sc": (
        _directed_sc, "sc/sub-01.npy", "sc is declared symmetric", "sub-01",
        "import it with `bsym data import folder --directed-sc`"),
    "space-separated participants.tsv": (
        _replace("\t", " ", count=-1), "participants.tsv",
        "expected a tab-separated participants table, but the header line 'subject tr age "
        "sex' is space-separated", None, CSV_FIX),
    "comma-separated participants.tsv": (
        _replace("\t", ",", count=-1), "participants.tsv", "is comma-separated", None,
        CSV_FIX),
    "line with a missing cell": (
        _replace("\t41\t", "\t"), "participants.tsv",
        "line 3 has 3 cell(s) but the header has 4 columns", None,
        "give every line one cell per column"),
    "participants.tsv not UTF-8": (
        lambda r: (r / "participants.tsv").write_bytes(
            (r / "participants.tsv").read_text().replace("F", "Fé").encode("latin-1")),
        "participants.tsv", "is not UTF-8 text (byte 0xe9", None, "save it with UTF-8"),
    "header-only participants.tsv": (
        lambda r: _table(r, "subject\ttr\tage\tsex\n"), "participants.tsv", "has no lines",
        None, "add one line per scan"),
    "two subject id columns": (
        _column("participant_id", list(SUBJECTS)), "participants.tsv",
        "both a 'subject' and a 'participant_id' column", None, "keep one subject id column"),
    "unnamed column": (
        _column("", ["a", "b", "c"]), "participants.tsv", "column 5 of the header has no name",
        None, "name every column"),
    "subject id with a space": (
        lambda r: (_replace("sub-02", "sub 02")(r), _rename_func("sub-02", "sub 02")(r)),
        "participants.tsv", "the subject id 'sub 02' contains ' '", "sub 02",
        "use letters, digits, '-' and '_'"),
    "subject id with a path separator": (
        _replace("sub-02", "sub/02"), "participants.tsv",
        "the subject id 'sub/02' contains '/'", "sub/02", "use letters, digits"),
    "func file listed twice": (
        _listed_twice, "participants.tsv",
        "lines 3 and 5 both point to the fMRI file func/sub-02_ses-1.<ext>", "sub-02_ses-1",
        "fix the subject or session of one line"),
    "TR of zero": (
        lambda r: _edit_participants(r, lambda t: t.assign(tr=[2.0, 0.0, 2.0])),
        "participants.tsv", "(0 < TR <= 30), received 0", "sub-02", "give the TR in seconds"),
    "TR in milliseconds": (
        lambda r: _edit_participants(r, lambda t: t.assign(tr=[2000, 2000, 2000])),
        "participants.tsv", "(0 < TR <= 30), received 2000", "sub-01",
        "give the TR in seconds"),
    "negative TR in dataset.json": (
        _dataset_tr(-2.0), "dataset.json", "received -2.0", None, "give the TR in seconds"),
    "fMRI of strings": (
        lambda r: np.save(r / "func" / "sub-02.npy", np.full((N_ROIS, N_TIME), "1.5")),
        "func/sub-02.npy", "expected real numbers, received dtype <U3", "sub-02",
        "save the time series as floats"),
    "complex fMRI": (
        lambda r: _edit_func(r, lambda x: x * (1 + 1j)), "func/sub-02.npy",
        "received dtype complex128", "sub-02", "save the time series as floats"),
    "boolean fMRI": (
        lambda r: _edit_func(r, lambda x: x > 0), "func/sub-02.npy", "received dtype bool",
        "sub-02", "save the time series as floats"),
    "pickled object array": (
        _pickled_objects, "func/sub-02.npy", "Object arrays cannot be loaded", "sub-02",
        "save it again with numpy.save"),
    "1-D fMRI": (
        lambda r: _edit_func(r, lambda x: x[0]), "func/sub-02.npy",
        "expected a 2-D array (ROIs x time), received shape (40,)", "sub-02",
        "a single ROI's series as x[None, :]"),
    "fMRI without time points": (
        lambda r: _edit_func(r, lambda x: x[:, :0]), "func/sub-02.npy",
        "expected at least 2 time points, received 0", "sub-02", "drop this scan"),
    "fMRI without ROIs": (
        lambda r: _edit_func(r, lambda x: x[:0]), "func/sub-02.npy",
        "expected 6 ROIs, received 0 rows", "sub-02", "store ROIs x time"),
    "empty SC": (
        lambda r: _edit_sc(r, lambda a: a[:0, :0]), "sc/sub-02.npy",
        "expected a square sc matrix, received shape (0, 0)", "sub-02",
        "store one ROIs x ROIs sc matrix"),
    "complex SC": (
        lambda r: _edit_sc(r, lambda a: a.astype(complex)), "sc/sub-02.npy",
        "received dtype complex128", "sub-02", "save the sc matrix as floats"),
    "fMRI values beyond float32": (
        lambda r: _edit_func(r, lambda x: _set(x, (1, 5), 1e300)), "func/sub-02.npy",
        "values up to 1e+300 in absolute value do not fit float32", "sub-02",
        "rescale the time series"),
    "csv with a header of column numbers": (
        _csv_with_numbered_header, "func/sub-02.csv",
        "the first row reads 0, 1, 2, ..., 39: it may be column numbers", "sub-02",
        "save the matrix without column numbers"),
    "mat with two fMRI candidates": (
        _mat_with_two_candidates, "func/sub-02.mat",
        "found several candidates: tc, bold", "sub-02", '"mat_variable": {"func": "tc"}'),
    "duplicated confound column": (
        _confounds("fd\tfd"), "confounds/sub-01.tsv", "duplicate confound column(s) fd",
        "sub-01", "give every confound column a unique name"),
    "rois.tsv with a repeated index": (
        lambda r: (r / "rois.tsv").write_text(
            "index\tname\n" + "".join(f"{min(i, 4)}\troi{i}\n" for i in range(N_ROIS))),
        "rois.tsv", "the 'index' column repeats 4, so the ROI order is ambiguous", None,
        "give every ROI its own index"),
    "network spelled two ways": (
        lambda r: (r / "rois.tsv").write_text(
            "name\tnetwork\n" + "".join(f"roi{i}\t{'Vis' if i else 'vis'}\n"
                                          for i in range(N_ROIS))),
        "rois.tsv", "column 'network' spells one value several ways", None, RESPELL),
})


def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_input_fails_cleanly(tmp_path, capsys, case):
    corrupt, file_part, problem, *rest = CASES[case]
    subject, fix = rest if rest else ("sub-02", None)
    folder = _valid_folder(tmp_path / "in")
    corrupt(folder)
    before = _snapshot(tmp_path)
    out = tmp_path / "stores" / "cohort"
    code = main(["data", "import", "folder", str(folder), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("bsym: error: ") and err.count("\n") == 1, err
    assert file_part in err, err
    if subject is not None:
        assert f"subject {subject}" in err, err
    assert problem in err, err
    assert "Fix:" in err, err
    if fix is not None:
        assert fix in err.split("Fix:", 1)[1], err
    assert not out.exists()
    assert not (tmp_path / "stores").exists() or list((tmp_path / "stores").iterdir()) == []
    assert _snapshot(tmp_path) == before


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


# -- the same through `bsym data import bids` ----------------------------------------------
def _bids_column(name, values):
    def corrupt(deriv, root):
        path = deriv / "participants.tsv"
        lines = path.read_text().splitlines()
        path.write_text("\n".join(f"{line}\t{cell}" for line, cell in
                                  zip(lines, [name, *values])) + "\n")
    return corrupt


def _atlas_elsewhere(deriv, root):
    import nibabel as nib
    from _builders import AFFINE, atlas_data

    affine = AFFINE.copy()
    affine[:3, 3] = [120.0, -90.0, 60.0]  # another space: no voxel meets the BOLD
    nib.save(nib.Nifti1Image(atlas_data(), affine), root / "atlas.nii.gz")


def _asymmetric_connectome(deriv, root):
    path = root / "qsiprep" / "sub-02" / "dwi" / "sub-02_atlas-test_connectome.csv"
    sc = np.loadtxt(path, delimiter=",")
    sc[0, 1] += 7
    np.savetxt(path, sc, delimiter=",")


def _labels_with_spaces(deriv, root):
    (root / "labels.tsv").write_text("index name\n1 north\n2 east\n3 south\n5 west\n")


BIDS_BOLD = "sub-02_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
BIDS_CASES = {
    "atlas in another space": (
        _atlas_elsewhere, "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold",
        "the atlas and the BOLD are in different spaces or do not overlap", "sub-01_task-rest",
        "use the atlas in the BOLD's space (space-MNI152NLin2009cAsym"),
    "comma-separated participants.tsv": (
        lambda d, r: (d / "participants.tsv").write_text(
            (d / "participants.tsv").read_text().replace("\t", ",")),
        "derivatives/participants.tsv", "is comma-separated", None, CSV_FIX),
    "sex coded 1, M, F": (
        _bids_column("sex", ["1", "M"]), "derivatives/participants.tsv",
        "column 'sex' mixes numbers and words: '1' (line 2), 'M' (line 3)", None, RECODE),
    "duplicated label column": (
        _bids_column("age", ["40", "41"]), "derivatives/participants.tsv",
        "duplicate column 'age' (columns 2 and 4)", None, "give every column a unique name"),
    "asymmetric connectome": (
        _asymmetric_connectome, "sub-02_atlas-test_connectome.csv",
        "sc is declared symmetric", "sub-02", "--directed-sc"),
    "space-separated atlas label table": (
        _labels_with_spaces, "labels.tsv",
        "expected a tab-separated atlas label table, but the header line 'index name' is "
        "space-separated", None, CSV_FIX),
}


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                            "ignore::UserWarning")
@pytest.mark.parametrize("case", list(BIDS_CASES))
def test_broken_bids_input_fails_cleanly(tmp_path, capsys, case):
    from _builders import write_bids

    corrupt, file_part, problem, subject, fix = BIDS_CASES[case]
    deriv, atlas, conn = write_bids(tmp_path / "in", subjects=("01", "02"))
    corrupt(deriv, tmp_path / "in")
    before = _snapshot(tmp_path)
    out = tmp_path / "stores" / "cohort"
    argv = ["data", "import", "bids", str(deriv), "--atlas", str(atlas), "--connectomes",
            str(conn), "--out", str(out), "--quiet"]
    if (tmp_path / "in" / "labels.tsv").exists():
        argv += ["--atlas-labels", str(tmp_path / "in" / "labels.tsv")]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("bsym: error: ") and err.count("\n") == 1, err
    assert file_part in err, err
    if subject is not None:
        assert f"subject {subject}" in err, err
    assert problem in err, err
    assert fix in err.split("Fix:", 1)[1], err
    assert not out.exists()
    assert not (tmp_path / "stores").exists() or list((tmp_path / "stores").iterdir()) == []
    assert _snapshot(tmp_path) == before


# -- what must still be accepted ----------------------------------------------------------
def _bom_crlf_trailing_tabs(root):
    path = root / "participants.tsv"
    text = "".join(line + "\t\r\n" for line in path.read_text().splitlines())
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())


def _confirmed_many_rois(root):
    """8 ROIs x 5 time points is legitimate when rois.tsv confirms the 8 ROIs."""
    rng = np.random.default_rng(1)
    for subject in SUBJECTS:
        np.save(root / "func" / f"{subject}.npy", rng.standard_normal((8, 5)))
        a = np.triu(rng.integers(0, 500, (8, 8)).astype(float), 1)
        np.save(root / "sc" / f"{subject}.npy", a + a.T)
    (root / "rois.tsv").write_text("name\n" + "".join(f"roi{i}\n" for i in range(8)))


def _declared_time_x_rois(root):
    for subject in SUBJECTS:
        _edit_one(root / "func" / f"{subject}.npy", lambda x: x.T.copy())
    (root / "dataset.json").write_text(json.dumps({"orientation": "time_x_rois"}))


ACCEPTED = {
    "numbers with missing cells": (_column("score", ["1.5", "", "n/a"]), "score"),
    "words with a missing cell": (_column("group", ["control", "patient", "N/A"]), "group"),
    "integer-coded categories": (_column("group", ["1", "2", "1"]), "group"),
    "categories that only look alike": (_column("blood", ["A+", "AB", "A-"]), "blood"),
    "BOM, CRLF and trailing tabs": (_bom_crlf_trailing_tabs, "sex"),
    "more ROIs than time points, confirmed by rois.tsv": (_confirmed_many_rois, "age"),
    "time x ROIs declared in dataset.json": (_declared_time_x_rois, "age"),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_unambiguous_input_is_accepted(tmp_path, capsys, case):
    from bsym.data import open_cohort

    edit, label = ACCEPTED[case]
    folder = _valid_folder(tmp_path / "in")
    edit(folder)
    out = tmp_path / "cohort"
    code = main(["data", "import", "folder", str(folder), "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    cohort = open_cohort(out)
    assert label in cohort.labels and cohort.scans == [f"{s}_ses-1" for s in SUBJECTS]
    raw = np.load(folder / "func" / "sub-02.npy")
    stored = cohort.bold("sub-02_ses-1")
    assert np.allclose(stored, raw.T if case.startswith("time x ROIs") else raw, rtol=1e-6)


def test_bids_default_confounds_are_documented(capsys):
    import inspect
    import re
    from pathlib import Path

    from bsym.cli import BIDS_CONFOUNDS
    from bsym.data.sources.bids import DEFAULT_CONFOUNDS, import_bids

    assert BIDS_CONFOUNDS == DEFAULT_CONFOUNDS
    assert inspect.signature(import_bids).parameters["confounds"].default == DEFAULT_CONFOUNDS
    with pytest.raises(SystemExit):
        main(["data", "import", "bids", "--help"])
    listed = ", ".join(DEFAULT_CONFOUNDS)
    assert f"(default: {listed})" in re.sub(r"\s+", " ", capsys.readouterr().out)
    data_docs = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    assert f"`{listed}`" in re.sub(r"\s+", " ", data_docs)
