"""The supervised protocol: baselines trained from scratch on each outer fold, and the
inner-fold objective sweeps use.

The test of meaning trains BrainNetCNN (``tiny`` preset) on the cohort a user gets by
default (the session fixture ``default_cohort``: 200 subjects x 100 ROIs x 1200 time
points, two sessions, three sites) at the simulator's default effect sizes
(``SimulationConfig()``): ``score``, planted in SC only, must be learnt from SC and not
from FC, on 3 of the 5 outer folds (to keep it near a minute per modality). Its
thresholds are commented with the values measured on that cohort (seed 0) and, in
brackets, on the default cohort of seeds 1 and 2. The other tests check mechanics on a
small cohort (default effect sizes too; they need no effect).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bsym.cli import main
from bsym.data.simulate import simulate_cohort
from bsym.evaluate import EvaluationError
from bsym.evaluate.foldtrain import FoldTraining, WindowSource
from bsym.evaluate.results import ResultTable
from bsym.evaluate.splits import make_splits
from bsym.evaluate.supervised import supervised_objective, train_supervised

torch.set_num_threads(1)
WINDOWS = {"window": 100, "target_tr": 0.8}
#: BrainNetCNN on the default cohort: 120 steps of 32 subjects (about 24 epochs of a
#: training fold; the validation loss still fell at the end on most folds), one window
#: per scan (an SC model sees the same matrix in every window of a subject).
LEARN = FoldTraining(max_steps=120, eval_every=20, patience=6, lr=2e-3, batch_size=32,
                       warmup_steps=10)
LEARN_WINDOWS = {"window": 200, "target_tr": 0.8, "max_windows": 1}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A small cohort for the mechanics (default effect sizes; no test here reads them)."""
    return simulate_cohort(tmp_path_factory.mktemp("sim") / "sim", n_subjects=40, n_rois=30,
                           n_timepoints=300, seed=0, progress=False)


@pytest.fixture(scope="module")
def score_splits(cohort, tmp_path_factory):
    return make_splits(cohort, tmp_path_factory.mktemp("splits") / "score.json", label="score",
                       n_splits=5, inner_splits=3, seed=0)


@pytest.mark.slow
def test_a_label_planted_in_sc_is_learnt_from_sc_not_from_fc(default_cohort, tmp_path):
    splits = make_splits(default_cohort, tmp_path / "score.json", label="score", n_splits=5,
                         inner_splits=3, seed=0)
    runs = {kind: train_supervised("brainnetcnn", default_cohort, splits, "score",
                                   model_args={"input": kind}, config=LEARN, folds=[0, 1, 2],
                                   progress=False, **LEARN_WINDOWS)
            for kind in ("sc", "fc")}
    from_sc, from_fc = runs["sc"]["pearson_r"], runs["fc"]["pearson_r"]
    print(f"score: Pearson r from SC {from_sc.round(3).tolist()}, "
          f"from FC {from_fc.round(3).tolist()}")
    assert len(from_sc) == len(from_fc) == 3
    assert (runs["sc"]["protocol"] == "supervised").all()
    # SC: measured 0.715, 0.647, 0.451 (seed 1: 0.642, 0.184, 0.544; seed 2: 0.750, 0.571, 0.585)
    assert from_sc.mean() > 0.3
    # FC: measured 0.088, 0.077, -0.042 (seed 1: 0.130, -0.290, -0.022; seed 2: -0.166,
    # 0.062, -0.108); the linear probe reads r 0.60 from SC, 0.00 from FC
    assert from_fc.mean() < 0.2
    assert from_sc.mean() - from_fc.mean() > 0.3  # measured 0.56 (0.52, 0.71)


def test_rows_are_kept_reused_and_deterministic(cohort, score_splits, tmp_path):
    table = ResultTable(tmp_path / "results.parquet")
    config = FoldTraining(max_steps=20, eval_every=10, patience=1, batch_size=16)
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
    config = FoldTraining(max_steps=10, eval_every=5, patience=1, batch_size=16)
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
                             config=FoldTraining(max_steps=10, eval_every=5, batch_size=16),
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
                                     model_args={"heads": 2}, config=FoldTraining(
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
