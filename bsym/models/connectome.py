"""Connectome + linear model: the classical baseline.

Registered as ``"connectome"``. Built like every model (``build("connectome", ...)``)
and it has ``embed``, but it is *fitted* (:meth:`ConnectomeLinear.fit`), not trained
by the engine: its ``objective`` is ``"none"``, so :func:`bsym.train.engine.train`
refuses to pretrain it, and its ``supervised_loss`` raises.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import get_scorer, log_loss, mean_squared_error
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.preprocessing import StandardScaler

from bsym.data.features import fc_features, fisher_z, upper_triangle
from bsym.models.base import BrainModel, Embeddings
from bsym.models.heads import TASKS
from bsym.models.layers import check_choice, check_int
from bsym.models.registry import ModelSpec

FC_KINDS = {"fc": "correlation", "partial": "partial correlation", "tangent": "tangent"}
FEATURES = ("fc", "partial", "tangent", "sc", "fc+sc", "partial+sc", "tangent+sc")
DEFAULT_CS = tuple(float(c) for c in np.logspace(-5, 2, 8))
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-2, 6, 9))


class NotFittedError(RuntimeError):
    """The model was used before :meth:`ConnectomeLinear.fit`."""


def _array(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class ConnectomeFeatures:
    """Connectome feature vectors of samples; fitted only for the tangent space.

    Parameters
    ----------
    fc : {"fc", "partial", "tangent"} or None
        ``"fc"``: Fisher-z Pearson correlations; ``"partial"``: Fisher-z partial
        correlations; ``"tangent"``: tangent-space embedding around the group mean
        covariance of the samples given to :meth:`fit` (nilearn
        ``ConnectivityMeasure``; Ledoit-Wolf covariances). Entries below the diagonal
        (and, for the tangent space, the diagonal too).
    sc : bool
        Append the SC upper triangle.
    sc_log : bool
        Apply ``log(1 + SC)`` first (for raw counts; window batches are already log1p).
    """

    def __init__(self, fc="fc", sc=False, sc_log=False):
        self.fc, self.sc, self.sc_log = fc, sc, sc_log
        self.measure_ = None

    @property
    def needs_fit(self):
        return self.fc == "tangent"

    def fit(self, samples):
        if self.needs_fit:
            from nilearn.connectome import ConnectivityMeasure

            self.measure_ = ConnectivityMeasure(kind="tangent", vectorize=True)
            self.measure_.fit([b.T for b in samples["bold"]])
        return self

    def transform(self, samples):
        parts = []
        if self.fc == "fc":
            parts.append(np.stack([fc_features(b) for b in samples["bold"]]))
        elif self.fc == "partial":
            from nilearn.connectome import ConnectivityMeasure

            measure = ConnectivityMeasure(kind="partial correlation", vectorize=True,
                                          discard_diagonal=True)
            parts.append(fisher_z(measure.fit_transform([b.T for b in samples["bold"]])))
        elif self.fc == "tangent":
            if self.measure_ is None:
                raise NotFittedError("the tangent space needs a group reference: fit the "
                                     "model on training subjects first")
            parts.append(self.measure_.transform([b.T for b in samples["bold"]]))
        if self.sc:
            sc = samples["sc"]
            if self.sc_log:
                if (sc < 0).any():
                    raise ValueError("sc_log=True expects non-negative SC weights (raw "
                                     "counts); received negative entries")
                sc = np.log1p(sc)
            parts.append(upper_triangle(sc))
        return np.concatenate(parts, axis=1).astype(np.float64)


class ConnectomeLinear(BrainModel):
    """Connectome features, standardised, then a regularised linear model.

    Features: Fisher-z FC upper triangle (``"fc"``), Fisher-z partial correlations
    (``"partial"``), tangent-space FC (``"tangent"``, nilearn), SC upper triangle
    (``"sc"``), or FC and SC concatenated (``"fc+sc"`` ...). Then StandardScaler and
    L2 LogisticRegression (classification) or Ridge (regression). The regularisation
    strength is chosen by an inner cross-validation on the training data only, in
    which the tangent reference and the scaler are refitted on each inner training
    fold; the final model is refitted on all training data with the chosen value.

    How it fits the model interface: a :class:`~bsym.models.base.BrainModel` with
    ``objective = "none"`` and no torch parameters. Use :meth:`fit`, :meth:`predict`,
    :meth:`predict_proba`, :meth:`decision_function`, :meth:`score` (scikit-learn
    conventions; fitted attributes end in ``_``); :meth:`embed` returns the feature
    vectors as subject embeddings so it can be linear-probed like any encoder. The
    training engine refuses to pretrain it and :meth:`supervised_loss` raises.

    Parameters
    ----------
    n_rois : int, optional
        Checked against the data when given.
    task : {"classification", "regression"}
    n_classes : int, optional
        When given, the training labels may have at most this many classes.
    features : str
        One of ``FEATURES``.
    inner_folds : int
        Inner cross-validation folds (fewer when a class or the groups are too few).
    Cs : list of float
        Inverse regularisation strengths tried (classification).
    alphas : list of float
        Ridge penalties tried (regression).
    scoring : str, optional
        A scikit-learn scorer name for the inner CV; default negative log-loss
        (classification) or negative MSE (regression).
    sc_log : bool
        Apply log1p to SC (pass raw counts); window batches are already log1p.
    max_iter : int
        Solver iterations of the logistic regression.
    seed : int
        Shuffling of the inner folds.

    Attributes
    ----------
    classes_ : ndarray
        Labels seen in :meth:`fit` (classification).
    features_ : ConnectomeFeatures
        Fitted feature map; ``features_.measure_.mean_`` is the tangent reference.
    n_features_ : int
    scaler_ : StandardScaler
    estimator_ : LogisticRegression or Ridge
    best_param_ : float
        The chosen C or alpha.
    param_grid_ : ndarray
    cv_scores_ : ndarray, shape (n_params, n_folds)
        Inner validation scores (greater is better).
    cv_splits_ : list of (ndarray, ndarray)
        Inner (train, validation) indices into the training samples.
    """

    objective = "none"

    def __init__(self, n_rois=None, task="classification", n_classes=None, features="fc",
                 inner_folds=5, Cs=DEFAULT_CS, alphas=DEFAULT_ALPHAS, scoring=None,
                 sc_log=False, max_iter=2000, seed=0):
        super().__init__()
        self.n_rois = None if n_rois is None else check_int("n_rois", n_rois, 2)
        self.task = check_choice("task", task, TASKS)
        self.n_classes = None if n_classes is None else check_int("n_classes", n_classes, 2)
        self.features = check_choice("features", features, FEATURES)
        self.inner_folds = check_int("inner_folds", inner_folds, 2)
        self.Cs = self._grid("Cs", Cs)
        self.alphas = self._grid("alphas", alphas)
        if scoring is not None:
            get_scorer(scoring)
        self.scoring = scoring
        self.sc_log = bool(sc_log)
        self.max_iter = check_int("max_iter", max_iter)
        self.seed = check_int("seed", seed, 0)
        parts = self.features.split("+")
        self._fc_kind = parts[0] if parts[0] in FC_KINDS else None
        self._uses_sc = "sc" in parts

    @staticmethod
    def _grid(name, values):
        values = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if values.ndim != 1 or not len(values) or not (np.isfinite(values) & (values > 0)).all():
            raise ValueError(f"{name} must be a non-empty list of positive numbers, got {values}")
        return values

    # -- inputs ---------------------------------------------------------------------------
    def _samples(self, data):
        """``{"bold": list of (R, T_i) arrays or None, "sc": (n, R, R) or None, "groups"}``."""
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a batch (a dict with 'bold' and/or 'sc'), received "
                            f"{type(data).__name__}")
        samples = {"bold": None, "sc": None, "groups": data.get("subject")}
        if self._fc_kind is not None:
            if data.get("bold") is None:
                raise ValueError(f"features={self.features!r} needs 'bold' (n, ROIs, time) or a "
                                 f"list of (ROIs, time) arrays; the batch has {sorted(data)}")
            bold = data["bold"]
            bold = [_array(b).astype(np.float64) for b in bold]
            for i, b in enumerate(bold):
                if b.ndim != 2 or b.shape[1] < 3:
                    raise ValueError(f"bold sample {i} must be (ROIs, time points >= 3); "
                                     f"received shape {b.shape}")
            samples["bold"] = bold
        if self._uses_sc:
            if data.get("sc") is None:
                raise ValueError(f"features={self.features!r} needs 'sc' (n, ROIs, ROIs); the "
                                 f"batch has {sorted(data)}")
            sc = _array(data["sc"]).astype(np.float64)
            if sc.ndim != 3 or sc.shape[1] != sc.shape[2]:
                raise ValueError(f"sc must be (n, ROIs, ROIs); received shape {sc.shape}")
            samples["sc"] = sc
        counts = {len(v) for k, v in samples.items() if k != "groups" and v is not None}
        rois = {b.shape[0] for b in samples["bold"] or ()} | (
            {samples["sc"].shape[1]} if samples["sc"] is not None else set())
        if len(counts) > 1:
            raise ValueError(f"bold and sc hold different numbers of samples: {sorted(counts)}")
        if len(rois) > 1:
            raise ValueError(f"samples have different ROI counts: {sorted(rois)}")
        if self.n_rois is not None and rois and rois != {self.n_rois}:
            raise ValueError(f"this model expects {self.n_rois} ROIs; received {rois.pop()}")
        samples["n"] = counts.pop()
        if samples["n"] == 0:
            raise ValueError("received no samples")
        if samples["groups"] is not None:
            samples["groups"] = np.asarray([str(g) for g in samples["groups"]])
            if len(samples["groups"]) != samples["n"]:
                raise ValueError(f"{len(samples['groups'])} subject ids for {samples['n']} "
                                 "samples")
        return samples

    @staticmethod
    def _subset(samples, index):
        out = dict(samples)
        if samples["bold"] is not None:
            out["bold"] = [samples["bold"][i] for i in index]
        if samples["sc"] is not None:
            out["sc"] = samples["sc"][index]
        out["n"] = len(index)
        return out

    def _new_features(self):
        return ConnectomeFeatures(self._fc_kind, self._uses_sc, self.sc_log)

    # -- model selection ------------------------------------------------------------------
    @property
    def _classifier(self):
        return self.task == "classification"

    def _estimator(self, value):
        if self._classifier:
            return LogisticRegression(C=float(value), max_iter=self.max_iter)
        return Ridge(alpha=float(value))

    def _score(self, estimator, x, y):
        if self.scoring is not None:
            return float(get_scorer(self.scoring)(estimator, x, y))
        if self._classifier:
            return -log_loss(y, estimator.predict_proba(x), labels=estimator.classes_)
        return -mean_squared_error(y, estimator.predict(x))

    def _splits(self, y, groups):
        n = len(y)
        if self._classifier:
            smallest = np.bincount(y).min()
            if groups is not None:
                per_class = min(len(np.unique(groups[y == c])) for c in np.unique(y))
                smallest = min(smallest, per_class)
            folds = min(self.inner_folds, int(smallest))
            if folds < 2:
                raise ValueError("the inner cross-validation needs at least 2 samples (subjects) "
                                 "of every class in the training data")
            splitter = (StratifiedGroupKFold(folds, shuffle=True, random_state=self.seed)
                        if groups is not None else
                        StratifiedKFold(folds, shuffle=True, random_state=self.seed))
        else:
            units = len(np.unique(groups)) if groups is not None else n
            folds = min(self.inner_folds, units)
            if folds < 2:
                raise ValueError("the inner cross-validation needs at least 2 training samples "
                                 "(subjects)")
            splitter = (GroupKFold(folds, shuffle=True, random_state=self.seed)
                        if groups is not None else
                        KFold(folds, shuffle=True, random_state=self.seed))
        return [(tr, va) for tr, va in splitter.split(np.zeros(n), y, groups)]

    def _fit_linear(self, x, y, value):
        scaler = StandardScaler().fit(x)
        return scaler, self._estimator(value).fit(scaler.transform(x), y)

    def fit(self, X, y, groups=None):
        """Choose the regularisation on inner folds of (X, y), then refit on all of it.

        Parameters
        ----------
        X : dict
            A batch: ``bold`` (n, R, T) tensor/array or a list of (R, T_i) arrays
            (whole scans of different lengths are fine), and/or ``sc`` (n, R, R).
        y : array-like, shape (n,)
            Labels (any hashable values) or continuous targets.
        groups : array-like, optional
            Subject of each sample, so no subject straddles an inner split; default
            ``X["subject"]`` when the batch has it.

        Returns
        -------
        self
        """
        samples = self._samples(X)
        if groups is not None:
            samples["groups"] = np.asarray([str(g) for g in groups])
        y = _array(y)
        if y.ndim != 1 or len(y) != samples["n"]:
            raise ValueError(f"expected {samples['n']} targets, received shape {y.shape}")
        if self._classifier:
            self.classes_, y_fit = np.unique(y, return_inverse=True)
            if len(self.classes_) < 2:
                raise ValueError("classification needs at least 2 classes in the training data")
            if self.n_classes is not None and len(self.classes_) > self.n_classes:
                raise ValueError(f"the labels have {len(self.classes_)} classes; n_classes is "
                                 f"{self.n_classes}")
            grid = np.sort(self.Cs)               # ties go to the smaller C
        else:
            y_fit = y.astype(np.float64)
            if not np.isfinite(y_fit).all():
                raise ValueError("regression targets must be finite numbers")
            grid = np.sort(self.alphas)[::-1]     # ties go to the larger alpha
        self.cv_splits_ = self._splits(y_fit, samples["groups"])
        scores = np.empty((len(grid), len(self.cv_splits_)))
        shared = None
        if not self._new_features().needs_fit:
            shared = self._new_features().transform(samples)
        for f, (tr, va) in enumerate(self.cv_splits_):
            if shared is None:
                features = self._new_features().fit(self._subset(samples, tr))
                x_tr = features.transform(self._subset(samples, tr))
                x_va = features.transform(self._subset(samples, va))
            else:
                x_tr, x_va = shared[tr], shared[va]
            for g, value in enumerate(grid):
                scaler, estimator = self._fit_linear(x_tr, y_fit[tr], value)
                scores[g, f] = self._score(estimator, scaler.transform(x_va), y_fit[va])
        self.param_grid_, self.cv_scores_ = grid, scores
        self.best_param_ = float(grid[int(np.argmax(scores.mean(axis=1)))])
        self.features_ = self._new_features().fit(samples)
        x = shared if shared is not None else self.features_.transform(samples)
        self.n_features_ = x.shape[1]
        self.scaler_, self.estimator_ = self._fit_linear(x, y_fit, self.best_param_)
        return self

    # -- prediction -----------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "estimator_"):
            raise NotFittedError("this connectome model is not fitted yet: call fit(X, y) on "
                                 "the training data first")

    def transform(self, X):
        """Feature vectors (n, n_features), before standardisation."""
        features = getattr(self, "features_", None) or self._new_features()
        return features.transform(self._samples(X))

    def decision_function(self, X):
        """Logits (n,) for two classes, (n, n_classes) otherwise; predictions for regression."""
        self._check_fitted()
        x = self.scaler_.transform(self.transform(X))
        if self._classifier:
            return self.estimator_.decision_function(x)
        return self.estimator_.predict(x)

    def predict(self, X):
        """Labels (as given to :meth:`fit`) or continuous predictions, shape (n,)."""
        self._check_fitted()
        x = self.scaler_.transform(self.transform(X))
        if self._classifier:
            return self.classes_[self.estimator_.predict(x)]
        return self.estimator_.predict(x)

    def predict_proba(self, X):
        """Class probabilities (n, n_classes), columns in the order of ``classes_``."""
        self._check_fitted()
        if not self._classifier:
            raise ValueError("predict_proba needs task='classification'")
        return self.estimator_.predict_proba(self.scaler_.transform(self.transform(X)))

    def score(self, X, y):
        """Accuracy (classification) or R^2 (regression), as scikit-learn."""
        predicted = self.predict(X)
        y = _array(y)
        if self._classifier:
            return float(np.mean(predicted == y))
        residual = ((y - predicted) ** 2).sum()
        return float(1.0 - residual / ((y - y.mean()) ** 2).sum())

    # -- the model interface --------------------------------------------------------------
    def embed(self, batch):
        """``Embeddings(subject=feature vectors (B, n_features) float32, roi=None)``.

        The tangent space needs :meth:`fit` first (its reference comes from the
        training subjects); the other features need no fitting.
        """
        return Embeddings(subject=torch.from_numpy(self.transform(batch).astype(np.float32)))

    def supervised_loss(self, batch, y):
        raise TypeError("the connectome + linear baseline is not trained by gradient steps: "
                        "call model.fit(batch, y) instead of the training engine")

    def pretrain_loss(self, batch, *, generator=None, stage=None):
        raise TypeError("the connectome + linear baseline has no pretraining (objective "
                        "'none'); call model.fit(batch, y)")

    def param_counts(self):
        """Coefficients of the linear model (fitted), or of a one-output model on
        ``n_rois`` ROIs before fitting."""
        if hasattr(self, "estimator_"):
            n = int(self.estimator_.coef_.size + np.size(self.estimator_.intercept_))
        elif self.n_rois is not None:
            edges = self.n_rois * (self.n_rois - 1) // 2
            n = edges * (2 if "+" in self.features else 1) + 1
        else:
            n = 0
        return {"linear": n, "total": n}


PRESETS = {
    "tiny": dict(n_rois=16, task="classification", features="fc", inner_folds=3,
                 Cs=(1e-3, 1e-2, 1e-1, 1.0), alphas=(1.0, 10.0, 100.0, 1000.0)),
    "paper": dict(n_rois=450, task="classification", features="fc", inner_folds=5),
    "tangent": dict(n_rois=450, task="classification", features="tangent", inner_folds=5),
}

SPEC = ModelSpec(
    name="connectome",
    factory=ConnectomeLinear,
    presets=PRESETS,
    description="Connectome + linear model: FC / partial / tangent / SC features, "
                "logistic or ridge with inner-CV regularisation (fitted, not trained)",
)
