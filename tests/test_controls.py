"""Controls beside every score: shuffled labels, random initialisation, the verdict table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bsym.evaluate.embeddings import feature_embeddings
from bsym.evaluate.probe import ProbeConfig, _permuted_within, linear_probe
from bsym.evaluate.results import ResultTable, primary_rows
from bsym.evaluate.splits import make_splits
from bsym.stats.controls import permutation_pvalue, real_rows, verdict_table
from bsym.testing import write_toy_store

FAST = ProbeConfig(Cs=(0.01, 1.0), alphas=(1.0, 100.0))


def test_labels_are_permuted_among_training_subjects_only():
    units = np.repeat([f"s{i}" for i in range(10)], 2)           # two scans per subject
    y = np.repeat(np.arange(10.0), 2)
    train = np.arange(14)                                          # subjects s0..s6
    out = _permuted_within(y, units, train, replicate=0, fold_index=0)
    np.testing.assert_array_equal(out[14:], y[14:])                # test labels untouched
    assert sorted(out[train]) == sorted(y[train])                  # a permutation of train
    assert (out[0::2] == out[1::2]).all()                          # a subject keeps one label
    assert not np.array_equal(out[train], y[train])
    again = _permuted_within(y, units, train, replicate=0, fold_index=0)
    other = _permuted_within(y, units, train, replicate=1, fold_index=0)
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, other)


def test_permutation_pvalue_counts_null_scores_at_least_as_good():
    real = pd.DataFrame({"auroc": [0.8, 0.9]})                    # mean 0.85
    null = pd.DataFrame({"replicate": [0, 0, 1, 1, 2, 2, 3, 3],
                         "auroc": [0.5, 0.5, 0.9, 0.9, 0.4, 0.6, 0.85, 0.85]})
    p, observed, scores = permutation_pvalue(real, null, "auroc")
    assert observed == pytest.approx(0.85)
    np.testing.assert_allclose(scores, [0.5, 0.9, 0.5, 0.85])
    assert p == pytest.approx((1 + 2) / (1 + 4))                  # 0.9 and the tie 0.85
    errors = pd.DataFrame({"mse": [0.5]})
    null_mse = pd.DataFrame({"replicate": [0, 1, 2], "mse": [0.4, 0.9, 1.0]})
    assert permutation_pvalue(errors, null_mse, "mse")[0] == pytest.approx(2 / 4)


def test_probe_writes_shuffled_label_rows_beside_the_real_ones(tmp_path):
    store = write_toy_store(tmp_path / "toy", n_subjects=20, sessions=2, n_timepoints=30)
    splits = make_splits(store, tmp_path / "sex.json", label="sex", n_splits=4, inner_splits=2)
    table = ResultTable(tmp_path / "r.parquet")
    frame = linear_probe(feature_embeddings(store, "fc"), store, splits, "sex", config=FAST,
                         results=table, permutations=3, protocol="supervised", progress=False)
    assert frame.groupby("control").size().to_dict() == {"none": 4, "shuffled_labels": 12}
    null = frame[frame["control"] == "shuffled_labels"]
    assert sorted(set(null["replicate"])) == [0, 1, 2]
    assert (frame["checkpoint"] == "final").all()
    stored = table.read()
    assert len(stored) == 16 and len(primary_rows(stored)) == 4
    # cached: nothing is recomputed, and the same rows come back
    again = linear_probe(feature_embeddings(store, "fc"), store, splits, "sex", config=FAST,
                         results=table, permutations=3, protocol="supervised", progress=False)
    assert len(again) == 16
    np.testing.assert_allclose(np.sort(again["auroc"]), np.sort(frame["auroc"]))


def _rows(model, view, control, values, *, checkpoint="final", replicate=0, metric="auroc"):
    return [dict(model=model, view=view, dataset="sim", task="sex", protocol="linear_probe",
                 control=control, checkpoint=checkpoint, replicate=replicate, seed=0, fold=f,
                 n_train=40, n_test=10, **{metric: v}) for f, v in enumerate(values)]


def test_verdict_table_sets_each_score_beside_its_controls_and_health():
    rows = _rows("jepa", "default", "none", [0.52, 0.48, 0.50])
    rows += _rows("jepa", "default", "random_init", [0.51, 0.49, 0.50], checkpoint="step0")
    rows += _rows("bs", "fusion", "none", [0.80, 0.84, 0.82])
    rows += _rows("bs", "fusion", "random_init", [0.60, 0.62, 0.61], checkpoint="step0")
    rows += _rows("bs", "fusion", "none", [0.70, 0.71, 0.72], checkpoint="step10")
    for r in range(4):
        rows += _rows("bs", "fusion", "shuffled_labels", [0.5 + 0.01 * r] * 3, replicate=r)
    table = pd.DataFrame(rows)
    health = pd.DataFrame({"model": ["jepa", "bs"], "view": ["default", "fusion"],
                           "learned": [False, True], "reason": ["collapsed", ""]})
    verdict = verdict_table(table, {"sex": "auroc"}, health=health).set_index("model")
    assert verdict.loc["bs", "mean"] == pytest.approx(0.82)         # the final checkpoint only
    assert verdict.loc["bs", "random_init"] == pytest.approx(0.61)
    assert verdict.loc["bs", "permutations"] == 4
    assert verdict.loc["bs", "perm_p"] == pytest.approx(1 / 5)
    assert verdict.loc["bs", "ci_low"] < 0.82 < verdict.loc["bs", "ci_high"]
    assert bool(verdict.loc["bs", "learned"]) and verdict.loc["bs", "health"] == "learned"
    assert verdict.loc["jepa", "learned"] is False or not verdict.loc["jepa", "learned"]
    assert verdict.loc["jepa", "health"] == "did not learn: collapsed"
    assert np.isnan(verdict.loc["jepa", "perm_p"])
    assert len(real_rows(table)) == 6


def test_report_opens_with_the_verdict_and_marks_a_model_that_did_not_learn(tmp_path):
    from bsym.report import build_report

    rows = _rows("jepa", "default", "none", [0.52, 0.48, 0.50])
    rows += _rows("bs", "fusion", "none", [0.80, 0.84, 0.82])
    for r in range(3):
        rows += _rows("bs", "fusion", "shuffled_labels", [0.5 + 0.01 * r] * 3, replicate=r)
    rows += _rows("bs", "fusion", "random_init", [0.6] * 3, checkpoint="step0")
    for model, view in (("jepa", "default"), ("bs", "fusion")):
        for point, step, flops, shift in (("step0", 0, 0.0, -0.2), ("step5", 5, 5e6, -0.1)):
            rows += [{**r, "checkpoint": point, "control": "random_init" if step == 0 else
                      "none", "auroc": r["auroc"] + shift, "pretrain_step": step,
                      "pretrain_flops": flops, "pretrain_timepoints": step * 64}
                     for r in _rows(model, view, "none", [0.8, 0.82, 0.84])]
    table = pd.DataFrame(rows)
    table.loc[table["checkpoint"] == "final", ["pretrain_step", "pretrain_flops",
                                               "pretrain_timepoints"]] = [10, 1e7, 640]
    health = pd.DataFrame({"model": ["jepa", "bs"], "view": ["default", "fusion"],
                           "learned": [False, True], "reason": ["collapsed", ""]})
    done = build_report(table, tmp_path / "out", health=health)
    html = done["html"].read_text()
    sections = [m for m in html.split("<h2>")[1:]]
    assert sections[0].startswith("Verdict") and sections[1].startswith("Training health")
    verdict = sections[0]
    assert "did not learn: collapsed" in verdict and "0.25 (3)" in verdict  # perm. p, 3 perms
    assert "jepa [did not learn]" in html                                  # leaderboard label
    assert "Score against pretraining compute" in html
    names = {p.name for p in done["figures"]}
    assert {"verdict_sim.png", "compute_sim.png"} <= names


def test_verdict_intervals_stay_within_the_metrics_range():
    import pandas as pd

    from bsym.stats.controls import verdict_table

    rows = [{"dataset": "d", "task": "sex", "protocol": "linear_probe", "model": "m",
             "view": "default", "control": "none", "checkpoint": "final", "seed": 0,
             "fold": f, "replicate": 0, "auroc": a} for f, a in enumerate([0.2, 1.0, 0.6])]
    out = verdict_table(pd.DataFrame(rows), {"sex": "auroc"}).iloc[0]
    assert out["ci_low"] == 0.0 and out["ci_high"] == 1.0
    assert abs(out["mean"] - 0.6) < 1e-12
