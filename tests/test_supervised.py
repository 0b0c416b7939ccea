"""The supervised protocol: baselines trained from scratch on each outer fold, and the
inner-fold objective sweeps use."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bsym.cli import main
from bsym.data.simulate import SimulationConfig, simulate_cohort
from bsym.evaluate import EvaluationError
from bsym.evaluate.foldtrain import TrainingConfig, WindowSource
from bsym.evaluate.results import ResultTable
from bsym.evaluate.splits import make_splits
from bsym.evaluate.supervised import supervised_objective, train_supervised

torch.set_num_threads(1)
STRONGER = SimulationConfig(score_sc=0.2, score_latent_sd=0.3, sex_frequency_hz=0.02)
FAST = TrainingConfig(max_steps=150, eval_every=15, patience=3, lr=1e-3, batch_size=16)
WINDOWS = {"window": 100, "target_tr": 0.8}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return simulate_cohort(tmp_path_factory.mktemp("sim") / "sim", n_subjects=100, n_rois=30,
                           n_timepoints=300, seed=0, config=STRONGER, progress=False)


@pytest.fixture(scope="module")
def score_splits(cohort, tmp_path_factory):
    return make_splits(cohort, tmp_path_factory.mktemp("splits") / "score.json", label="score",
                       n_splits=5, inner_splits=3, seed=0)


@pytest.mark.slow
def test_a_label_planted_in_sc_is_learnt_from_sc_not_from_fc(cohort, score_splits):
    from_sc = train_supervised("brainnetcnn", cohort, score_splits, "score",
                               model_args={"input": "sc"}, config=FAST, progress=False,
                               **WINDOWS)
    from_fc = train_supervised("brainnetcnn", cohort, score_splits, "score",
                               model_args={"input": "fc"}, config=FAST, progress=False,
                               **WINDOWS)
    assert len(from_sc) == len(from_fc) == 5
    assert (from_sc["protocol"] == "supervised").all()
    assert from_sc["pearson_r"].median() > 0.3, from_sc["pearson_r"].tolist()
    assert from_fc["pearson_r"].mean() < 0.2, from_fc["pearson_r"].tolist()


def test_rows_are_kept_reused_and_deterministic(cohort, score_splits, tmp_path):
    table = ResultTable(tmp_path / "results.parquet")
    config = TrainingConfig(max_steps=20, eval_every=10, patience=1, batch_size=16)
    first = train_supervised("transformer", cohort, score_splits, "score", folds=[0, 1],
                             model_args={"heads": 2}, config=config, results=table,
                             progress=False, **WINDOWS)
    assert list(first["fold"]) == [0, 1]
    assert {"n_train", "n_val", "n_test", "best_step", "config_hash", "split_hash",
            "git_sha", "preset"} <= set(first.columns)
    fold = score_splits[0]
    assert first["n_test"].iloc[0] == len(fold.test)
    assert first["n_train"].iloc[0] == len(fold.train)
    assert first["n_fit"].iloc[0] + first["n_val"].iloc[0] == len(fold.train)
    again = train_supervised("transformer", cohort, score_splits, "score", folds=[0, 1],
                             model_args={"heads": 2}, config=config, results=table,
                             progress=False, **WINDOWS)
    assert list(again["runtime_s"]) == list(first["runtime_s"])  # read back, not recomputed
    fresh = train_supervised("transformer", cohort, score_splits, "score", folds=[0],
                             model_args={"heads": 2}, config=config, progress=False, **WINDOWS)
    assert fresh["pearson_r"].iloc[0] == pytest.approx(first["pearson_r"].iloc[0], abs=1e-6)
    assert fresh["mse"].iloc[0] == pytest.approx(first["mse"].iloc[0], abs=1e-6)
    assert len(table.read()) == 2


def test_per_fold_hyper_parameters_change_the_row(cohort, score_splits):
    config = TrainingConfig(max_steps=10, eval_every=5, patience=1, batch_size=16)
    kwargs = dict(folds=[0], config=config, model_args={"heads": 2}, progress=False, **WINDOWS)
    plain = train_supervised("bnt", cohort, score_splits, "score", **kwargs)
    tuned = train_supervised("bnt", cohort, score_splits, "score",
                             params={0: {"lr": 1e-2, "model.dropout": 0.3}}, **kwargs)
    assert plain["config_hash"].iloc[0] != tuned["config_hash"].iloc[0]
    with pytest.raises(EvaluationError, match="fold 1 has none"):
        train_supervised("bnt", cohort, score_splits, "score", folds=[1],
                         params={0: {"lr": 1e-2}}, config=config, model_args={"heads": 2},
                         progress=False, **WINDOWS)
    with pytest.raises(EvaluationError, match="unknown hyper-parameter 'dropout'"):
        train_supervised("bnt", cohort, score_splits, "score", params={0: {"dropout": 0.1}},
                         **kwargs)


def test_numeric_classes_other_than_0_1_are_mapped(cohort, tmp_path):
    from bsym.data import CohortWriter, open_cohort

    # the same data with sex coded 1/2
    with CohortWriter(tmp_path / "coded", source={"name": "recoded"}, atlas="sim") as writer:
        rois = cohort.rois
        writer.set_rois(rois["name"].tolist(), networks=rois["network"].tolist())
        for row in cohort.subjects.itertuples():
            writer.add_scan(subject=row.subject, session=row.session, site=row.site, tr=row.tr,
                            bold=np.asarray(cohort.bold(row.scan)), sex=1 if row.sex == "M" else 2)
        for subject in cohort.subjects["subject"].unique():
            writer.add_matrix("sc", subject, np.asarray(cohort.sc(subject)))
    coded = open_cohort(tmp_path / "coded")
    splits = make_splits(coded, tmp_path / "sex.json", label="sex", n_splits=5, seed=0)
    frame = train_supervised("brainnetcnn", coded, splits, "sex", folds=[0],
                             config=TrainingConfig(max_steps=10, eval_every=5, batch_size=16),
                             progress=False, **WINDOWS)
    assert frame["task_type"].iloc[0] == "classification"
    assert 0.0 <= frame["auroc"].iloc[0] <= 1.0


def test_the_inner_objective_never_reads_the_outer_test_fold(cohort, score_splits,
                                                             monkeypatch):
    read = []
    original = WindowSource.windows

    def recording(self, subjects, label=None, scaler=None):
        read.extend(subjects)
        return original(self, subjects, label, scaler)

    monkeypatch.setattr(WindowSource, "windows", recording)
    objective = supervised_objective("transformer", cohort, score_splits, "score", 2,
                                     model_args={"heads": 2}, config=TrainingConfig(
                                         max_steps=6, eval_every=3, batch_size=16), **WINDOWS)
    reports = []
    value = objective({"lr": 3e-3}, lambda v, step: reports.append((step, v)))
    fold = score_splits[2]
    assert read and not set(read) & set(fold.test)
    assert set(read) <= set(fold.train)
    assert [s for s, _ in reports] == [0, 1, 2]
    assert value == pytest.approx(reports[-1][1]) and np.isfinite(value)


def test_self_supervised_models_and_unknown_names_are_refused(cohort, score_splits):
    with pytest.raises(EvaluationError, match="not a supervised baseline"):
        train_supervised("brainsymphony", cohort, score_splits, "score", **WINDOWS)
    with pytest.raises(EvaluationError, match="bnt"):
        train_supervised("no-such-model", cohort, score_splits, "score", **WINDOWS)
    with pytest.raises(EvaluationError, match="mixes TRs"):
        train_supervised("bnt", cohort, score_splits, "score", window=100)


def test_cli_reads_sweep_parameters(cohort, score_splits, tmp_path, capsys):
    params = tmp_path / "sweep.json"
    params.write_text(json.dumps({"folds": {"0": {"params": {"lr": 2e-3}, "value": 1.0}}}))
    results = tmp_path / "results.parquet"
    code = main(["supervised", "--model", "transformer", "--model-arg", "heads=2",
                 "--data", str(cohort.path), "--task", "score", "--splits",
                 str(score_splits.path), "--fold", "0", "--params", str(params),
                 "--window", "100", "--target-tr", "0.8", "--max-steps", "6",
                 "--eval-every", "3", "--results", str(results), "--no-tracking", "--quiet"])
    assert code in (0, None)
    assert "supervised transformer on score" in capsys.readouterr().out
    assert len(ResultTable(results).read()) == 1
    params.write_text("{}")
    assert main(["supervised", "--model", "bnt", "--data", str(cohort.path), "--task", "score",
                 "--splits", str(score_splits.path), "--params", str(params),
                 "--no-tracking"]) == 2
    assert "bsym sweep" in capsys.readouterr().err
