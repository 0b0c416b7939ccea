"""Split files: stratified, group-aware, leave-one-site-out, written once and hashed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bsym.data import CohortError, CohortWriter, open_cohort
from bsym.evaluate.splits import (
    SplitError,
    infer_task,
    load_pretrain_split,
    load_splits,
    make_pretrain_split,
    make_splits,
)
from bsym.testing import write_toy_store

torch.set_num_threads(1)


def write_family_store(path, *, n_families=8, per_family=2, n_rois=4, sites=("A", "B")):
    """Families of ``per_family`` subjects, two sessions each; one site per family."""
    rng = np.random.default_rng(1)
    with CohortWriter(path, source={"name": "families"}, atlas="toy") as w:
        w.set_rois([f"r{i}" for i in range(n_rois)], networks=["a", "a", "b", "b"][:n_rois])
        s = 0
        for f in range(n_families):
            for _ in range(per_family):
                for session in ("1", "2"):
                    w.add_scan(subject=f"sub-{s:02d}", session=session,
                               site=sites[f % len(sites)], family=f"fam{f}", tr=2.0,
                               bold=rng.standard_normal((n_rois, 30)).astype(np.float32),
                               sex="F" if s % 2 else "M", age=20.0 + s)
                s += 1
    return open_cohort(path)


@pytest.fixture
def store(tmp_path):
    return write_toy_store(tmp_path / "toy", n_subjects=20, sessions=2, n_timepoints=30)


def _subject_sites(cohort):
    return cohort.subjects.groupby("subject")["site"].first()


def test_stratified_kfold_is_grouped_stratified_and_covers_everyone(store, tmp_path):
    splits = make_splits(store, tmp_path / "s.json", label="sex", n_splits=5, n_repeats=2,
                         inner_splits=3, seed=3)
    assert len(splits) == 10 and splits.request["task"] == "classification"
    subjects = set(store.subjects["subject"])
    sex = store.subjects.groupby("subject")["sex"].first()
    for repeat in (0, 1):
        folds = [f for f in splits if f.repeat == repeat]
        tests = [s for f in folds for s in f.test]
        assert sorted(tests) == sorted(subjects)  # every subject tested exactly once
    for fold in splits:
        assert not set(fold.train) & set(fold.test)
        assert set(fold.train) | set(fold.test) == subjects
        assert sex[list(fold.test)].value_counts().tolist() == [2, 2]  # 10 F / 10 M over 5 folds
        assert len(fold.inner) == 3
        for fit, val in fold.inner:
            assert set(fit) | set(val) == set(fold.train) and not set(fit) & set(val)
    # repeats differ; the whole file is reproducible from the seed
    assert [f.test for f in splits if f.repeat == 0] != [f.test for f in splits if f.repeat == 1]
    again = make_splits(store, tmp_path / "other.json", label="sex", n_splits=5, n_repeats=2,
                        inner_splits=3, seed=3)
    assert again.sha256 == splits.sha256


def test_regression_is_stratified_on_quantile_bins(store, tmp_path):
    splits = make_splits(store, tmp_path / "age.json", label="age", n_splits=4, seed=0)
    assert splits.request["task"] == "regression"
    age = store.subjects.groupby("subject")["age"].first()
    means = [age[list(f.test)].mean() for f in splits]
    assert max(means) - min(means) < 0.25 * (age.max() - age.min())


def test_written_once_read_back_and_hash_verified(store, tmp_path):
    path = tmp_path / "s.json"
    first = make_splits(store, path, label="sex", n_splits=4)
    stamp = path.stat().st_mtime_ns
    second = make_splits(store, path, label="sex", n_splits=4)
    assert second.sha256 == first.sha256 and path.stat().st_mtime_ns == stamp
    assert load_splits(path).sha256 == first.sha256
    assert json.loads(path.read_text())["sha256"] == first.sha256

    with pytest.raises(SplitError, match=r"n_splits: file 4, requested 5"):
        make_splits(store, path, label="sex", n_splits=5)
    with pytest.raises(SplitError, match="seed: file 0, requested 1"):
        make_splits(store, path, label="sex", n_splits=4, seed=1)

    payload = json.loads(path.read_text())
    payload["folds"][0]["test"].append(payload["folds"][0]["train"].pop())
    path.write_text(json.dumps(payload))
    with pytest.raises(SplitError, match="does not match its SHA-256"):
        load_splits(path)
    with pytest.raises(SplitError, match="modified after writing"):
        make_splits(store, path, label="sex", n_splits=4)


def test_sessions_and_families_stay_on_one_side(tmp_path):
    cohort = write_family_store(tmp_path / "fam")
    family = cohort.subjects.groupby("subject")["family"].first()
    splits = make_splits(cohort, tmp_path / "s.json", label="sex", n_splits=4, inner_splits=2,
                         group_by="family")
    for fold in splits:
        assert not set(family[list(fold.train)]) & set(family[list(fold.test)])
        for fit, val in fold.inner:
            assert not set(family[list(fit)]) & set(family[list(val)])
    plain = write_toy_store(tmp_path / "plain", n_subjects=8)
    with pytest.raises(SplitError, match="no family column"):
        make_splits(plain, tmp_path / "p.json", group_by="family")


def test_leave_one_site_out(tmp_path):
    cohort = write_family_store(tmp_path / "fam", n_families=9, sites=("A", "B", "C"))
    site = _subject_sites(cohort)
    splits = make_splits(cohort, tmp_path / "loso.json", label="sex", protocol="site",
                         inner_splits=2)
    assert [f.test_site for f in splits] == ["A", "B", "C"]
    for fold in splits:
        assert set(site[list(fold.test)]) == {fold.test_site}
        assert fold.test_site not in set(site[list(fold.train)])
        # inner folds leave one of the two training sites out
        assert len(fold.inner) == 2
        for fit, val in fold.inner:
            assert len(set(site[list(val)])) == 1 and not set(site[list(fit)]) & set(site[list(val)])


def test_bad_requests_fail_before_any_work(store, tmp_path):
    with pytest.raises(CohortError, match="no label column 'iq'"):
        make_splits(store, tmp_path / "a.json", label="iq")
    one_site = write_toy_store(tmp_path / "one", n_subjects=6)
    one_site_table = one_site.subjects
    assert one_site_table["site"].nunique() == 2  # the toy store alternates two sites
    single = write_family_store(tmp_path / "single", sites=("A",))
    with pytest.raises(SplitError, match="needs at least 2 sites.*has 1"):
        make_splits(single, tmp_path / "b.json", label="sex", protocol="site")
    # 6 subjects: 3 F / 3 M cannot fill 5 stratified folds
    with pytest.raises(SplitError, match=r"class '[FM]'.*expected >= 5, received 3"):
        make_splits(one_site, tmp_path / "c.json", label="sex", n_splits=5)
    # enough for the outer folds, not for the inner ones
    with pytest.raises(SplitError, match="inner folds need"):
        make_splits(one_site, tmp_path / "d.json", label="sex", n_splits=3, inner_splits=3)
    assert not any(tmp_path.glob("*.json"))  # nothing written by a failed request


def test_pretraining_cohort_is_never_probed(store, tmp_path):
    pre = make_pretrain_split(store, tmp_path / "pretrain.json", fraction=0.3, seed=1)
    assert len(pre.pretrain) == 6 and len(pre.probe) == 14
    assert not set(pre.pretrain) & set(pre.probe)
    assert load_pretrain_split(tmp_path / "pretrain.json").sha256 == pre.sha256
    splits = make_splits(store, tmp_path / "s.json", label="age", n_splits=3, pretrain=pre)
    assert set(splits.subjects) == set(pre.probe)
    assert splits.request["pretrain_sha256"] == pre.sha256
    for fold in splits:
        assert not (set(fold.train) | set(fold.test)) & set(pre.pretrain)
    listed = pre.write_subject_list(tmp_path / "pretrain.txt")
    lines = [x for x in listed.read_text().splitlines() if not x.startswith("#")]
    assert lines == pre.pretrain
    with pytest.raises(SplitError, match="fraction: file 0.3, requested 0.5"):
        make_pretrain_split(store, tmp_path / "pretrain.json", fraction=0.5, seed=1)


def test_split_of_another_store_is_refused(store, tmp_path):
    splits = make_splits(store, tmp_path / "s.json", label="sex", n_splits=4)
    other = write_toy_store(tmp_path / "other", n_subjects=20, sessions=2, n_timepoints=30,
                            seed=5)
    with pytest.raises(SplitError, match="made for data with manifest"):
        splits.check_cohort(other)
    with pytest.raises(SplitError, match="manifest_hash: file"):
        make_splits(other, tmp_path / "s.json", label="sex", n_splits=4)


@pytest.mark.parametrize("values, expected", [
    (["F", "M"], "classification"), ([0, 1, 1], "classification"),
    ([True, False], "classification"), ([20.5, 31.0, 44.2], "regression"),
    (list(range(30)), "regression"),
])
def test_infer_task(values, expected):
    assert infer_task(values) == expected


def test_cli_splits(store, tmp_path, capsys):
    from bsym.cli import main

    for command in ("embed", "probe", "finetune", "netid", "attention", "splits"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0 and f"usage: bsym {command}" in capsys.readouterr().out
    path = tmp_path / "pre.json"
    assert main(["splits", "--data", str(store.path), "--splits", str(path),
                 "--pretrain-fraction", "0.25", "--subjects-out", str(tmp_path / "pre.txt")]) == 0
    assert "PretrainSplit(5 pretraining, 15 probed" in capsys.readouterr().out
    assert main(["splits", "--data", str(store.path), "--splits", str(tmp_path / "s.json"),
                 "--task", "sex", "--n-folds", "3", "--pretrain-split", str(path)]) == 0
    assert "Splits(kfold, label='sex', 3 folds" in capsys.readouterr().out
    assert main(["splits", "--data", str(store.path), "--splits", str(tmp_path / "x.json"),
                 "--subjects-out", "y.txt"]) == 2
    assert "--subjects-out needs --pretrain-fraction" in capsys.readouterr().err
