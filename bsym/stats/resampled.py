"""Corrected resampled t-test (Nadeau & Bengio, 2003) for paired CV scores.

The folds of a (repeated) K-fold cross-validation share training data, so the
per-fold differences between two models are correlated and the naive paired
t-test underestimates their variance. Nadeau & Bengio replace the variance of
the mean, sigma^2 / n, with

    sigma^2 * (1 / n + n_test / n_train),   n = k * r (k folds x r repeats),

and keep Student's t with n - 1 degrees of freedom.

References
----------
Nadeau, C. & Bengio, Y. (2003). Inference for the generalization error.
Machine Learning 52, 239-281.
Bouckaert, R. R. & Frank, E. (2004). Evaluating the replicability of significance
tests for comparing learning algorithms. PAKDD, LNCS 3056, 3-12.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from bsym.stats.errors import StatsError

__all__ = ["CorrectedTTest", "corrected_resampled_ttest", "corrected_se", "paired_differences",
           "split_ratio"]


@dataclass(frozen=True)
class CorrectedTTest:
    """Result of :func:`corrected_resampled_ttest` (differences are ``a - b``).

    Attributes
    ----------
    mean : float
        Mean of the paired differences.
    se : float
        Corrected standard error ``sqrt(var(d) * (1/n + n_test/n_train))``.
    t : float
        ``mean / se``.
    df : int
        Degrees of freedom, ``n - 1``.
    pvalue : float
        Two-sided p-value from Student's t with ``df`` degrees of freedom.
    ci_low, ci_high : float
        Confidence interval of the mean difference, ``mean -/+ t_{df} * se``.
    confidence : float
        Level of that interval.
    n : int
        Number of paired scores (folds x repeats).
    ratio : float
        The ``n_test / n_train`` used in the correction (averaged over folds).
    """

    mean: float
    se: float
    t: float
    df: int
    pvalue: float
    ci_low: float
    ci_high: float
    confidence: float
    n: int
    ratio: float


def paired_differences(a, b=None) -> np.ndarray:
    """Return ``a - b`` (or ``a`` itself when ``b`` is None) as a checked float vector.

    Raises
    ------
    StatsError
        Different lengths, fewer than 2 pairs, or a non-finite score.
    """
    a = np.asarray(a, dtype=float).ravel()
    if b is not None:
        b = np.asarray(b, dtype=float).ravel()
        if a.shape != b.shape:
            raise StatsError(f"paired scores must have equal lengths; received {a.size} and {b.size}")
        a = a - b
    if a.size < 2:
        raise StatsError(f"a paired test needs at least 2 paired scores (folds); received {a.size}")
    if not np.all(np.isfinite(a)):
        raise StatsError(f"scores must be finite; received {int(np.sum(~np.isfinite(a)))} NaN/Inf values")
    return a


def split_ratio(n_train, n_test) -> float:
    """Mean of ``n_test / n_train`` over folds (scalars or one value per fold)."""
    n_train = np.asarray(n_train, dtype=float).ravel()
    n_test = np.asarray(n_test, dtype=float).ravel()
    if not (np.all(np.isfinite(n_train)) and np.all(n_train > 0)
            and np.all(np.isfinite(n_test)) and np.all(n_test > 0)):
        raise StatsError("n_train and n_test must be positive and finite; "
                         f"received n_train={n_train.tolist()}, n_test={n_test.tolist()}")
    return float(np.mean(n_test / n_train))


def corrected_se(d, ratio: float) -> float:
    """Nadeau-Bengio corrected standard error of the mean of ``d``.

    ``se = sqrt(var(d, ddof=1) * (1/n + ratio))`` with ``ratio = n_test / n_train``;
    ``ratio = 0`` gives the naive ``sd / sqrt(n)``.
    """
    d = np.asarray(d, dtype=float)
    if np.all(d == d[0]):  # exactly 0, not the rounding error of np.var
        return 0.0
    return math.sqrt(float(np.var(d, ddof=1)) * (1.0 / d.size + ratio))


def corrected_resampled_ttest(a, b=None, *, n_train, n_test, confidence: float = 0.95) -> CorrectedTTest:
    r"""Corrected resampled t-test of paired cross-validation scores.

    With per-fold differences :math:`d_j = a_j - b_j`, :math:`j = 1..n`, :math:`n = kr`,

    .. math::

        t = \frac{\bar d}{\sqrt{\hat\sigma^2 (1/n + n_{test}/n_{train})}},
        \qquad t \sim t_{n-1} \text{ under } H_0: E[d] = 0,

    where :math:`\hat\sigma^2` is the sample variance of the :math:`d_j` (ddof 1).
    The same standard error gives the confidence interval of :math:`\bar d`.

    Parameters
    ----------
    a, b : array_like
        Scores of the two models on the same folds, in the same order; or ``a``
        alone holding the differences (``b=None``).
    n_train, n_test : float or array_like
        Training and test set sizes, scalars or one per fold; the ratio
        ``n_test / n_train`` is averaged over folds. ``n_test=0`` gives the naive
        paired t-test.
    confidence : float
        Level of the confidence interval.

    Returns
    -------
    CorrectedTTest
        When all differences are equal the standard error is 0: ``t`` is 0 (p = 1)
        if they are all 0, else +/-inf (p = 0).

    References
    ----------
    Nadeau & Bengio (2003), Machine Learning 52:239-281, eq. for the "corrected
    resampled t" statistic; Bouckaert & Frank (2004).
    """
    d = paired_differences(a, b)
    if np.all(np.asarray(n_test) == 0):
        ratio = 0.0
    else:
        ratio = split_ratio(n_train, n_test)
    if not 0 < confidence < 1:
        raise StatsError(f"confidence must be in (0, 1); received {confidence}")
    n = d.size
    df = n - 1
    mean = float(np.mean(d))
    se = corrected_se(d, ratio)
    if se > 0:
        t = mean / se
        pvalue = float(2 * stats.t.sf(abs(t), df))
    else:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        pvalue = 1.0 if mean == 0 else 0.0
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return CorrectedTTest(mean=mean, se=se, t=t, df=df, pvalue=pvalue, ci_low=mean - half,
                          ci_high=mean + half, confidence=confidence, n=n, ratio=ratio)


#: Where a score can lie. A t-interval over a few folds is clipped to it: an AUROC interval
#: reaching 1.4 says only that the folds disagree, which the clipped interval still shows.
METRIC_RANGE = {"auroc": (0.0, 1.0), "balanced_accuracy": (0.0, 1.0), "accuracy": (0.0, 1.0),
                "f1": (0.0, 1.0), "pearson_r": (-1.0, 1.0), "spearman_r": (-1.0, 1.0),
                "r2": (-math.inf, 1.0), "ari": (-1.0, 1.0), "knn_accuracy": (0.0, 1.0)}


def clip_interval(metric, low, high):
    """``(low, high)`` clipped to the range ``metric`` can take (unchanged when unknown)."""
    lo, hi = METRIC_RANGE.get(str(metric), (-math.inf, math.inf))
    return max(low, lo), min(high, hi)
