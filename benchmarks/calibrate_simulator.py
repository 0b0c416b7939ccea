"""How predictable is each planted label of the simulated cohort?

Simulates the default cohort (200 subjects x 100 ROIs x 1200 time points, two
sessions), then scores a plain linear model on each modality's features with
5-fold cross-validation that keeps a subject's sessions in one fold:

- FC: Fisher-z FC upper triangle, one row per scan;
- SC: log(1 + streamline count) upper triangle, one row per subject;
- FC+SC: both, one row per scan (the subject's SC repeated).

Classification: StandardScaler + LogisticRegressionCV (inner CV over C), AUROC.
Regression: StandardScaler + RidgeCV, Pearson r. ``condition`` is within-subject:
"grouped" classifies scans as they are; "paired" first removes each subject's mean
FC (the FC difference post - pre). The targets: AUROC 0.70-0.85 and r 0.4-0.7 on
the carrying modality, chance elsewhere.

Usage::

    python benchmarks/calibrate_simulator.py [--subjects 200] [--set coupling=0.8 ...]

Writes ``results/benchmarks/calibration.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bsym.data.features import connectome_features
from bsym.data.simulate import SimulationConfig, simulate_cohort

#: (label, kind, modality) -> whether the modality carries the label.
TASKS = [
    ("age", "regression", "fc", True), ("age", "regression", "sc", True),
    ("age", "regression", "fc+sc", True),
    ("sex", "classification", "fc", True), ("sex", "classification", "sc", False),
    ("score", "regression", "sc", True), ("score", "regression", "fc", False),
    ("diagnosis", "classification", "fc", True), ("diagnosis", "classification", "sc", True),
    ("condition", "classification", "fc", True), ("condition-paired", "classification", "fc", True),
    ("condition", "classification", "sc", False),
]


def cross_validate(x, y, groups, kind, *, n_splits=5, seed=0):
    """Out-of-fold predictions of a linear model, folds grouped by subject."""
    if kind == "classification":
        folds = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
        model = make_pipeline(StandardScaler(), LogisticRegressionCV(
            Cs=np.logspace(-5, 0, 6), cv=3, scoring="roc_auc", l1_ratios=(0.0,),
            max_iter=2000, use_legacy_attributes=False))
    else:
        folds = GroupKFold(n_splits, shuffle=True, random_state=seed)
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(0, 6, 13)))
    predicted = np.zeros(len(y))
    for train, test in folds.split(x, y, groups):
        model.fit(x[train], y[train])
        if kind == "classification":
            predicted[test] = model.predict_proba(x[test])[:, 1]
        else:
            predicted[test] = model.predict(x[test])
    if kind == "classification":
        return float(roc_auc_score(y, predicted))
    return float(pearsonr(y, predicted)[0])


def _target(table, label):
    values = table[label.removesuffix("-paired")]
    if label == "sex":
        return (values == "M").to_numpy().astype(int)
    if label.startswith("condition"):
        return (values == "post").to_numpy().astype(int)
    return values.to_numpy().astype(float)


def _subject_centred(x, subjects):
    out = x.copy()
    for subject in np.unique(subjects):
        rows = subjects == subject
        out[rows] -= x[rows].mean(axis=0)
    return out


def calibrate(cohort, *, seed=0, labels=None):
    """Score every (label, modality) pair; returns a list of result dicts."""
    fc, scans = connectome_features(cohort, "fc")
    sc, subjects = connectome_features(cohort, "sc")
    sc_by_subject = dict(zip(subjects["subject"], sc))
    sc_per_scan = np.stack([sc_by_subject[s] for s in scans["subject"]])
    data = {"fc": (fc, scans), "sc": (sc, subjects),
            "fc+sc": (np.hstack([fc, sc_per_scan]), scans)}
    results = []
    for label, kind, modality, carried in TASKS:
        if labels and label.removesuffix("-paired") not in labels:
            continue
        x, table = data[modality]
        if label.startswith("condition") and modality == "sc":
            x, table = sc_per_scan, scans
        if label == "condition-paired":
            x = _subject_centred(x, table["subject"].to_numpy())
        start = time.perf_counter()
        score = cross_validate(x, _target(table, label), table["subject"].to_numpy(), kind,
                               seed=seed)
        results.append({"label": label, "modality": modality, "carried": carried,
                        "metric": "auroc" if kind == "classification" else "pearson_r",
                        "score": round(score, 3), "n_rows": len(table),
                        "seconds": round(time.perf_counter() - start, 1)})
        print(f"{label:<17}{modality:<7}{'yes' if carried else 'no':<9}"
              f"{results[-1]['metric']:<10}{score:6.3f}", flush=True)
    return results


def _parse_overrides(pairs):
    fields = {f.name: f for f in dataclasses.fields(SimulationConfig)}
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown SimulationConfig field {key!r}")
        overrides[key] = json.loads(value)
        if isinstance(overrides[key], list):
            overrides[key] = tuple(overrides[key])
    return overrides


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--rois", type=int, default=100)
    parser.add_argument("--timepoints", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON",
                        help="override SimulationConfig fields")
    parser.add_argument("--labels", nargs="*", help="score only these labels")
    parser.add_argument("--out", default="results/benchmarks/calibration.json")
    args = parser.parse_args(argv)
    config = SimulationConfig(**_parse_overrides(args.set))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cohort = simulate_cohort(Path(tmp) / "sim", n_subjects=args.subjects, n_rois=args.rois,
                                 n_timepoints=args.timepoints, seed=args.seed, config=config,
                                 progress=False)
        simulated = time.perf_counter() - start
        print(f"simulated {cohort} in {simulated:.1f} s\n")
        print(f"{'label':<17}{'from':<7}{'carried':<9}{'metric':<10}{'score':>6}")
        results = calibrate(cohort, seed=args.seed, labels=args.labels)
    report = {
        "cohort": {"n_subjects": args.subjects, "n_rois": args.rois,
                   "n_timepoints": args.timepoints, "seed": args.seed, "sessions": 2},
        "config": config.to_dict(),
        "cv": "5-fold, sessions of a subject in one fold; StandardScaler + "
              "LogisticRegressionCV (AUROC) / RidgeCV (Pearson r)",
        "results": results,
        "simulate_seconds": round(simulated, 1),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
