"""Bayesian correlated t-test with a region of practical equivalence (ROPE).

Corani & Benavoli (2015) model the k*r cross-validation differences as
correlated Gaussians with correlation ``rho = n_test / (n_test + n_train)``.
Under the non-informative prior the posterior of the mean difference is

    mu | d ~ Student-t(df = n - 1, loc = mean(d), scale = sqrt((1/n + rho/(1-rho)) * var(d))),

(``rho / (1 - rho) = n_test / n_train``, the Nadeau-Bengio correction). Its mass
below ``-rope``, within ``[-rope, rope]`` and above ``rope`` gives the
probabilities that one model is better, that they are practically equivalent,
or that the other is better.

References
----------
Corani, G. & Benavoli, A. (2015). A Bayesian approach for comparing
cross-validated algorithms on multiple data sets. Machine Learning 100, 285-304.
Benavoli, A., Corani, G., Demsar, J. & Zaffalon, M. (2017). Time for a change: a
tutorial for comparing multiple classifiers through Bayesian analysis. JMLR 18(77).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from bsym.stats.errors import StatsError
from bsym.stats.resampled import corrected_se, paired_differences, split_ratio

__all__ = ["BayesianTTest", "bayesian_correlated_ttest"]


@dataclass(frozen=True)
class BayesianTTest:
    """Posterior of the mean difference ``a - b`` and the three probabilities.

    Attributes
    ----------
    mean, scale : float
        Location and scale of the Student-t posterior (scale 0: a point mass).
    df : int
        Its degrees of freedom, ``n - 1``.
    rope : float
        Half-width of the region of practical equivalence, in metric units.
    p_a_better, p_rope, p_b_better : float
        Posterior probabilities; they sum to 1. "Better" follows ``higher_is_better``.
    rho : float
        Correlation between folds used, ``n_test / (n_test + n_train)``.
    """

    mean: float
    scale: float
    df: int
    rope: float
    p_a_better: float
    p_rope: float
    p_b_better: float
    rho: float

    @property
    def posterior(self):
        """The posterior of ``a - b`` as a frozen :data:`scipy.stats.t` (needs ``scale > 0``)."""
        return stats.t(self.df, loc=self.mean, scale=self.scale)


def bayesian_correlated_ttest(a, b=None, *, n_train, n_test, rope: float = 0.01,
                              higher_is_better: bool = True) -> BayesianTTest:
    r"""Bayesian correlated t-test of paired cross-validation scores.

    .. math::

        \mu \mid d \sim t_{n-1}\!\left(\bar d,\;
        \sqrt{\left(\tfrac1n + \tfrac{\rho}{1-\rho}\right)\hat\sigma^2}\right),
        \qquad \rho = \frac{n_{test}}{n_{test} + n_{train}}

    :math:`P(\mu > r)`, :math:`P(|\mu| \le r)` and :math:`P(\mu < -r)` are read
    from its CDF (:math:`r` = ``rope``; with ``higher_is_better=False`` the first and
    last swap roles).

    Parameters
    ----------
    a, b : array_like
        Scores of the two models on the same folds (or ``a`` = differences, ``b=None``).
    n_train, n_test : float or array_like
        Set sizes, scalars or per fold (``n_test / n_train`` is averaged).
    rope : float
        Half-width of the ROPE in metric units, >= 0 (e.g. 0.01 = one point of
        accuracy, as in Benavoli et al. 2017).
    higher_is_better : bool
        Orientation of the metric.

    Returns
    -------
    BayesianTTest
        With zero variance the posterior is a point mass at the mean difference.

    References
    ----------
    Corani & Benavoli (2015), Machine Learning 100:285-304; Benavoli et al. (2017),
    JMLR 18(77), section 3.
    """
    d = paired_differences(a, b)
    if not (math.isfinite(rope) and rope >= 0):
        raise StatsError(f"rope must be a finite number >= 0; received {rope}")
    ratio = split_ratio(n_train, n_test)
    rho = ratio / (1 + ratio)
    mean = float(np.mean(d))
    scale = corrected_se(d, ratio)
    if scale > 0:
        post = stats.t(d.size - 1, loc=mean, scale=scale)
        above, below = float(post.sf(rope)), float(post.cdf(-rope))
    else:
        above, below = float(mean > rope), float(mean < -rope)
    inside = max(0.0, 1.0 - above - below)
    p_a, p_b = (above, below) if higher_is_better else (below, above)
    return BayesianTTest(mean=mean, scale=scale, df=d.size - 1, rope=float(rope), p_a_better=p_a,
                         p_rope=inside, p_b_better=p_b, rho=rho)
