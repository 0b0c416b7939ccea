"""Linear-probe parts that fit the same models with less work: wide features in the span
of the training rows, binary logistic regression by Newton's method."""

from __future__ import annotations

import numpy as np
from sklearn import get_config
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data


def _trusted(x):
    """Whether ``x`` skips scikit-learn's input validation: a non-empty 2-D float64 array
    under ``sklearn.config_context(assume_finite=True)``, as in the probe's inner search,
    whose hundreds of small fits would otherwise spend about half their time validating.
    Its width is still checked."""
    return (isinstance(x, np.ndarray) and x.dtype == np.float64 and x.ndim == 2 and x.size > 0
            and get_config()["assume_finite"])


def _check_x(estimator, x, *, reset):
    if not _trusted(x):
        return validate_data(estimator, x, dtype=np.float64, reset=reset)
    if reset:
        estimator.n_features_in_ = x.shape[1]
        if hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
    elif x.shape[1] != estimator.n_features_in_:
        raise ValueError(f"X has {x.shape[1]} features, but {type(estimator).__name__} is "
                         f"expecting {estimator.n_features_in_} features as input.")
    return x


class RowSpace(TransformerMixin, BaseEstimator):
    """Coordinates in the span of the centred training rows when features outnumber them;
    the identity otherwise.

    The weights of an L2-penalised linear model (ridge, logistic regression) fitted on
    centred rows lie in the span of those rows, so fitting on these coordinates gives the
    same weights' predictions and the same penalty, while each solver step costs
    rows x rows instead of rows x features: a 100-ROI connectome's 4,950 features become
    about a hundred. The probe's model is unchanged; only its cost is.

    Parameters
    ----------
    tol : float
        Directions whose squared singular value is below ``tol`` times the largest are
        dropped (the centred rows have rank at most rows - 1).
    """

    def __init__(self, tol=1e-10):
        self.tol = tol

    def fit(self, x, y=None):
        x = _check_x(self, x, reset=True)
        self.mean_ = x.mean(axis=0)
        if x.shape[1] <= x.shape[0]:
            self.basis_ = None
            return self
        centred = x - self.mean_
        # eigenvectors of the small rows x rows Gram matrix give the span of the rows
        eigenvalues, vectors = np.linalg.eigh(centred @ centred.T)
        largest = float(eigenvalues.max(initial=0.0))
        keep = eigenvalues > self.tol * largest if largest > 0 else eigenvalues > np.inf
        self.basis_ = centred.T @ (vectors[:, keep] / np.sqrt(eigenvalues[keep]))
        return self

    def transform(self, x):
        check_is_fitted(self)
        x = _check_x(self, x, reset=False)
        if self.basis_ is None:
            return x
        return (x - self.mean_) @ self.basis_


class BinaryLogistic(ClassifierMixin, BaseEstimator):
    """L2-penalised logistic regression of a binary label, solved by Newton's method.

    The objective is scikit-learn's :class:`~sklearn.linear_model.LogisticRegression`
    (``0.5 * ||w||^2 + C * sum of log-losses``, the intercept not penalised), so both
    reach the same optimum; Newton steps with a backtracking line search reach it in a
    handful of (features + 1)-sized solves, which keeps the hundreds of refits of a probe's
    inner search and its shuffled-label control cheap.

    Parameters
    ----------
    C : float
        Inverse penalty.
    tol : float
        Stop when the largest Newton step is below ``tol``.
    max_iter : int
    warm_start : bool
        Start from the previous solution (when refitting along a grid of C).
    """

    def __init__(self, C=1.0, tol=1e-8, max_iter=100, warm_start=False):
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start

    def _objective(self, design, y, beta, penalty):
        margin = design @ beta
        loss = np.logaddexp(0.0, margin) - y * margin
        return 0.5 * float(penalty @ (beta * beta)) + self.C * float(loss.sum())

    def fit(self, x, y):
        from scipy.special import expit

        if _trusted(x) and isinstance(y, np.ndarray) and y.dtype.kind in "iu" and \
                y.shape == (len(x),):
            _check_x(self, x, reset=True)          # class indices: the probe's own labels
        else:
            x, y = validate_data(self, x, y, dtype=np.float64)
            check_classification_targets(y)
            target = type_of_target(y, input_name="y")
            if target != "binary":
                raise ValueError(f"Only binary classification is supported. The type of the "
                                 f"target is {target}.")
        self.classes_, y = np.unique(y, return_inverse=True)
        if len(self.classes_) != 2:
            raise ValueError(f"BinaryLogistic needs exactly 2 classes, received "
                             f"{len(self.classes_)} class{'es' if len(self.classes_) > 1 else ''}")
        y = y.astype(np.float64)
        design = np.hstack([x, np.ones((len(x), 1))])
        penalty = np.r_[np.ones(x.shape[1]), 0.0]
        previous = getattr(self, "beta_", None)
        beta = previous.copy() if self.warm_start and previous is not None and \
            len(previous) == design.shape[1] else np.zeros(design.shape[1])
        value = self._objective(design, y, beta, penalty)
        iterations = 0
        while iterations < int(self.max_iter):
            iterations += 1
            p = expit(design @ beta)
            gradient = penalty * beta + self.C * design.T @ (p - y)
            hessian = self.C * (design.T * (p * (1 - p))) @ design + np.diag(penalty)
            hessian[-1, -1] += 1e-12  # the unpenalised intercept of a separable fold
            step = np.linalg.solve(hessian, gradient)
            size = 1.0
            while size > 1e-10:
                candidate = beta - size * step
                new = self._objective(design, y, candidate, penalty)
                if new <= value:
                    break
                size *= 0.5
            beta, value = candidate, new
            if np.max(np.abs(size * step)) < self.tol:
                break
        self.beta_, self.n_iter_ = beta, iterations
        self.coef_, self.intercept_ = beta[None, :-1], beta[-1:]
        return self

    def decision_function(self, x):
        check_is_fitted(self)
        x = _check_x(self, x, reset=False)
        return x @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, x):
        from scipy.special import expit

        p = expit(self.decision_function(x))
        return np.column_stack([1.0 - p, p])

    def predict(self, x):
        positive = self.decision_function(x) > 0
        return self.classes_[positive.astype(int)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags
