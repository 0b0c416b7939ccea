"""Linear probe on frozen embeddings, one split fold at a time.

StandardScaler + LogisticRegression (classification) or Ridge (regression) in one
scikit-learn pipeline, fitted on the outer training fold only; the regularisation
strength is chosen over the split file's *inner* folds (subject-grouped, inside the
training fold) by :func:`choose_param`: a grid search, scored by AUROC or negative MSE,
the best mean over inner folds refitted on the whole training fold (as
:class:`~sklearn.model_selection.GridSearchCV` would; logistic fits are warm-started
along the grid and ridge fits share one SVD per inner fold, so the many refits of the
shuffled-label control stay cheap). Features wider than the training rows are fitted in
the rows' span (:class:`~bsym.evaluate.rowspace.RowSpace`), which changes no prediction. The test fold is
used once, for the scores. Regression targets are z-scored with the training fold's
mean and SD.

Metrics
-------
classification
    ``accuracy``, ``f1`` (the second sorted class as positive for binary labels, macro
    otherwise), ``balanced_accuracy``, ``auroc`` (macro one-vs-rest for > 2 classes; NaN
    when the test fold lacks a class).
regression
    ``mse`` on the z-scored target, ``pearson_r``, ``mae`` (label units), ``r2``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from bsym.evaluate import EvaluationError
from bsym.evaluate.loop import run_units
from bsym.evaluate.results import config_hash, log_computed, provenance
from bsym.evaluate.seeding import SHUFFLED_LABELS, random_stream
from bsym.evaluate.splits import check_not_pretrained_on, infer_task

CLASSIFICATION_METRICS = ("accuracy", "f1", "balanced_accuracy", "auroc")
REGRESSION_METRICS = ("mse", "pearson_r", "mae", "r2")
LEVELS = ("subject", "scan")


def default_cs():
    """The inverse penalties a logistic probe tries: 8 from 1e-4 to 1e3 (log-spaced)."""
    return tuple(float(c) for c in np.logspace(-4, 3, 8))


def default_alphas():
    """The ridge penalties a probe tries: 8 from 1e-2 to 1e5 (log-spaced)."""
    return tuple(float(a) for a in np.logspace(-2, 5, 8))


@dataclass
class ProbeConfig:
    """Settings of the linear probe.

    Parameters
    ----------
    Cs : tuple of float
        Inverse regularisation strengths tried for LogisticRegression.
    alphas : tuple of float
        Ridge penalties tried.
    max_iter : int
        LogisticRegression iterations.
    level : {"subject", "scan"}
        Probe one row per subject (mean over windows and sessions), or one row per scan
        (for labels that vary within subjects, e.g. condition).
    """

    Cs: tuple = field(default_factory=default_cs)
    alphas: tuple = field(default_factory=default_alphas)
    max_iter: int = 5000
    level: str = "subject"

    def __post_init__(self):
        if self.level not in LEVELS:
            raise EvaluationError(f"level must be one of {LEVELS}, received {self.level!r}")
        self.Cs = tuple(float(c) for c in self.Cs)
        self.alphas = tuple(float(a) for a in self.alphas)
        if not self.Cs or not self.alphas or min(self.Cs + self.alphas) <= 0:
            raise EvaluationError("Cs and alphas must be non-empty and positive")

    def to_dict(self) -> dict:
        return asdict(self)


# -- one fold ------------------------------------------------------------------------------
def _classifier(config, n_classes, C=1.0, warm_start=False):
    """Binary labels: :class:`~bsym.evaluate.rowspace.BinaryLogistic` (Newton); more
    classes: scikit-learn's multinomial logistic regression. Same objective."""
    from sklearn.linear_model import LogisticRegression

    from bsym.evaluate.rowspace import BinaryLogistic

    if n_classes == 2:
        return BinaryLogistic(C=C, warm_start=warm_start)
    return LogisticRegression(C=C, max_iter=config.max_iter, warm_start=warm_start)


