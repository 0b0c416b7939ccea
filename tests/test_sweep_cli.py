"""`bsym sweep`: one study per outer fold on its inner folds, feeding `bsym supervised`."""

from __future__ import annotations

import json

import pytest
import torch

from bsym.cli import main
from bsym.evaluate.results import ResultTable
from bsym.evaluate.splits import make_splits

torch.set_num_threads(1)
SPACE = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
         "model.dropout": {"type": "float", "low": 0.0, "high": 0.5}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from bsym.data.simulate import simulate_cohort

    folder = tmp_path_factory.mktemp("sweep")
    cohort = simulate_cohort(folder / "sim", n_subjects=40, n_rois=12, n_timepoints=160,
                             n_networks=3, seed=0, progress=False)
    splits = make_splits(cohort, folder / "score.json", label="score", n_splits=3,
                         inner_splits=2, seed=0)
    return cohort, splits


def _args(cohort, splits, tmp_path, *extra):
    return ["sweep", "--model", "transformer", "--model-arg", "heads=2", "--data",
            str(cohort.path), "--task", "score", "--splits", str(splits.path),
            "--window", "60", "--target-tr", "0.8", "--max-steps", "4", "--eval-every", "2",
            "--batch-size", "8", "--space", json.dumps(SPACE), "--trials", "3",
            "--startup-trials", "2", "--pruner-startup-trials", "2",
            "--storage", str(tmp_path / "sweep.journal"), "--out", str(tmp_path / "best.json"),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--quiet", *extra]


def test_sweep_per_fold_resumes_and_feeds_supervised(setup, tmp_path, capsys):
    cohort, splits = setup
    assert main(_args(cohort, splits, tmp_path, "--fold", "0,1")) == 0
    best = json.loads((tmp_path / "best.json").read_text())
    assert sorted(best["folds"]) == ["0", "1"] and best["split_hash"] == splits.sha256
    for fold in best["folds"].values():
        assert 1e-4 <= fold["params"]["lr"] <= 1e-2
        assert 0.0 <= fold["params"]["model.dropout"] <= 0.5
        assert fold["n_complete"] + fold["n_pruned"] == 3
    first = (tmp_path / "sweep.journal").read_bytes()

    # a second run finds every study finished: no new trial, the same choice
    assert main(_args(cohort, splits, tmp_path, "--fold", "0,1")) == 0
    again = json.loads((tmp_path / "best.json").read_text())
    assert again["folds"] == best["folds"]
    import optuna

    from bsym.sweep import journal_storage
    storage = journal_storage(str(tmp_path / "sweep.journal"))
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == [f"sim-transformer-score-seed0-fold{k}" for k in (0, 1)]
    assert all(len(optuna.load_study(study_name=n, storage=storage).trials) == 3 for n in names)
    assert len((tmp_path / "sweep.journal").read_bytes()) >= len(first)

    # trials are MLflow runs nested under one run per study
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("bsym")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = {r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags}
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in parents]
    assert len(parents) == 2 and len(trials) == 6

    results = tmp_path / "results.parquet"
    assert main(["supervised", "--model", "transformer", "--model-arg", "heads=2", "--data",
                 str(cohort.path), "--task", "score", "--splits", str(splits.path),
                 "--fold", "0,1", "--params", str(tmp_path / "best.json"), "--window", "60",
                 "--target-tr", "0.8", "--max-steps", "4", "--eval-every", "2",
                 "--results", str(results), "--no-tracking", "--quiet"]) == 0
    assert len(ResultTable(results).read()) == 2


def test_bad_space_names_the_parameter(setup, tmp_path, capsys):
    cohort, splits = setup
    args = _args(cohort, splits, tmp_path)
    args[args.index("--space") + 1] = json.dumps({"dropout": {"type": "float", "low": 0,
                                                              "high": 1}})
    assert main(args) == 2
    assert "dropout" in capsys.readouterr().err
    args[args.index("--space") + 1] = json.dumps({"lr": {"type": "float", "low": 1, "high": 0}})
    assert main(args) == 2
    assert "lr" in capsys.readouterr().err
    assert not (tmp_path / "best.json").exists()
