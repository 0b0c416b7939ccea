"""Connectome features + a regularised linear model, as scikit-learn estimators (torch-free).

:class:`ConnectomeClassifier` and :class:`ConnectomeRegressor`: an optional feature
transformer (e.g. :class:`~bsym.data.features.ConnectomeFeatures`), StandardScaler, then
L2 logistic regression or ridge, with the regularisation strength chosen by
:class:`~sklearn.model_selection.GridSearchCV` over inner folds of the training data in
which the feature transformer and the scaler are refitted on each inner training fold.
They are for scikit-learn pipelines of your own (e.g. tangent-space FC, whose reference
must be fitted on training scans only). The benchmark's connectome baseline is not built
on them: it is the linear probe of connectome features (``bsym probe --features``,
:mod:`bsym.evaluate.probe`).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import get_scorer
from sklearn.model_selection import (
    GridSearchCV,
    GroupKFold,
    KFold,
    StratifiedGroupKFold,
    StratifiedKFold,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_consistent_length, column_or_1d
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

DEFAULT_CS = tuple(float(c) for c in np.logspace(-5, 2, 8))
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-2, 6, 9))


def _grid(name, values):
    values = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if values.ndim != 1 or not len(values) or not (np.isfinite(values) & (values > 0)).all():
        raise ValueError(f"{name} must be a non-empty list of positive numbers, got {values}")
    return values


class _InnerCVLinear(BaseEstimator):
    """Shared fit and prediction of the two estimators below."""

    _param = None            # "C" or "alpha"

    def _model(self):
        raise NotImplementedError

    def _check_input(self, X, y):
        """Validated ``(X, y)``: a 2-D table without ``features``; scans are left to the
        feature transformer."""
        if self.features is None:
            return validate_data(self, X, y, y_numeric=not self._is_classifier())
        y = validate_data(self, X="no_validation", y=y, y_numeric=not self._is_classifier())
        check_consistent_length(X, y)
        return X, y

    def _check_params(self):
        if self.scoring is not None:
            get_scorer(self.scoring)
        if int(self.inner_folds) != self.inner_folds or self.inner_folds < 2:
            raise ValueError(f"inner_folds must be an integer of at least 2, got "
                             f"{self.inner_folds!r}")

    def _is_classifier(self):
        return isinstance(self, ClassifierMixin)

    def _search(self, X, y, grid, splitter, groups, default_scoring):
        steps = [("scale", StandardScaler()), ("model", self._model())]
        if self.features is not None:
            steps.insert(0, ("features", clone(self.features)))
        self.cv_splits_ = [(train, test) for train, test in
                           splitter.split(np.zeros(len(y)), y, groups)]
        search = GridSearchCV(Pipeline(steps), {f"model__{self._param}": list(grid)},
                              scoring=self.scoring or default_scoring, cv=self.cv_splits_,
                              error_score="raise")
        search.fit(X, y)
        self.search_ = search
        self.pipeline_ = search.best_estimator_
        self.features_ = self.pipeline_.named_steps.get("features")
        self.param_grid_ = np.asarray(grid)
        self.cv_scores_ = np.column_stack([search.cv_results_[f"split{f}_test_score"]
                                           for f in range(len(self.cv_splits_))])
        self.best_param_ = float(search.best_params_[f"model__{self._param}"])
        if self.features is not None and hasattr(self.features_, "n_features_in_"):
            self.n_features_in_ = self.features_.n_features_in_
        return self

    def _groups(self, groups, n):
        if groups is None:
            return None
        groups = np.asarray([str(g) for g in groups])
        if len(groups) != n:
            raise ValueError(f"{len(groups)} groups for {n} samples")
        return groups

    def _validated(self, X):
        check_is_fitted(self)
        if self.features is None:
            return validate_data(self, X, reset=False)
        return X

    def predict(self, X):
        """Labels (as given to :meth:`fit`) or continuous predictions, shape (n_samples,)."""
        X = self._validated(X)
        return self.pipeline_.predict(X)


class ConnectomeClassifier(ClassifierMixin, _InnerCVLinear):
    """Standardised features, then L2 logistic regression with C chosen on inner folds.

    The inner folds are stratified (and subject-grouped when :meth:`fit` gets
    ``groups``), shuffled with ``random_state``; fewer than ``inner_folds`` when a class
    (or its subjects) is too small. Scored by ``scoring`` (default negative log-loss); ties
    go to the smaller C. The chosen C is refitted on all the training data.

    Parameters
    ----------
    features : transformer or None
        Applied first and refitted on every inner training fold, e.g.
        ``ConnectomeFeatures(kind="tangent")`` for scans; None: ``X`` is a feature table.
    Cs : sequence of float
        Inverse regularisation strengths tried.
    inner_folds : int
        Most inner cross-validation folds.
    scoring : str, optional
        A scikit-learn scorer name; default ``"neg_log_loss"``.
    max_iter : int
        Solver iterations of the logistic regression.
    random_state : int
        Shuffling of the inner folds.

    Attributes
    ----------
    classes_ : ndarray
    pipeline_ : Pipeline
        The refitted (features,) scaler and model.
    features_ : transformer or None
        The refitted feature transformer.
    best_param_ : float
        The chosen C.
    param_grid_ : ndarray
        The Cs tried, in the order searched.
    cv_scores_ : ndarray of shape (n_params, n_folds)
        Inner validation scores (greater is better).
    cv_splits_ : list of (ndarray, ndarray)
        Inner (train, validation) indices.
    search_ : GridSearchCV
    n_iter_ : ndarray
        Solver iterations of the final model.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> X, y = make_classification(60, 10, random_state=0)
    >>> ConnectomeClassifier(Cs=(0.1, 1.0), inner_folds=3).fit(X, y).predict(X[:3]).shape
    (3,)
    """

    _param = "C"

    def __init__(self, features=None, Cs=DEFAULT_CS, inner_folds=5, scoring=None,
                 max_iter=2000, random_state=0):
        self.features = features
        self.Cs = Cs
        self.inner_folds = inner_folds
        self.scoring = scoring
        self.max_iter = max_iter
        self.random_state = random_state

    def _model(self):
        return LogisticRegression(max_iter=self.max_iter)

    def fit(self, X, y, groups=None):
        """Choose C on inner folds of (X, y), then refit on all of it.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or what ``features`` takes
        y : array-like of shape (n_samples,)
            Class labels.
        groups : array-like of shape (n_samples,), optional
            Subject of each sample, so that no subject straddles an inner split.

        Returns
        -------
        self
        """
        self._check_params()
        X, y = self._check_input(X, y)
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"the training labels hold 1 class ({self.classes_[0]!r}); a "
                             "classifier needs at least 2 classes")
        groups = self._groups(groups, len(y))
        smallest = int(np.bincount(codes).min())
        if groups is not None:
            smallest = min(smallest, min(len(np.unique(groups[codes == c]))
                                         for c in range(len(self.classes_))))
        folds = min(int(self.inner_folds), smallest)
        if folds < 2:
            raise ValueError("the inner cross-validation needs at least 2 samples (subjects) "
                             "of every class in the training data")
        splitter = (StratifiedGroupKFold(folds, shuffle=True, random_state=self.random_state)
                    if groups is not None else
                    StratifiedKFold(folds, shuffle=True, random_state=self.random_state))
        self._search(X, y, np.sort(_grid("Cs", self.Cs)), splitter, groups, "neg_log_loss")
        self.n_iter_ = self.pipeline_.named_steps["model"].n_iter_
        return self

    def decision_function(self, X):
        """Logits, shape (n_samples,) for two classes, (n_samples, n_classes) otherwise."""
        X = self._validated(X)
        return self.pipeline_.decision_function(X)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), columns in the order of ``classes_``."""
        X = self._validated(X)
        return self.pipeline_.predict_proba(X)