def _pipeline(task, config, param, n_classes=None):
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from bsym.evaluate.rowspace import RowSpace

    model = _classifier(config, n_classes, C=param) if task == "classification" \
        else Ridge(alpha=param)
    return Pipeline([("scale", StandardScaler()), ("rows", RowSpace()), ("model", model)])


def binary_auroc(y, score) -> float:
    """Area under the ROC curve of a 0/1 label (the Mann-Whitney statistic, ties counted
    half, as :func:`sklearn.metrics.roc_auc_score`); NaN when one class is absent."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _inner_auroc(y, proba, n_classes):
    from sklearn.metrics import roc_auc_score

    if n_classes == 2:
        return binary_auroc(y == 1, proba[:, 1])
    try:
        return float(roc_auc_score(y, proba, multi_class="ovr", average="macro",
                                   labels=list(range(n_classes))))
    except ValueError:  # a validation fold without some class
        return float("nan")


def _classifier_scores(z_fit, y_fit, z_val, y_val, config, n_classes):
    """Inner AUROC of every C, fitted in ascending order from the previous solution."""
    model = _classifier(config, n_classes, warm_start=True)
    scores = {}
    for c in sorted(config.Cs):
        model.set_params(C=c)
        try:
            model.fit(z_fit, y_fit)
        except ValueError:
            scores[c] = float("nan")
            continue
        proba = np.zeros((len(z_val), n_classes))
        proba[:, model.classes_] = model.predict_proba(z_val)
        scores[c] = _inner_auroc(y_val, proba, n_classes)
    return [scores[c] for c in config.Cs]


def _ridge_scores(z_fit, y_fit, z_val, y_val, alphas):
    """Inner negative MSE of every ridge penalty from one SVD (centred features, so the
    intercept is the mean target, as in :class:`~sklearn.linear_model.Ridge`)."""
    u, singular, vt = np.linalg.svd(z_fit, full_matrices=False)
    centred = y_fit - y_fit.mean()
    projected = u.T @ centred
    out = []
    for alpha in alphas:
        weights = vt.T @ (singular / (singular ** 2 + alpha) * projected)
        pred = y_fit.mean() + z_val @ weights
        out.append(-float(np.mean((y_val - pred) ** 2)))
    return out


def choose_param(x_train, y_train, inner, *, task, config, n_classes=None):
    """The regularisation with the best mean inner-fold score, and every score.

    Each inner fold standardises on its fit rows; classification is scored by AUROC
    (one-vs-rest macro for more than two classes), regression by negative MSE. Ties go to
    the first value of the grid; a fold that cannot be scored counts as missing.

    Returns
    -------
    best : float
        C (classification) or alpha (regression).
    scores : ndarray, shape (n_inner, n_grid)
    """
    grid = config.Cs if task == "classification" else config.alphas
    scores = np.full((len(inner), len(grid)), np.nan)
    for f, (fit_rows, val_rows) in enumerate(inner):
        prep = _pipeline(task, config, grid[0], n_classes)[:-1].fit(x_train[fit_rows])
        z_fit, z_val = prep.transform(x_train[fit_rows]), prep.transform(x_train[val_rows])
        if task == "classification":
            scores[f] = _classifier_scores(z_fit, y_train[fit_rows], z_val, y_train[val_rows],
                                           config, n_classes)
        else:
            scores[f] = _ridge_scores(z_fit, y_train[fit_rows], z_val, y_train[val_rows],
                                      grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(scores, axis=0)
    if np.isnan(mean).all():
        raise EvaluationError("no inner fold could be scored; expected every class in the "
                              "inner folds' fit and validation parts")
    return float(grid[int(np.nanargmax(mean))]), scores


def classification_scores(y_true, proba, n_classes) -> dict:
    """Accuracy, F1, balanced accuracy and AUROC from class probabilities.

    Parameters
    ----------
    y_true : array of int
        Class indices in ``range(n_classes)``.
    proba : array, shape (n, n_classes)
    n_classes : int
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

    y_true = np.asarray(y_true)
    y_pred = np.asarray(proba).argmax(axis=1)
    labels = list(range(n_classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {"accuracy": float(accuracy_score(y_true, y_pred)),
               "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred))}
        if n_classes == 2:
            out["f1"] = float(f1_score(y_true, y_pred, pos_label=1, zero_division=0.0))
        else:
            out["f1"] = float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                       zero_division=0.0))
    present = np.unique(y_true)
    if len(present) < n_classes:
        out["auroc"] = float("nan")
    elif n_classes == 2:
        out["auroc"] = float(roc_auc_score(y_true, proba[:, 1]))
    else:
        out["auroc"] = float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro",
                                           labels=labels))
    return out


