"""Connectome + linear model: the classical baseline, as a registered model.

Registered as ``"connectome"``. Built like every model (``build("connectome", ...)``)
and it has ``embed``, but it is *fitted* (:meth:`ConnectomeLinear.fit`), not trained
by the engine: its ``objective`` is ``"none"``, so :func:`bsym.train.engine.train`
refuses to pretrain it, and its ``supervised_loss`` raises. The fitting is done by the
scikit-learn estimators :class:`~bsym.models.linear.ConnectomeClassifier` and
:class:`~bsym.models.linear.ConnectomeRegressor` on
:class:`~bsym.data.features.ConnectomeFeatures`; this class adapts bsym's batches to them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.metrics import get_scorer
from sklearn.preprocessing import FunctionTransformer

from bsym.data.features import ConnectomeFeatures, sc_vectors
from bsym.models.base import BrainModel, Embeddings
from bsym.models.heads import TASKS
from bsym.models.layers import check_choice, check_int
from bsym.models.linear import (
    DEFAULT_ALPHAS,
    DEFAULT_CS,
    ConnectomeClassifier,
    ConnectomeRegressor,
    _grid,
)
from bsym.models.registry import ModelSpec

FC_KINDS = {"fc": "correlation", "partial": "partial correlation", "tangent": "tangent"}
FEATURES = ("fc", "partial", "tangent", "sc", "fc+sc", "partial+sc", "tangent+sc")

__all__ = ["FEATURES", "PRESETS", "SPEC", "ConnectomeFeatures", "ConnectomeLinear"]


def _array(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _column(items):
    """A 1-D object array holding one array per sample (for a DataFrame column)."""
    column = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        column[i] = item
    return column


class ConnectomeLinear(BrainModel):
    """Connectome features, standardised, then a regularised linear model.

    Features: Fisher-z FC upper triangle (``"fc"``), Fisher-z partial correlations
    (``"partial"``), tangent-space FC (``"tangent"``), SC upper triangle (``"sc"``), or FC
    and SC concatenated (``"fc+sc"`` ...), all FC by nilearn's ``ConnectivityMeasure``
    (:class:`~bsym.data.features.ConnectomeFeatures`). Then StandardScaler and L2
    LogisticRegression (classification) or Ridge (regression), the regularisation chosen
    by an inner cross-validation on the training data only, in which the tangent
    reference and the scaler are refitted on each inner training fold
    (:class:`~bsym.models.linear.ConnectomeClassifier` /
    :class:`~bsym.models.linear.ConnectomeRegressor`, the fitted ``estimator_``).

    How it fits the model interface: a :class:`~bsym.models.base.BrainModel` with
    ``objective = "none"`` and no torch parameters, whose settings are checked when it
    is built, like every registered model. :meth:`fit` takes a batch (a dict with
    ``bold`` and/or ``sc``), :meth:`predict`, :meth:`predict_proba`,
    :meth:`decision_function` and :meth:`score` delegate to ``estimator_``; :meth:`embed`
    returns the feature vectors as subject embeddings so it can be linear-probed like any
    encoder. The training engine refuses to pretrain it and :meth:`supervised_loss`
    raises. For scikit-learn pipelines on arrays, use the estimators directly.

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
    estimator_ : ConnectomeClassifier or ConnectomeRegressor
        The fitted estimator: ``best_param_``, ``cv_scores_``, ``cv_splits_``,
        ``pipeline_``, ``features_`` (``features_.measure_.mean_`` is the tangent
        reference).
    classes_ : ndarray
        Labels seen in :meth:`fit` (classification).
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
        self.Cs = _grid("Cs", Cs)
        self.alphas = _grid("alphas", alphas)
        if scoring is not None:
            get_scorer(scoring)
        self.scoring = scoring
        self.sc_log = bool(sc_log)
        self.max_iter = check_int("max_iter", max_iter)
        self.seed = check_int("seed", seed, 0)
        parts = self.features.split("+")
        self._fc_kind = FC_KINDS.get(parts[0])
        self._uses_sc = "sc" in parts

    # -- inputs ---------------------------------------------------------------------------
    def _samples(self, data):
        """``{"bold": list of (T_i, R) tables or None, "sc": (n, R, R) or None, "groups"}``."""
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a batch (a dict with 'bold' and/or 'sc'), received "
                            f"{type(data).__name__}")
        samples = {"bold": None, "sc": None, "groups": data.get("subject")}
        if self._fc_kind is not None:
            if data.get("bold") is None:
                raise ValueError(f"features={self.features!r} needs 'bold' (n, ROIs, time) or a "
                                 f"list of (ROIs, time) arrays; the batch has {sorted(data)}")
            bold = [_array(b).astype(np.float64) for b in data["bold"]]
            for i, b in enumerate(bold):
                if b.ndim != 2 or b.shape[1] < 3:
                    raise ValueError(f"bold sample {i} must be (ROIs, time points >= 3); "
                                     f"received shape {b.shape}")
            samples["bold"] = [b.T for b in bold]
        if self._uses_sc:
            if data.get("sc") is None:
                raise ValueError(f"features={self.features!r} needs 'sc' (n, ROIs, ROIs); the "
                                 f"batch has {sorted(data)}")
            sc = _array(data["sc"]).astype(np.float64)
            if sc.ndim != 3 or sc.shape[1] != sc.shape[2]:
                raise ValueError(f"sc must be (n, ROIs, ROIs); received shape {sc.shape}")
            if self.sc_log and (sc < 0).any():
                raise ValueError("sc_log=True expects non-negative SC weights (raw counts); "
                                 "received negative entries")
            samples["sc"] = sc
        counts = {len(v) for k, v in samples.items() if k != "groups" and v is not None}
        rois = {b.shape[1] for b in samples["bold"] or ()} | (
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

    @property
    def _fitted_features(self):
        """Whether the features learn from the training data (the tangent reference)."""
        return self._fc_kind == "tangent"

    def _feature_table(self, samples):
        """Features that need no fitting: FC vectors and/or SC upper triangles."""
        parts = []
        if self._fc_kind is not None:
            parts.append(ConnectomeFeatures(self._fc_kind).transform(samples["bold"]))
        if self._uses_sc:
            parts.append(sc_vectors(samples["sc"], log=self.sc_log))
        return np.concatenate(parts, axis=1).astype(np.float64)

    def _estimator_input(self, samples):
        """What ``estimator_`` takes: the feature table, or the scans when the features are
        fitted (with the SC beside them in a two-column frame)."""
        if not self._fitted_features:
            return self._feature_table(samples)
        if not self._uses_sc:
            return samples["bold"]
        return pd.DataFrame({"bold": _column(samples["bold"]), "sc": _column(samples["sc"])})

    def _new_features(self):
        if not self._fitted_features:
            return None
        bold = ConnectomeFeatures(self._fc_kind)
        if not self._uses_sc:
            return bold
        sc = FunctionTransformer(sc_vectors, kw_args={"log": self.sc_log})
        return ColumnTransformer([("bold", bold, "bold"), ("sc", sc, "sc")])

    # -- fitting and prediction -----------------------------------------------------------
    @property
    def _classifier(self):
        return self.task == "classification"

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
            n_labels = len(np.unique(y))
            if self.n_classes is not None and n_labels > self.n_classes:
                raise ValueError(f"the labels have {n_labels} classes; n_classes is "
                                 f"{self.n_classes}")
            estimator = ConnectomeClassifier(self._new_features(), Cs=tuple(self.Cs),
                                             inner_folds=self.inner_folds,
                                             scoring=self.scoring, max_iter=self.max_iter,
                                             random_state=self.seed)
        else:
            estimator = ConnectomeRegressor(self._new_features(), alphas=tuple(self.alphas),
                                            inner_folds=self.inner_folds,
                                            scoring=self.scoring, random_state=self.seed)
        self.estimator_ = estimator.fit(self._estimator_input(samples), y,
                                        groups=samples["groups"])
        return self

    def _check_fitted(self):
        if not hasattr(self, "estimator_"):
            raise NotFittedError("this connectome model is not fitted yet: call fit(X, y) on "
                                 "the training data first")

    @property
    def classes_(self):
        self._check_fitted()
        return self.estimator_.classes_

    def transform(self, X):
        """Feature vectors (n, n_features), before standardisation."""
        samples = self._samples(X)
        if not self._fitted_features:
            return self._feature_table(samples)
        if not hasattr(self, "estimator_"):
            raise NotFittedError("the tangent space needs a group reference: fit the model on "
                                 "training subjects first")
        return self.estimator_.features_.transform(self._estimator_input(samples))

    def _delegate(self, method, X):
        self._check_fitted()
        return getattr(self.estimator_, method)(self._estimator_input(self._samples(X)))

    def decision_function(self, X):
        """Logits (n,) for two classes, (n, n_classes) otherwise; predictions for regression."""
        return self._delegate("decision_function" if self._classifier else "predict", X)

    def predict(self, X):
        """Labels (as given to :meth:`fit`) or continuous predictions, shape (n,)."""
        return self._delegate("predict", X)

    def predict_proba(self, X):
        """Class probabilities (n, n_classes), columns in the order of ``classes_``."""
        if not self._classifier:
            raise ValueError("predict_proba needs task='classification'")
        return self._delegate("predict_proba", X)

    def score(self, X, y):
        """Accuracy (classification) or R^2 (regression), as scikit-learn."""
        self._check_fitted()
        return float(self.estimator_.score(self._estimator_input(self._samples(X)), _array(y)))

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
            model = self.estimator_.pipeline_.named_steps["model"]
            n = int(model.coef_.size + np.size(model.intercept_))
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
