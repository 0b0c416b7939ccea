"""Checks of meaning on the simulated cohort, and fine-tuning through the shared loop.

The simulated cohort plants ``score`` in SC only and ``sex`` in fMRI only. A linear probe
on the carrying modality's connectome features must beat chance, the other modality must
stay near chance, and shuffled labels must give chance. The effect sizes are raised above
the simulator's defaults (``STRONGER``) so that 100 subjects x 30 ROIs x 300 time points
show them reliably in a fast test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_models import make_model

import bsym.train.engine as engine
from bsym.data import CohortWriter, open_cohort
from bsym.data.dataset import WindowDataset
from bsym.data.preprocess import RobustScaler
from bsym.data.simulate import SimulationConfig, simulate_cohort
from bsym.evaluate.embeddings import feature_embeddings
from bsym.evaluate.finetune import FineTuneConfig, fine_tune
from bsym.evaluate.probe import ProbeConfig, linear_probe
from bsym.evaluate.results import ResultTable
from bsym.evaluate.splits import make_splits
from bsym.train.engine import TrainConfig

torch.set_num_threads(1)
STRONGER = SimulationConfig(score_sc=0.2, score_latent_sd=0.3, sex_frequency_hz=0.02)
PROBE = ProbeConfig(Cs=tuple(np.logspace(-4, 0, 5)), alphas=tuple(np.logspace(0, 5, 6)))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return simulate_cohort(tmp_path_factory.mktemp("sim") / "sim", n_subjects=100, n_rois=30,
                           n_timepoints=300, seed=0, config=STRONGER, progress=False)


@pytest.fixture(scope="module")
def features(cohort):
    return {kind: feature_embeddings(cohort, kind) for kind in ("fc", "sc")}


@pytest.fixture(scope="module")
def splits(cohort, tmp_path_factory):
    folder = tmp_path_factory.mktemp("splits")
    return {label: make_splits(cohort, folder / f"{label}.json", label=label, n_splits=5,
                               inner_splits=3, seed=0) for label in ("sex", "score")}


def _probe(features, cohort, splits, kind, label, **kwargs):
    frame = linear_probe(features[kind], cohort, splits[label], label, config=PROBE,
                         protocol="supervised", progress=False, **kwargs)
    metric = "auroc" if label == "sex" else "pearson_r"
    return float(frame[metric].mean())


@pytest.mark.slow
def test_score_is_read_from_sc_not_from_fc(cohort, features, splits):
    sc = _probe(features, cohort, splits, "sc", "score")
    fc = _probe(features, cohort, splits, "fc", "score")
    print(f"score: Pearson r from SC {sc:.3f}, from FC {fc:.3f}")
    assert sc > 0.45
    assert fc < 0.25 and sc - fc > 0.3  # cross-validated r of a null target is often < 0


@pytest.mark.slow
def test_sex_is_read_from_fc_not_from_sc(cohort, features, splits):
    fc = _probe(features, cohort, splits, "fc", "sex")
    sc = _probe(features, cohort, splits, "sc", "sex")
    print(f"sex: AUROC from FC {fc:.3f}, from SC {sc:.3f}")
    assert fc > 0.7
    assert abs(sc - 0.5) < 0.12 and fc - sc > 0.15


@pytest.mark.slow
def test_shuffled_labels_give_chance(cohort, features, splits):
    sex = [_probe(features, cohort, splits, "fc", "sex", shuffle_labels=k) for k in (1, 2)]
    score = [_probe(features, cohort, splits, "sc", "score", shuffle_labels=k) for k in (1, 2)]
    print(f"shuffled: AUROC {np.round(sex, 3)}, Pearson r {np.round(score, 3)}")
    assert abs(np.mean(sex) - 0.5) < 0.12
    assert abs(np.mean(score)) < 0.2


# -- fine-tuning ---------------------------------------------------------------------------
def write_offset_store(path, *, n_subjects=24, effect=0.6, seed=0):
    """Label ``group`` shifts the level of half of the ROIs; ``trait`` follows it loosely."""
    rng = np.random.default_rng(seed)
    shift = np.r_[np.ones(4), np.zeros(4)][:, None]
    with CohortWriter(path, source={"name": "offset"}, atlas="toy") as w:
        w.set_rois([f"r{i}" for i in range(8)], networks=["a", "b"] * 4)
        for s in range(n_subjects):
            g = s % 2
            trait = float(g + 0.5 * rng.standard_normal())
            for session in ("1", "2"):
                bold = rng.standard_normal((8, 60)) + effect * trait * shift
                w.add_scan(subject=f"s{s:02d}", session=session, tr=2.0,
                           bold=bold.astype(np.float32), group="yes" if g else "no",
                           trait=trait, dose=g)
    return open_cohort(path)


@pytest.fixture
def pretrained(tmp_path):
    cohort = write_offset_store(tmp_path / "offset")
    dataset = WindowDataset(cohort, 20)
    scaler = dataset.fit_scaler(RobustScaler())
    result = engine.train(make_model(), dataset,
                          TrainConfig(steps=4, batch_size=8, warmup_steps=0, progress=False,
                                      device="cpu"),
                          tmp_path / "run", extra={"scaler": scaler.state_dict()})
    return cohort, result.final_path


def test_finetune_trains_through_the_engine_and_tests_once(pretrained, tmp_path, monkeypatch):
    cohort, ckpt = pretrained
    splits = make_splits(cohort, tmp_path / "s.json", label="group", n_splits=3, inner_splits=3)
    calls = []
    real_train = engine.train

    def spy(model, train_dataset, config=None, *args, **kwargs):
        calls.append((set(train_dataset.table["subject"]), config.label, model.objective))
        return real_train(model, train_dataset, config, *args, **kwargs)

    monkeypatch.setattr(engine, "train", spy)
    config = FineTuneConfig(max_steps=60, eval_every=10, patience=2, lr=3e-3, batch_size=8,
                            warmup_steps=5, device="cpu")
    table = ResultTable(tmp_path / "r.parquet")
    frame = fine_tune(ckpt, cohort, splits, "group", config=config, results=table,
                      progress=False)
    assert len(calls) == 3
    for (trained, label, objective), fold in zip(calls, splits):
        val = set(fold.inner[0][1])
        assert label == "group" and objective == "supervised"
        assert trained == set(fold.train) - val       # never the validation or test subjects
        assert not trained & set(fold.test)
    print(frame[["fold", "accuracy", "auroc", "best_step", "stopped_early"]])
    assert (frame["protocol"] == "finetune").all() and (frame["n_test"] == 8).all()
    assert frame["auroc"].mean() > 0.8 and frame["accuracy"].mean() > 0.65  # chance: 0.5
    assert (frame["best_step"] <= 60).all()
    assert len(table.read()) == 3
    again = fine_tune(ckpt, cohort, splits, "group", config=config, results=table,
                      progress=False)
    assert len(calls) == 3 and again["auroc"].tolist() == frame["auroc"].tolist()  # cached


def test_finetune_regression_and_numeric_classes(pretrained, tmp_path):
    cohort, ckpt = pretrained
    config = FineTuneConfig(max_steps=40, eval_every=10, patience=2, lr=3e-3, batch_size=8,
                            warmup_steps=5, device="cpu")
    trait = make_splits(cohort, tmp_path / "t.json", label="trait", n_splits=3, inner_splits=2)
    frame = fine_tune(ckpt, cohort, trait, "trait", config=config, progress=False, folds=[0])
    assert frame["task_type"].iloc[0] == "regression" and np.isfinite(frame["mse"].iloc[0])
    dose = make_splits(cohort, tmp_path / "d.json", label="dose", n_splits=3, inner_splits=2)
    frame = fine_tune(ckpt, cohort, dose, "dose", config=config, progress=False, folds=[0])
    assert frame["task_type"].iloc[0] == "classification" and frame["auroc"].iloc[0] >= 0.5


def test_cli_finetune(pretrained, tmp_path, capsys):
    from bsym.cli import main

    cohort, ckpt = pretrained
    assert main(["finetune", "--checkpoint", str(ckpt), "--data", str(cohort.path),
                 "--task", "group", "--splits", str(tmp_path / "s.json"), "--n-folds", "3",
                 "--inner-folds", "2", "--fold", "0", "--max-steps", "20", "--eval-every", "10",
                 "--device", "cpu", "--results", str(tmp_path / "r.parquet"), "--no-tracking",
                 "--quiet"]) == 0
    assert "finetune toy-mae on group" in capsys.readouterr().out
    assert len(ResultTable(tmp_path / "r.parquet").read()) == 1
