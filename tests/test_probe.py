"""Linear probe: inner-fold regularisation, metrics, no leakage, per-fold result cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import bsym.evaluate.probe as probe_module
from bsym.cli import main
from bsym.data import CohortError, CohortWriter, open_cohort
from bsym.evaluate import EvaluationError
from bsym.evaluate.embeddings import EmbeddingError, feature_embeddings
from bsym.evaluate.probe import (
    ProbeConfig,
    classification_scores,
    linear_probe,
    probe_fold,
    regression_scores,
)
from bsym.evaluate.results import KEY_COLUMNS, ResultTable, git_sha
from bsym.evaluate.splits import make_splits
from bsym.testing import write_toy_store

torch.set_num_threads(1)
FAST = ProbeConfig(Cs=(0.01, 1.0), alphas=(1.0, 100.0))


@pytest.fixture
def store(tmp_path):
    return write_toy_store(tmp_path / "toy", n_subjects=20, sessions=2, n_timepoints=30)


def _folds(y, n_test, seed=0):
    """One stratified train/test split and 3 inner folds (positions within train)."""
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n_test // 2]
                           for c in np.unique(y)])
    train = np.setdiff1d(np.arange(len(y)), test)
    order = rng.permutation(len(train))
    inner = [(np.setdiff1d(order, part), part) for part in np.array_split(order, 3)]
    return train, test, inner


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_signal_only_in_the_test_fold_cannot_be_used(task):
    rng = np.random.default_rng(0)
    n = 80
    y = np.repeat([0, 1], n // 2) if task == "classification" else rng.normal(size=n)
    strata = y if task == "classification" else (y > np.median(y)).astype(int)
    train, test, inner = _folds(strata, 20)
    x = rng.normal(size=(n, 12))                       # noise: nothing to learn in training
    clean = x.copy()
    signal = (2 * y - 1) if task == "classification" else y
    x[test, 0] = 10.0 * signal[test]                   # the label, planted in test rows only
    x[train, 0] = 0.0
    clean[:, 0] = 0.0
    leaky = probe_fold(x, y, train, test, inner, task=task, config=FAST)
    honest = probe_fold(clean, y, train, test, inner, task=task, config=FAST)
    # The probe's predictions do not move at all: the planted feature never reached a fit.
    np.testing.assert_allclose(leaky["prediction"], honest["prediction"])
    if task == "classification":
        assert abs(leaky["auroc"] - 0.5) < 0.25 and abs(leaky["accuracy"] - 0.5) < 0.25
    else:
        assert abs(leaky["pearson_r"]) < 0.5 and leaky["mse"] > 0.7
    # ... whereas a model that (wrongly) saw the test rows would exploit it.
    from sklearn.linear_model import LogisticRegression, Ridge

    cheat = make_pipeline(StandardScaler(), LogisticRegression() if task == "classification"
                          else Ridge()).fit(x, y)
    if task == "classification":
        assert roc_auc_score(y[test], cheat.predict_proba(x[test])[:, 1]) > 0.95
    else:
        assert np.corrcoef(y[test], cheat.predict(x[test]))[0, 1] > 0.9


def test_hyper_parameters_are_chosen_on_training_rows_only(monkeypatch):
    seen = []
    original = probe_module.choose_param

    def spy(x_train, y_train, inner, **kw):
        seen.append((len(x_train), [(np.max(a), np.max(b)) for a, b in inner]))
        return original(x_train, y_train, inner, **kw)

    monkeypatch.setattr(probe_module, "choose_param", spy)
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 30)
    train, test, inner = _folds(y, 20)
    probe_fold(rng.normal(size=(60, 5)), y, train, test, inner, task="classification",
               config=FAST)
    (n_rows, folds), = seen
    assert n_rows == len(train) == 40
    assert all(a < 40 and b < 40 for a, b in folds)
    with pytest.raises(EvaluationError, match="inner folds must index the training rows"):
        probe_fold(rng.normal(size=(60, 5)), y, train, test, [(test, train)],
                   task="classification", config=FAST)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_inner_search_picks_what_grid_search_cv_picks(task):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import GridSearchCV

    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 12))
    y = (x[:, 0] + rng.normal(size=90) > 0).astype(int) if task == "classification" \
        else x[:, 0] + 2 * rng.normal(size=90)
    train, test, inner = _folds(y if task == "classification" else (y > 0).astype(int), 30)
    config = ProbeConfig()
    model = LogisticRegression(max_iter=5000) if task == "classification" else Ridge()
    grid = {"model__C": list(config.Cs)} if task == "classification" else \
        {"model__alpha": list(config.alphas)}
    reference = GridSearchCV(make_pipeline(StandardScaler(), model).set_output(),
                             {k.replace("model__", f"{type(model).__name__.lower()}__"): v
                              for k, v in grid.items()}, cv=inner,
                             scoring="roc_auc" if task == "classification"
                             else "neg_mean_squared_error").fit(x[train], y[train])
    best, scores = probe_module.choose_param(x[train], y[train], inner, task=task,
                                             config=config, n_classes=2)
    assert best == pytest.approx(next(iter(reference.best_params_.values())))
    np.testing.assert_allclose(scores.mean(axis=0), reference.cv_results_["mean_test_score"],
                               rtol=1e-3, atol=1e-3)


def test_metrics():
    y = np.array([0, 0, 1, 1, 1, 0])
    proba = np.array([[.8, .2], [.3, .7], [.2, .8], [.4, .6], [.9, .1], [.6, .4]])
    s = classification_scores(y, proba, 2)
    pred = proba.argmax(1)
    assert s["accuracy"] == pytest.approx(np.mean(pred == y))
    assert s["f1"] == pytest.approx(f1_score(y, pred))
    assert s["auroc"] == pytest.approx(roc_auc_score(y, proba[:, 1]))
    y3 = np.array([0, 1, 2, 0, 1, 2])
    p3 = np.eye(3)[[0, 1, 2, 1, 1, 2]] * 0.7 + 0.1
    s3 = classification_scores(y3, p3, 3)
    assert s3["auroc"] == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr"))
    assert np.isnan(classification_scores(np.array([0, 0]), proba[:2], 2)["auroc"])
    r = regression_scores([1.0, 2.0, 3.0], [1.0, 2.0, 4.0], mean=2.0, sd=2.0)
    assert r["mse"] == pytest.approx((0.5 ** 2) / 3)     # z-scored with the training stats
    assert r["mae"] == pytest.approx(1 / 3) and r["pearson_r"] > 0.9


def test_probe_over_a_split_file_with_a_per_fold_cache(store, tmp_path, monkeypatch):
    emb = feature_embeddings(store, "fc")
    splits = make_splits(store, tmp_path / "s.json", label="sex", n_splits=4, inner_splits=2)
    table = ResultTable(tmp_path / "results.parquet")
    frame = linear_probe(emb, store, splits, "sex", config=FAST, results=table,
                         protocol="supervised", progress=False)
    assert len(frame) == 4 and set(KEY_COLUMNS) <= set(frame.columns)
    stored = table.read()
    assert len(stored) == 4
    row = stored.iloc[0]
    assert row["model"] == "connectome-fc" and row["protocol"] == "supervised"
    assert row["split_hash"] == splits.sha256 and row["manifest_hash"] == store.manifest_hash
    assert row["n_train"] == 15 and row["n_test"] == 5
    assert row["git_sha"] == git_sha() and len(row["config_hash"]) == 64
    assert {"accuracy", "f1", "balanced_accuracy", "auroc", "runtime_s"} <= set(stored.columns)

    def boom(*args, **kwargs):
        raise AssertionError("recomputed a cached fold")

    monkeypatch.setattr(probe_module, "probe_fold", boom)
    again = linear_probe(emb, store, splits, "sex", config=FAST, results=table,
                         protocol="supervised", progress=False)
    pd.testing.assert_series_equal(again["auroc"], frame["auroc"], check_names=False)
    with pytest.raises(AssertionError, match="recomputed"):
        linear_probe(emb, store, splits, "sex", config=FAST, results=table,
                     protocol="supervised", progress=False, force=True)
    with pytest.raises(AssertionError, match="recomputed"):  # another config: stale rows
        linear_probe(emb, store, splits, "sex", config=ProbeConfig(Cs=(1.0,)), results=table,
                     protocol="supervised", progress=False)
    monkeypatch.undo()
    other = make_splits(store, tmp_path / "s2.json", label="sex", n_splits=4, inner_splits=2,
                        seed=1)
    linear_probe(emb, store, other, "sex", config=FAST, results=table, protocol="supervised",
                 progress=False, folds=[0])
    assert len(table.read()) == 5  # seed 1, fold 0 added beside seed 0


def test_regression_and_scan_level(store, tmp_path):
    emb = feature_embeddings(store, "sc")
    splits = make_splits(store, tmp_path / "age.json", label="age", n_splits=4, inner_splits=2)
    frame = linear_probe(emb, store, splits, "age", config=FAST, progress=False)
    assert {"mse", "pearson_r", "mae", "r2"} <= set(frame.columns)
    assert frame["task_type"].eq("regression").all()
    cond = make_splits(store, tmp_path / "cond.json", label="condition", n_splits=4,
                       inner_splits=2)
    with pytest.raises(EvaluationError, match="varies within subject.*level='scan'"):
        linear_probe(emb, store, cond, "condition", config=FAST, progress=False)
    scan = linear_probe(feature_embeddings(store, "fc"), store, cond, "condition",
                        config=ProbeConfig(Cs=(1.0,), level="scan"), progress=False)
    assert (scan["n_test"] == 10).all()  # 5 subjects x 2 sessions


def test_bad_input_fails_before_any_work(store, tmp_path):
    emb = feature_embeddings(store, "fc")
    splits = make_splits(store, tmp_path / "s.json", label="sex", n_splits=4, inner_splits=2)
    with pytest.raises(CohortError, match="no label column 'iq'"):
        linear_probe(emb, store, splits, "iq", progress=False)
    other = write_toy_store(tmp_path / "other", n_subjects=20, sessions=2, n_timepoints=30,
                            seed=4)
    with pytest.raises(EmbeddingError, match="manifest"):
        linear_probe(feature_embeddings(other, "fc"), store, splits, "sex", progress=False)


def test_logged_to_mlflow(store, tmp_path):
    from mlflow import MlflowClient

    from bsym.track import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    emb = feature_embeddings(store, "fc")
    splits = make_splits(store, tmp_path / "s.json", label="sex", n_splits=4, inner_splits=2)
    linear_probe(emb, store, splits, "sex", config=FAST, tracker=Tracker(uri, "eval"),
                 progress=False, folds=[0, 1])
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("eval").experiment_id])
    folds = sorted(r.data.tags["fold"] for r in runs if "fold" in r.data.tags)
    assert folds == ["0", "1"] and len(runs) == 3
    for run in runs:
        tags = run.data.tags
        assert (tags["model"], tags["dataset"], tags["task"], tags["protocol"], tags["seed"]) == \
            ("connectome-fc", "toy", "sex", "linear_probe", "0")
    parent = next(r for r in runs if "fold" not in r.data.tags)
    assert "auroc_mean" in parent.data.metrics and "auroc_sd" in parent.data.metrics
    # named protocol / model:view / task, tagged for the leaderboard filter, with the CI
    view = parent.data.tags["view"]
    label = "connectome-fc" if view == "default" else f"connectome-fc:{view}"
    assert parent.info.run_name == f"linear_probe / {label} / sex"
    assert parent.data.tags["bsym.kind"] == "parent"
    assert {r.data.tags["bsym.kind"] for r in runs if r is not parent} == {"fold"}
    metrics = parent.data.metrics
    assert metrics["auroc_ci_low"] <= metrics["auroc_mean"] <= metrics["auroc_ci_high"]

    # a resumed evaluation's parent run summarises every fold, also those read back
    from bsym.evaluate.results import ResultTable

    table = ResultTable(tmp_path / "results.parquet")
    tracker = Tracker(uri, "resumed")
    linear_probe(emb, store, splits, "sex", config=FAST, tracker=tracker, results=table,
                 progress=False, folds=[0])
    linear_probe(emb, store, splits, "sex", config=FAST, tracker=tracker, results=table,
                 progress=False, folds=[0, 1])
    parents = tracker.search_runs("tags.bsym.kind = 'parent'")
    assert sorted(r.data.metrics["n_folds"] for r in parents) == [1, 2]


def test_cli_probe(store, tmp_path, capsys):
    base = ["probe", "--features", "fc", "--data", str(store.path), "--no-tracking",
            "--results", str(tmp_path / "r.parquet"), "--quiet"]
    assert main([*base, "--task", "sex", "--splits", str(tmp_path / "s.json"),
                 "--n-folds", "4", "--inner-folds", "2"]) == 0
    out = capsys.readouterr().out
    assert "supervised connectome-fc" in out and "auroc" in out
    assert main([*base, "--task", "sex", "--splits", str(tmp_path / "s.json")]) == 0
    assert main([*base, "--task", "iq", "--splits", str(tmp_path / "x.json")]) == 2
    assert "no label column 'iq'" in capsys.readouterr().err
    assert main([*base, "--task", "sex", "--splits", str(tmp_path / "s.json"),
                 "--n-folds", "5"]) == 2
    assert "n_splits: file 4, requested 5" in capsys.readouterr().err
    small = write_toy_store(tmp_path / "small", n_subjects=6)
    small_args = ["probe", "--features", "fc", "--data", str(small.path), "--no-tracking",
                  "--results", str(tmp_path / "r.parquet"), "--quiet", "--task", "sex"]
    assert main([*small_args, "--splits", str(tmp_path / "t.json")]) == 2
    assert "expected >= 5, received 3" in capsys.readouterr().err
    one_site = tmp_path / "onesite"
    with CohortWriter(one_site, source={"name": "one"}, atlas="toy") as w:
        rng = np.random.default_rng(0)
        for s in range(6):
            w.add_scan(subject=f"s{s}", site="A", tr=2.0, sex="F" if s % 2 else "M",
                       bold=rng.standard_normal((4, 30)).astype(np.float32))
    open_cohort(one_site)
    assert main(["probe", "--features", "fc", "--data", str(one_site), "--no-tracking",
                 "--results", str(tmp_path / "r.parquet"), "--quiet", "--task", "sex",
                 "--splits", str(tmp_path / "site.json"), "--split-protocol", "site"]) == 2
    assert "needs at least 2 sites" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["logistic", "ridge"])
def test_wide_probes_fit_in_the_row_span_without_changing_predictions(kind):
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression, Ridge

    from bsym.evaluate.rowspace import RowSpace

    rng = np.random.default_rng(0)
    x, unseen = rng.normal(size=(60, 500)), rng.normal(size=(20, 500))
    if kind == "logistic":
        y = (x[:, :5].sum(1) > 0).astype(int)
        model = LogisticRegression(C=0.1, max_iter=5000, tol=1e-10)
    else:
        y = x[:, 0] + rng.normal(size=60)
        model = Ridge(alpha=10.0)
    plain = make_pipeline(StandardScaler(), clone(model)).fit(x, y)
    reduced = make_pipeline(StandardScaler(), RowSpace(), clone(model)).fit(x, y)
    assert reduced[1].basis_.shape == (500, 59)                 # rank of 60 centred rows
    predict = "predict_proba" if kind == "logistic" else "predict"
    np.testing.assert_allclose(getattr(reduced, predict)(unseen),
                               getattr(plain, predict)(unseen), atol=1e-8)
    narrow = rng.normal(size=(60, 8))
    np.testing.assert_array_equal(RowSpace().fit_transform(narrow), narrow)  # identity


@pytest.mark.parametrize("C", [1e-4, 1.0, 1e3])
def test_newton_logistic_reaches_scikit_learns_optimum(C):
    from sklearn.linear_model import LogisticRegression

    from bsym.evaluate.rowspace import BinaryLogistic

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6))
    y = np.where(x[:, 0] + 0.5 * rng.normal(size=80) > 0, "yes", "no")  # separable at C=1e3
    ours = BinaryLogistic(C=C).fit(x, y)
    reference = LogisticRegression(C=C, tol=1e-12, max_iter=100000).fit(x, y)
    np.testing.assert_allclose(ours.coef_, reference.coef_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours.intercept_, reference.intercept_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(x), reference.predict_proba(x), atol=1e-6)
    assert list(ours.classes_) == ["no", "yes"] and set(ours.predict(x)) <= {"no", "yes"}
