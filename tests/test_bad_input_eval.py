"""The catalogue of bad inputs to the evaluation, statistics, report and sweep commands.

Each case puts one bad or ambiguous input beside valid ones (a split file made for another
label or store, a user's file where an output goes, a damaged table, a missing input) and
runs the real CLI. Every case must exit with status 2 and one line naming the file and
the fix, and must leave every file that existed before byte for byte as it was, adding
none. Then: bsym's own outputs are still replaced and appended to, and a full disk or an
unwritable folder is a clear error that keeps the previous output intact.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bsym.cli import main
from bsym.testing import write_toy_store

SPACE = json.dumps({"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
OTHER_SPLIT = "0" * 64


def _run(argv):
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store, a store of other subjects, their sex split files, a pretraining-cohort
    file and a result table written by `bsym probe`: valid inputs, read only."""
    root = tmp_path_factory.mktemp("eval_inputs")
    store = write_toy_store(root / "toy", n_subjects=20, sessions=2, n_timepoints=30).path
    other = write_toy_store(root / "other", n_subjects=20, sessions=2, n_timepoints=30,
                            seed=5).path
    folds = ["--n-folds", "4", "--inner-folds", "2"]
    assert _run(["splits", "--data", store, "--task", "sex", "--splits", root / "sex.json",
                 *folds]) == 0
    assert _run(["splits", "--data", other, "--task", "sex", "--splits",
                 root / "other_sex.json", *folds]) == 0
    assert _run(["splits", "--data", store, "--pretrain-fraction", "0.3", "--splits",
                 root / "pretrain.json"]) == 0
    assert _run(["probe", "--features", "fc", "--data", store, "--task", "sex", "--splits",
                 root / "sex.json", "--results", root / "results.parquet", "--no-tracking",
                 "--quiet"]) == 0
    return SimpleNamespace(root=root, store=store, other=other, sex=root / "sex.json",
                           other_sex=root / "other_sex.json", pretrain=root / "pretrain.json",
                           results=root / "results.parquet")