class ConnectomeRegressor(RegressorMixin, _InnerCVLinear):
    """Standardised features, then ridge regression with alpha chosen on inner folds.

    The inner folds are shuffled with ``random_state`` (subject-grouped when :meth:`fit`
    gets ``groups``); fewer than ``inner_folds`` when the samples (subjects) are few.
    Scored by ``scoring`` (default negative mean squared error); ties go to the larger
    alpha. The chosen alpha is refitted on all the training data.

    Parameters
    ----------
    features : transformer or None
        Applied first and refitted on every inner training fold; None: ``X`` is a feature
        table.
    alphas : sequence of float
        Ridge penalties tried.
    inner_folds : int
    scoring : str, optional
        A scikit-learn scorer name; default ``"neg_mean_squared_error"``.
    random_state : int

    Attributes
    ----------
    pipeline_, features_, best_param_, param_grid_, cv_scores_, cv_splits_, search_
        As :class:`ConnectomeClassifier` (``best_param_`` is the chosen alpha).

    Examples
    --------
    >>> from sklearn.datasets import make_regression
    >>> X, y = make_regression(60, 10, random_state=0)
    >>> ConnectomeRegressor(alphas=(1.0, 10.0), inner_folds=3).fit(X, y).predict(X[:3]).shape
    (3,)
    """

    _param = "alpha"

    def __init__(self, features=None, alphas=DEFAULT_ALPHAS, inner_folds=5, scoring=None,
                 random_state=0):
        self.features = features
        self.alphas = alphas
        self.inner_folds = inner_folds
        self.scoring = scoring
        self.random_state = random_state

    def _model(self):
        return Ridge()

    def fit(self, X, y, groups=None):
        """Choose alpha on inner folds of (X, y), then refit on all of it.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or what ``features`` takes
        y : array-like of shape (n_samples,)
            Finite targets.
        groups : array-like of shape (n_samples,), optional
            Subject of each sample, so that no subject straddles an inner split.

        Returns
        -------
        self
        """
        self._check_params()
        X, y = self._check_input(X, y)
        y = column_or_1d(y, warn=True).astype(np.float64)
        groups = self._groups(groups, len(y))
        units = len(np.unique(groups)) if groups is not None else len(y)
        folds = min(int(self.inner_folds), units)
        if folds < 2:
            raise ValueError(f"the inner cross-validation needs at least 2 samples (subjects); "
                             f"received {units} sample")
        splitter = (GroupKFold(folds, shuffle=True, random_state=self.random_state)
                    if groups is not None else
                    KFold(folds, shuffle=True, random_state=self.random_state))
        self._search(X, y, np.sort(_grid("alphas", self.alphas))[::-1], splitter, groups,
                     "neg_mean_squared_error")
        return self