def regression_scores(y_true, y_pred, mean, sd) -> dict:
    """MSE on the target z-scored with the training ``mean`` and ``sd``; Pearson r, MAE
    (label units) and R^2."""
    from scipy.stats import pearsonr
    from sklearn.metrics import r2_score

    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    z_true, z_pred = (y_true - mean) / sd, (y_pred - mean) / sd
    if np.std(y_pred) > 0 and np.std(y_true) > 0 and len(y_true) > 1:
        r = float(pearsonr(y_true, y_pred)[0])
    else:
        r = float("nan")
    return {"mse": float(np.mean((z_true - z_pred) ** 2)), "pearson_r": r,
            "mae": float(np.mean(np.abs(y_true - y_pred))),
            "r2": float(r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan")}


def probe_fold(x, y, train, test, inner, *, task, config=None, n_classes=None) -> dict:
    """Fit on ``train`` rows (hyper-parameters on the inner folds), score on ``test``.

    Parameters
    ----------
    x : array, shape (n, d)
    y : array, shape (n,)
        Class indices (classification) or values (regression).
    train, test : array of int
        Row indices.
    inner : list of (array, array)
        Inner (fit, validation) folds as positions *within* ``train``.
    task : {"classification", "regression"}
    config : ProbeConfig, optional
    n_classes : int, optional
        Number of classes of the whole label (default: from ``y``).

    Returns
    -------
    dict
        Metric values, ``best_param`` (C or alpha), ``prediction`` (test rows), and for
        classification ``proba``.
    """
    import sklearn

    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        return _probe_fold(x, y, train, test, inner, task=task, config=config,
                           n_classes=n_classes)


def _probe_fold(x, y, train, test, inner, *, task, config, n_classes):
    config = config or ProbeConfig()
    x, y, train, test = _checked_fold(x, y, train, test, inner)
    if task == "classification":
        n_classes = int(n_classes or (int(y.max()) + 1))
        return _classify(x[train], y[train], x[test], y[test], inner, config, n_classes)
    return _regress(x[train], y[train], x[test], y[test], inner, config)


def _checked_fold(x, y, train, test, inner):
    """``x`` (float64), ``y``, ``train`` and ``test`` as arrays, after checking that the
    features are finite and the folds disjoint, the inner ones inside ``train``."""
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise EvaluationError("the features hold NaN or Inf; expected finite embeddings")
    train, test = np.asarray(train), np.asarray(test)
    if len(np.intersect1d(train, test)):
        raise EvaluationError("train and test rows overlap; expected disjoint folds")
    for fit_rows, val_rows in inner:
        if np.max(fit_rows, initial=-1) >= len(train) or np.max(val_rows, initial=-1) >= len(train):
            raise EvaluationError("inner folds must index the training rows only")
    return x, np.asarray(y), train, test


def _classify(x_train, y_train, x_test, y_test, inner, config, n_classes):
    present = np.unique(y_train)
    if len(present) < n_classes:
        raise EvaluationError(f"the training fold holds {len(present)} of the {n_classes} "
                              "classes; expected every class in every training fold "
                              "(stratify the split on this label)")
    y_train = y_train.astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        best, _ = choose_param(x_train, y_train, inner, task="classification", config=config,
                               n_classes=n_classes)
        model = _pipeline("classification", config, best, n_classes).fit(x_train, y_train)
    proba = model.predict_proba(x_test)
    out = classification_scores(y_test.astype(int), proba, n_classes)
    out.update(best_param=best, prediction=proba.argmax(axis=1), proba=proba)
    return out


def _regress(x_train, y_train, x_test, y_test, inner, config):
    y_train = y_train.astype(float)
    mean, sd = float(y_train.mean()), float(y_train.std())
    if sd == 0:
        raise EvaluationError("the regression target is constant in the training fold")
    z_train = (y_train - mean) / sd
    best, _ = choose_param(x_train, z_train, inner, task="regression", config=config)
    model = _pipeline("regression", config, best).fit(x_train, z_train)
    pred = model.predict(x_test) * sd + mean
    out = regression_scores(y_test.astype(float), pred, mean, sd)
    out.update(best_param=best, prediction=pred)
    return out


# -- the probe over a split file -----------------------------------------------------------
def encode_labels(values, task):
    """``(y, classes)``: class indices and sorted class names, or floats and None."""
    values = pd.Series(values)
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(values):
            raise EvaluationError(f"a regression target must be numeric, received values like "
                                  f"{values.iloc[0]!r}")
        return values.astype(float).to_numpy(), None
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        classes = sorted(values.unique().tolist())
        lookup = {c: i for i, c in enumerate(classes)}
        return values.map(lookup).to_numpy(dtype=int), [str(c) for c in classes]
    classes = sorted(values.astype(str).unique().tolist())
    lookup = {c: i for i, c in enumerate(classes)}
    return values.astype(str).map(lookup).to_numpy(dtype=int), classes


def probe_data(embeddings, cohort, label, subjects, *, view=None, level="subject"):
    """Rows to probe: ``(x, values, units)`` where ``units`` maps each row to its subject.

    Raises
    ------
    EvaluationError
        The label varies within subjects at ``level="subject"``.
    """
    table = cohort.subjects
    if level == "subject":
        x, subjects = embeddings.subject_features(view, subjects)
        per = table[table["subject"].isin(set(subjects))].groupby("subject")[label]
        varying = per.nunique()
        if (varying > 1).any():
            raise EvaluationError(f"label {label!r} varies within subject "
                                  f"{varying[varying > 1].index[0]} (e.g. a condition); expected "
                                  "one value per subject at level='subject': use level='scan'")
        values = per.first().reindex(subjects)
        return x, values.reset_index(drop=True), np.asarray(subjects)
    x_scan, scans = embeddings.scan_features(view)
    keep = scans["subject"].isin(set(subjects)).to_numpy()
    scans = scans[keep].reset_index(drop=True)
    labels = table.set_index("scan").loc[scans["scan"], label].reset_index(drop=True)
    return np.asarray(x_scan)[keep], labels, scans["subject"].to_numpy()


def fold_rows(units, fold):
    """Row indices of a fold's train and test subjects, and the inner folds as positions
    within the training rows."""
    position = pd.Series(np.arange(len(units)))
    unit_series = pd.Series(units)
    train_set, test_set = set(fold.train), set(fold.test)
    train = position[unit_series.isin(train_set)].to_numpy()
    test = position[unit_series.isin(test_set)].to_numpy()
    missing = sorted((train_set | test_set) - set(units))
    if missing:
        raise EvaluationError(f"fold {fold.name}: no embeddings for subject(s) "
                              f"{', '.join(missing[:5])}; expected embeddings of every subject "
                              "of the split")
    train_units = unit_series.iloc[train].reset_index(drop=True)
    inner = []
    for fit_subjects, val_subjects in fold.inner:
        if not set(fit_subjects) | set(val_subjects) <= train_set:
            raise EvaluationError(f"fold {fold.name}: inner folds reach outside the training "
                                  "fold; the split file is damaged")
        inner.append((np.flatnonzero(train_units.isin(set(fit_subjects)).to_numpy()),
                      np.flatnonzero(train_units.isin(set(val_subjects)).to_numpy())))
    return train, test, inner


def linear_probe(embeddings, cohort, splits, label, *, view=None, task=None, config=None,
                 folds=None, model=None, dataset=None, protocol="linear_probe", results=None,
                 tracker=None, force=False, permutations=0, allow_pretrained_subjects=False,
                 progress=True) -> pd.DataFrame:
    """Linear probe of ``label`` on every fold of a split file, with its controls.

    Rows name their ``control``: ``none`` for a real score; ``random_init`` when the
    embeddings come from a run's initial weights (its step-0 snapshot). Embeddings of
    an earlier snapshot are scored as ``checkpoint="step<N>"`` (the score-against-compute
    curve). With ``permutations``, the ``shuffled_labels`` control follows: the probe is
    refitted (inner-CV included) on labels permuted among each outer training fold's
    subjects and scored on the true test labels, ``permutations`` times
    (``replicate`` 0, 1, ...); :func:`bsym.stats.controls.permutation_pvalues` turns
    those rows into a permutation p-value per model and task.

    Parameters
    ----------
    embeddings : EmbeddingSet
    cohort : Cohort
        The store the embeddings and the split were made from (checked by manifest hash).
    splits : Splits
    label : str
        Label column of the subjects table.
    view : str, optional
        Embedding view (multi-view models).
    task : {"classification", "regression"}, optional
        Default: inferred from the label.
    config : ProbeConfig, optional
    folds : sequence of int, optional
        Fold indices to run (default all).
    model, dataset : str, optional
        Names in the result rows (default: the embeddings' model, the store's folder name).
    protocol : str
        ``linear_probe`` (frozen encoder) or ``supervised`` (e.g. connectome features).
    results : ResultTable, optional
        Rows are appended after each pass over the folds (the real labels, then each
        permutation); folds already there (same data, split and config) are read back
        instead of recomputed unless ``force``.
    tracker : Tracker, optional
        MLflow tracker: one run per evaluation with a nested run per computed fold
        (real scores only; control rows go to the result table).
    force : bool
    permutations : int
        Label permutations of the ``shuffled_labels`` control (0: none).
    allow_pretrained_subjects : bool
        Probe subjects the encoder was pretrained on (refused by default).
    progress : bool

    Returns
    -------
    DataFrame
        One row per fold (and per fold and permutation for the control).
    """
    from tqdm.auto import tqdm

    config = config or ProbeConfig()
    view = _check_probe(embeddings, cohort, splits, label, view, task,
                        allow_pretrained_subjects)
    run = _ProbeRun.prepare(embeddings, cohort, splits, label, view=view,
                            task=task or infer_task(cohort.subjects[label]), config=config,
                            model=model, dataset=dataset, protocol=protocol)
    chosen = range(len(splits)) if folds is None else [int(f) for f in folds]
    replicates = [None, *range(int(permutations))]
    batches = [[(replicate, index) for index in chosen] for replicate in replicates]
    with tqdm(total=len(replicates) * len(chosen), desc=f"probe {label}", unit="fold",
              disable=not progress) as bar:
        rows, computed = run_units(batches, run.keys, run.rows, results=results, force=force,
                                   bar=bar)
    log_computed(tracker, _real(rows), _real(computed), tags=run.base,
                 params={"probe": config.to_dict(), "view": view, "split": splits.request,
                         "split_hash": splits.sha256}, metrics=run.metrics)
    return pd.DataFrame(rows)


def _real(rows):
    """Rows that are no label permutation (what the MLflow runs summarise)."""
    return [r for r in rows if r["control"] != "shuffled_labels"]


def _check_probe(embeddings, cohort, splits, label, view, task, allow_pretrained_subjects):
    """The embedding view to probe, after checking that embeddings, store, split and label
    belong together (and that the encoder was not pretrained on the split's subjects)."""
    cohort.require(labels=[label])
    embeddings.check_cohort(cohort)
    splits.check_cohort(cohort).check_task(label, task, cohort)
    if not allow_pretrained_subjects:
        check_not_pretrained_on(embeddings.meta.get("pretrain_subjects"),
                                embeddings.meta.get("trained_on"), cohort, splits.subjects,
                                f"probe of {embeddings.meta.get('model')}")
    return embeddings.view_name(view)


@dataclass
class _ProbeRun:
    """One probe evaluation: the rows to probe, and the result row of each unit (a fold of
    the real labels, or of one label permutation)."""

    x: np.ndarray
    y: np.ndarray
    units: np.ndarray
    n_classes: int | None
    task: str
    config: ProbeConfig
    splits: object
    base: dict
    hashes: dict
    extra: dict

    @classmethod
    def prepare(cls, embeddings, cohort, splits, label, *, view, task, config, model,
                dataset, protocol):
        x, values, units = probe_data(embeddings, cohort, label, splits.subjects, view=view,
                                      level=config.level)
        y, classes = encode_labels(values, task)
        key = embeddings.key(view)
        chash = config_hash({"probe": config.to_dict(), "view": view, "task": task,
                             "embedding_key": key})
        base = {"model": model or embeddings.model, "view": view,
                "dataset": dataset or cohort.path.name, "task": label, "protocol": protocol,
                "seed": splits.seed,
                "control": "random_init" if embeddings.is_random_init else "none",
                "checkpoint": embeddings.checkpoint_label, "replicate": 0}
        extra = {"task_type": task, "level": config.level, "embedding_key": key,
                 "checkpoint_sha256": embeddings.meta.get("checkpoint_sha256"),
                 **pretrain_columns(embeddings)}
        return cls(x, y, units, len(classes) if classes else None, task, config, splits, base,
                   {"config_hash": chash, "manifest_hash": cohort.manifest_hash,
                    "split_hash": splits.sha256}, extra)

    @property
    def metrics(self):
        return CLASSIFICATION_METRICS if self.task == "classification" else REGRESSION_METRICS

    def keys(self, unit):
        """The key of a unit ``(replicate, fold index)``; replicate None: the real labels."""
        replicate, index = unit
        identity = self.base if replicate is None else \
            {**self.base, "control": "shuffled_labels", "replicate": replicate}
        return [{**identity, "fold": self.splits[index].index, **self.hashes}]

    def rows(self, unit, keys):
        """The probe of one unit: its scores on the fold's test rows."""
        replicate, index = unit
        fold = self.splits[index]
        started = time.perf_counter()
        train, test, inner = fold_rows(self.units, fold)
        target = self.y if replicate is None else \
            _permuted_within(self.y, self.units, train, replicate, fold.index)
        scores = probe_fold(self.x, target, train, test, inner, task=self.task,
                            config=self.config, n_classes=self.n_classes)
        return [{**keys[0], "repeat": fold.repeat, **{m: scores[m] for m in self.metrics},
                 "best_param": scores["best_param"], "n_train": int(len(train)),
                 "n_test": int(len(test)), "runtime_s": time.perf_counter() - started,
                 "test_site": fold.test_site, **self.extra, **provenance()}]


def pretrain_columns(embeddings) -> dict:
    """Result-row columns of the pretraining behind the embeddings (empty for features):
    steps, fraction of the run, samples, time points, FLOPs and wall time up to it."""
    point = embeddings.pretrain
    if not point:
        return {}
    budget = point.get("budget") or {}
    return {"pretrain_step": point.get("step"), "pretrain_fraction": point.get("fraction"),
            "pretrain_samples": budget.get("samples"),
            "pretrain_timepoints": budget.get("timepoints"),
            "pretrain_flops": budget.get("flops"), "pretrain_wall_s": budget.get("wall_s")}


def _permuted_within(y, units, train, replicate, fold_index):
    """``y`` with the labels of the training rows permuted among the training subjects
    (a subject's rows keep one label); test rows keep their true labels."""
    rng = random_stream(replicate, fold_index, purpose=SHUFFLED_LABELS)
    out = np.array(y, copy=True)
    train_units = pd.Series(np.asarray(units)[train])
    firsts = pd.Series(np.asarray(y)[train]).groupby(train_units.to_numpy(), sort=True).first()
    if pd.Series(np.asarray(y)[train]).groupby(train_units.to_numpy()).nunique().max() > 1:
        out[train] = rng.permutation(np.asarray(y)[train])  # within-subject label: rows
        return out
    permuted = pd.Series(rng.permutation(firsts.to_numpy()), index=firsts.index)
    out[train] = train_units.map(permuted).to_numpy()
    return out