def _snapshot(*roots):
    """``{path: sha256 or "dir"}`` of everything under ``roots``."""
    out = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            out[str(path)] = "dir" if path.is_dir() else \
                hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _user_file(path, text="my own notes, not bsym's\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _user_folder(path):
    _user_file(path / "notes.txt")
    _user_file(path / "report.html", "<html>my own page</html>\n")
    return path


def _user_parquet(path):
    pd.DataFrame({"subject": ["a", "b"], "score": [1.0, 2.0]}).to_parquet(path)
    return path


# -- the cases: (w, tmp) -> (argv, the file the message names, the fix it gives) -------
def _probe(w, tmp, *extra, task="sex", splits=None, results=None):
    return ["probe", "--features", "fc", "--data", w.store, "--task", task, "--splits",
            splits or w.sex, "--results", results or tmp / "r.parquet", "--no-tracking",
            "--quiet", *extra]


def _supervised(w, tmp, *extra, task="age", splits=None):
    return ["supervised", "--model", "bnt", "--data", w.store, "--task", task, "--splits", splits or w.sex,
            "--results", tmp / "r.parquet", "--no-tracking", "--quiet", *extra]


def _sweep(w, tmp, *extra, task="sex", storage=None, out=None):
    return ["sweep", "--model", "bnt", "--data", w.store, "--task", task, "--splits", w.sex,
            "--space", SPACE, "--trials", "2", "--storage", storage or tmp / "s.journal",
            "--out", out or tmp / "best.json", "--no-tracking", "--quiet", *extra]


def _report(w, tmp, *extra, results=None, out=None):
    return ["report", "--results", results or w.results, "--out", out or tmp / "rep", *extra]


def _user_database(path):
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE patients (id TEXT, age REAL)")
    return path


def _damaged_copy(w, tmp):
    damaged = tmp / "damaged.parquet"
    damaged.write_bytes(w.results.read_bytes()[:-40])
    return damaged


def _journal_of_another_split(w, tmp):
    """A journal whose study of fold 0 was swept on another split file."""
    import optuna

    from bsym.sweep import journal_storage

    path = tmp / "other.journal"
    study = optuna.create_study(storage=journal_storage(path),
                                study_name="toy-bnt-sex-seed0-fold0")
    study.set_user_attr("bsym.split", OTHER_SPLIT)
    return path


def _sweep_result_of_another_split(tmp):
    path = tmp / "best.json"
    path.write_text(json.dumps({"format": "bsym-sweep", "model": "bnt", "task": "sex",
                                "split_hash": OTHER_SPLIT,
                                "folds": {"0": {"params": {"lr": 1e-3}}}}))
    return path


def _case_label(command):
    def case(w, tmp):
        argv = _probe(w, tmp, task="age") if command == "probe" else \
            _sweep(w, tmp, task="age") if command == "sweep" else _supervised(w, tmp)
        return argv, w.sex, f"bsym splits --data {w.store} --task age"
    return case


CASES = {
    # a split file made for something else
    "probe: split made for another label": _case_label("probe"),
    "supervised: split made for another label": _case_label("supervised"),
    "sweep: split made for another label": _case_label("sweep"),
    "probe: split made for another task type": lambda w, tmp: (
        _probe(w, tmp, "--task-type", "regression"), w.sex, "drop --task-type regression"),
    "probe: split made for another store": lambda w, tmp: (
        _probe(w, tmp, splits=w.other_sex), w.other_sex,
        f"bsym splits --data {w.store} --task sex"),
    "probe: pretraining-cohort file as --splits": lambda w, tmp: (
        _probe(w, tmp, splits=w.pretrain), w.pretrain,
        "made by `bsym splits --data STORE --task LABEL"),
    "probe: a user's JSON as --splits": lambda w, tmp: (
        _probe(w, tmp, splits=_user_file(tmp / "notes.json", '{"mine": 1}\n')),
        tmp / "notes.json", "or a path that does not exist yet"),
    "probe: a label the store does not have": lambda w, tmp: (
        _probe(w, tmp, task="iq", splits=tmp / "iq.json"), "subjects.parquet",
        "pick one of the available labels"),
    "supervised: --params swept on another split": lambda w, tmp: (
        _supervised(w, tmp, "--params", _sweep_result_of_another_split(tmp),
                  task="sex"),
        tmp / "best.json", "run `bsym sweep` with this --model, --task and --splits"),
    "sweep: a journal of the same study on another split": lambda w, tmp: (
        _sweep(w, tmp, storage=_journal_of_another_split(w, tmp)), tmp / "other.journal",
        "use a new study name (another --storage file)"),
    # a user's file or folder where an output goes
    "probe: --results is a user's CSV": lambda w, tmp: (
        _probe(w, tmp, results=_user_file(tmp / "scores.csv", "subject,score\na,1\n")),
        tmp / "scores.csv", "choose another --results path"),
    "probe: --results is a user's Parquet table": lambda w, tmp: (
        _probe(w, tmp, results=_user_parquet(tmp / "mine.parquet")), tmp / "mine.parquet",
        "choose another --results path"),
    "netid: --results is a damaged result table": lambda w, tmp: (
        ["netid", "--features", "fc", "--data", w.store, "--results", _damaged_copy(w, tmp),
         "--no-tracking", "--quiet"], tmp / "damaged.parquet",
        "move it away (or restore it from a backup) and rerun"),
    "netid: --figure is a user's image": lambda w, tmp: (
        ["netid", "--features", "fc", "--data", w.store, "--results", tmp / "n.parquet",
         "--figure", _user_file(tmp / "photo.png", "\x89PNG not bsym's"), "--no-tracking",
         "--quiet"], tmp / "photo.png", "choose another --figure path"),
    "report: --out is a folder of user files": lambda w, tmp: (
        _report(w, tmp, out=_user_folder(tmp / "mine")), tmp / "mine",
        "choose a new or empty folder for --out"),
    "report: --out is a user's file": lambda w, tmp: (
        _report(w, tmp, out=_user_file(tmp / "page.html")), tmp / "page.html",
        "choose a new or empty folder for --out"),
    "stats: --out is a folder of user files": lambda w, tmp: (
        ["stats", w.results, "--metric", "auroc", "--out", _user_folder(tmp / "mine")],
        tmp / "mine", "choose a new or empty folder for --out"),
    "leaderboard: --csv is a user's CSV": lambda w, tmp: (
        ["leaderboard", w.results, "--csv", _user_file(tmp / "board.csv", "a,b\n1,2\n")],
        tmp / "board.csv", "choose another --csv path"),
    "splits: --subjects-out is a user's file": lambda w, tmp: (
        ["splits", "--data", w.store, "--pretrain-fraction", "0.3", "--splits",
         tmp / "pre.json", "--subjects-out", _user_file(tmp / "notes.txt")],
        tmp / "notes.txt", "choose another path for the subject list"),
    "sweep: --out is a user's JSON": lambda w, tmp: (
        _sweep(w, tmp, out=_user_file(tmp / "mine.json", '{"mine": 1}\n')),
        tmp / "mine.json", "choose another --out path"),
    "sweep: --storage is a user's file": lambda w, tmp: (
        _sweep(w, tmp, storage=_user_file(tmp / "notes.txt")), tmp / "notes.txt",
        "choose another --storage path"),
    "health: --out is a user's table": lambda w, tmp: (
        ["health", "--checkpoint", tmp / "final.pt", "--data", w.store, "--out",
         _user_file(tmp / "mine.csv", "a,b\n1,2\n"), "--no-tracking"],
        tmp / "mine.csv", "choose another --out path"),
    "attention: --out is a folder of user files": lambda w, tmp: (
        ["attention", "--checkpoint", tmp / "final.pt", "--data", w.store, "--out",
         _user_folder(tmp / "mine"), "--quiet"], tmp / "mine",
        "choose a new or empty folder for --out"),
    "probe: --tracking-uri is a user's SQLite database": lambda w, tmp: (
        [a for a in _probe(w, tmp) if a != "--no-tracking"] + [
            "--tracking-uri", f"sqlite:///{_user_database(tmp / 'clinic.db')}"],
        tmp / "clinic.db", "pass a --tracking-uri whose file is an MLflow store"),
    "tracking init: --out is a user's JSON": lambda w, tmp: (
        ["tracking", "init", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--out",
         _user_file(tmp / "mine.json", '{"mine": 1}\n')],
        tmp / "mine.json", "choose another --out path"),
    # report inputs that are missing, damaged or of another kind
    "report: --results is missing": lambda w, tmp: (
        _report(w, tmp, results=tmp / "missing.parquet"), tmp / "missing.parquet",
        "pass the result table"),
    "report: --results has other columns": lambda w, tmp: (
        _report(w, tmp, results=_user_parquet(tmp / "mine.parquet")), tmp / "mine.parquet",
        "pass the result table"),
    "report: --health is damaged": lambda w, tmp: (
        _report(w, tmp, "--health", _user_file(tmp / "health.parquet", "PAR1 broken")),
        tmp / "health.parquet", "pass the table `bsym health --out` wrote"),
    "report: --metric the table does not report": lambda w, tmp: (
        _report(w, tmp, "--metric", "nope"), w.results, "pass --metric with one of"),
    "stats: --metric the table does not report": lambda w, tmp: (
        ["stats", w.results, "--metric", "nope", "--out", tmp / "st"], w.results,
        "pass --metric with one of"),
    "report: --netid-figure is missing": lambda w, tmp: (
        _report(w, tmp, "--netid-figure", tmp / "confusion.png"), tmp / "confusion.png",
        "pass the figure `bsym netid --figure` wrote"),
    "report: --attention folder holds no contrast": lambda w, tmp: (
        _report(w, tmp, "--attention", _user_folder(tmp / "att")), tmp / "att",
        "pass the --out folder of `bsym attention`"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_and_nothing_changes(case, world, tmp_path, capsys):
    argv, named, fix = CASES[case](world, tmp_path)
    capsys.readouterr()
    before = _snapshot(world.root, tmp_path)
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bsym: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert str(named) in err, f"{named} not in {err!r}"
    assert "Fix:" in err and fix in err.split("Fix:", 1)[1], err
    assert _snapshot(world.root, tmp_path) == before, "a file was changed, removed or added"


def test_the_catalogue_is_long_enough():
    assert len(CASES) >= 14


# -- bsym's own outputs are still replaced (and appended to) ---------------------------
def test_own_outputs_are_appended_to_and_replaced(world, tmp_path, capsys):
    results = tmp_path / "r.parquet"
    shutil.copyfile(world.results, results)
    probe = ["probe", "--features", "fc", "--data", world.store, "--task", "sex",
             "--splits", world.sex, "--results", results, "--no-tracking", "--quiet"]
    assert _run([*probe, "--protocol", "linear_probe"]) == 0  # appended beside the rows
    table = pd.read_parquet(results)
    assert sorted(table["protocol"].value_counts().to_dict().items()) == \
        [("linear_probe", 4), ("supervised", 4)]
    assert _run([*probe, "--protocol", "linear_probe", "--force"]) == 0  # replaced, not added
    assert len(pd.read_parquet(results)) == 8

    from bsym.evaluate.results import ResultTable

    rows = pd.read_parquet(results).assign(model="twin").to_dict("records")
    ResultTable(results).append(rows)  # a second model, for the pairwise tests
    out, lists = tmp_path / "rep", tmp_path / "pre.txt"
    for _ in range(2):  # a rerun replaces the report, stats, subject list and figure
        assert _run(["report", "--results", results, "--out", out]) == 0
        assert _run(["splits", "--data", world.store, "--pretrain-fraction", "0.3",
                     "--splits", world.pretrain, "--subjects-out", lists]) == 0
        assert _run(["netid", "--features", "fc", "--data", world.store, "--results",
                     tmp_path / "n.parquet", "--figure", tmp_path / "c.png", "--seeds", "1",
                     "--permutations", "1", "--no-tracking", "--quiet"]) == 0
        assert _run(["stats", results, "--metric", "auroc", "--out", tmp_path / "stats"]) == 0
    html = (out / "report.html").read_text()
    assert '<meta name="generator" content="bsym ' in html
    assert not [p for p in tmp_path.rglob(".*.tmp")], "a temporary file was left"
    assert os.stat(out / "report.html").st_mode & 0o044  # readable like any file


def test_an_older_bsym_table_and_report_folder_are_still_ours(world, tmp_path):
    """Outputs of a bsym that wrote no marks: a result table is recognised by its columns,
    a report folder by its layout."""
    legacy = tmp_path / "old.parquet"
    pd.read_parquet(world.results).to_parquet(legacy)  # pandas: no bsym mark
    assert _run(["probe", "--features", "fc", "--data", world.store, "--task", "sex",
                 "--splits", world.sex, "--results", legacy, "--no-tracking", "--quiet",
                 "--protocol", "linear_probe"]) == 0
    assert len(pd.read_parquet(legacy)) == 8
    old = tmp_path / "old_report"
    (old / "figures").mkdir(parents=True)
    (old / "report.html").write_text("<html>an older bsym report</html>\n")
    (old / "figures" / "cd_finetune.png").write_bytes(b"\x89PNG")
    assert _run(["report", "--results", world.results, "--out", old]) == 0
    assert "generator" in (old / "report.html").read_text()


def test_a_split_made_without_a_label_serves_any_task(world, tmp_path):
    plain = tmp_path / "plain.json"
    assert _run(["splits", "--data", world.store, "--splits", plain, "--n-folds", "4",
                 "--inner-folds", "2"]) == 0
    assert _run(["probe", "--features", "fc", "--data", world.store, "--task", "age",
                 "--splits", plain, "--results", tmp_path / "r.parquet", "--no-tracking",
                 "--quiet"]) == 0


# -- full disk and unwritable locations --------------------------------------------------
def _mount_tmpfs(path, options):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")


def _umount(path):
    subprocess.run(["umount", str(path)], check=False)


def _fill(folder):
    """Fill the file system of ``folder`` to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_unwritable_output_folders_fail_before_any_work(world, tmp_path, capsys):
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "ro,size=64k")
    try:
        cases = [
            (["probe", "--features", "fc", "--data", world.store, "--task", "sex",
              "--splits", world.sex, "--results", ro / "r.parquet", "--no-tracking",
              "--quiet"], ro / "r.parquet", "choose a --results path in a folder you can "
             "write to"),
            (["report", "--results", world.results, "--out", ro / "rep"], ro / "rep",
             "in a location you can write to"),
            (["stats", world.results, "--metric", "auroc", "--out", ro / "st"], ro / "st",
             "in a location you can write to"),
            (["splits", "--data", world.store, "--task", "sex", "--splits", ro / "s.json"],
             ro / "s.json", "in a folder you can write to"),
        ]
        for argv, named, fix in cases:
            capsys.readouterr()
            assert _run(argv) == 2
            err = capsys.readouterr().err
            assert str(named) in err and "not writable" in err and fix in err, err
    finally:
        _umount(ro)


def test_full_disk_keeps_the_previous_table_and_report(world, tmp_path, capsys):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=1m")
    try:
        results = disk / "r.parquet"
        shutil.copyfile(world.results, results)
        probe = ["probe", "--features", "fc", "--data", world.store, "--task", "sex",
                 "--splits", world.sex, "--results", results, "--no-tracking", "--quiet",
                 "--force"]
        assert _run(probe) == 0
        assert _run(["report", "--results", results, "--out", disk / "rep"]) == 0
        before = _snapshot(disk)
        _fill(disk)
        before[str(disk / "filler")] = _snapshot(disk)[str(disk / "filler")]
        capsys.readouterr()
        for argv, named in ((probe, results),
                            (["report", "--results", results, "--out", disk / "rep"], None)):
            assert _run(argv) == 2
            err = capsys.readouterr().err
            assert "the disk is full" in err and "Fix: free space" in err, err
            assert named is None or str(named) in err
            assert _snapshot(disk) == before  # nothing replaced, no temporary file left
    finally:
        _umount(disk)


def test_injected_full_disk_keeps_the_previous_table_and_report(world, tmp_path, capsys,
                                                                 monkeypatch):
    import matplotlib.figure
    import pyarrow.parquet

    results = tmp_path / "r.parquet"
    shutil.copyfile(world.results, results)
    probe = ["probe", "--features", "fc", "--data", world.store, "--task", "sex", "--splits",
             world.sex, "--results", results, "--no-tracking", "--quiet", "--force"]
    assert _run(probe) == 0
    assert _run(["report", "--results", results, "--out", tmp_path / "rep"]) == 0
    before = _snapshot(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pyarrow.parquet, "write_table", full)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    capsys.readouterr()
    assert _run(probe) == 2
    err = capsys.readouterr().err
    assert str(results) in err and "the disk is full" in err and "Fix: free space" in err
    assert _run(["report", "--results", results, "--out", tmp_path / "rep"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "rep") in err and "the disk is full" in err, err
    after = _snapshot(tmp_path)
    index = str(tmp_path / "rep" / ".bsym-outputs.json")
    assert {k: v for k, v in after.items() if k != index} == \
        {k: v for k, v in before.items() if k != index}
    assert json.loads(Path(index).read_text())["kind"] == "report"


def test_result_table_of_the_report_fixture_is_marked(world):
    import pyarrow.parquet as pq

    meta = pq.read_schema(world.results).metadata
    assert meta[b"bsym.artifact"] == b"result-table"
    assert np.isfinite(pd.read_parquet(world.results)["auroc"]).all()
