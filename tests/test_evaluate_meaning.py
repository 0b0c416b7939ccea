"""Checks of meaning on the simulated cohort, and fine-tuning through the shared loop.

The simulated cohort plants ``score`` in SC only and ``sex`` in fMRI only. On the cohort a
user gets by default (the session fixture ``default_cohort``: 200 subjects x 100 ROIs x
1200 time points, two sessions, three sites) at the simulator's default effect sizes
(``SimulationConfig()``), the linear probe on connectome features (one row per subject,
5 outer folds, C or alpha chosen on 3 inner folds) must read each label from the
modality that carries it, stay near chance on the other modality, and give chance on
shuffled labels. The thresholds are commented with the values measured on that cohort
(seed 0) and, in brackets, on the default cohort of seeds 1 and 2.

The fine-tuning tests use a small toy store whose label shifts the signal level.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_models import pretrain_toy

import bsym.train.engine as engine
from bsym.data import CohortWriter, open_cohort
from bsym.evaluate.embeddings import feature_embeddings
from bsym.evaluate.finetune import FineTuneConfig, fine_tune
from bsym.evaluate.probe import ProbeConfig, linear_probe
from bsym.evaluate.results import ResultTable
from bsym.evaluate.splits import make_splits

torch.set_num_threads(1)
pytestmark = pytest.mark.usefixtures("one_blas_thread")
PROBE = ProbeConfig(Cs=tuple(np.logspace(-4, 0, 5)), alphas=tuple(np.logspace(0, 5, 6)))
#: (features, label) -> shuffled-label replicates of the probe: the carrying modality only.
PROBES = {("sc", "score"): 2, ("fc", "score"): 0, ("fc", "sex"): 2, ("sc", "sex"): 0}


@pytest.fixture(scope="module")
def probes(default_cohort, tmp_path_factory):
    """Every probe of the tests below, run once: ``(features, label) -> rows``."""
    cohort = default_cohort
    features = {kind: feature_embeddings(cohort, kind) for kind in ("fc", "sc")}
    folder = tmp_path_factory.mktemp("splits")
    splits = {label: make_splits(cohort, folder / f"{label}.json", label=label, n_splits=5,
                                 inner_splits=3, seed=0) for label in ("sex", "score")}
    return {(kind, label): linear_probe(features[kind], cohort, splits[label], label,
                                        config=PROBE, protocol="supervised", progress=False,
                                        permutations=permutations)
            for (kind, label), permutations in PROBES.items()}


def _mean(probes, kind, label, control="none"):
    frame = probes[kind, label]
    metric = "auroc" if label == "sex" else "pearson_r"
    return float(frame.loc[frame["control"] == control, metric].mean())


@pytest.mark.slow
def test_score_is_read_from_sc_not_from_fc(probes):
    sc, fc = _mean(probes, "sc", "score"), _mean(probes, "fc", "score")
    print(f"score: Pearson r from SC {sc:.3f}, from FC {fc:.3f}")
    assert sc > 0.4                 # measured 0.601 (0.616, 0.657)
    assert fc < 0.25 and sc - fc > 0.3  # FC measured -0.006 (-0.002, 0.117)


@pytest.mark.slow
def test_sex_is_read_from_fc_not_from_sc(probes):
    fc, sc = _mean(probes, "fc", "sex"), _mean(probes, "sc", "sex")
    print(f"sex: AUROC from FC {fc:.3f}, from SC {sc:.3f}")
    assert fc > 0.7                 # measured 0.891 (0.756, 0.847)
    assert abs(sc - 0.5) < 0.12 and fc - sc > 0.2  # SC measured 0.454 (0.494, 0.497)


@pytest.mark.slow
def test_shuffled_labels_give_chance(probes):
    frame = probes["fc", "sex"]
    shuffled = frame[frame["control"] == "shuffled_labels"]
    real = frame[frame["control"] == "none"]
    assert len(real) == 5 and len(shuffled) == 10 and set(shuffled["replicate"]) == {0, 1}
    auroc = float(shuffled["auroc"].mean())
    null_r = _mean(probes, "sc", "score", "shuffled_labels")
    print(f"shuffled: AUROC {auroc:.3f}, Pearson r {null_r:.3f}")
    assert abs(auroc - 0.5) < 0.12      # measured 0.459 (0.500, 0.478)
    assert abs(null_r) < 0.2            # measured -0.078 (0.022, -0.137)
    assert real["auroc"].mean() > auroc + 0.2              # 0.891 vs 0.459
    assert _mean(probes, "sc", "score") > null_r + 0.3     # 0.601 vs -0.078


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
    return cohort, pretrain_toy(cohort, 20, tmp_path / "run")


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
