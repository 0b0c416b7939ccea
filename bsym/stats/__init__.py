"""Statistical comparison of models, computed from the long result table.

Per dataset and task (:func:`pairwise_tests`): corrected resampled t-test
(Nadeau & Bengio 2003), Wilcoxon signed-rank, Holm correction, effect sizes and
confidence intervals, Bayesian correlated t-test with a ROPE (Corani & Benavoli
2015). Across datasets and tasks (:func:`rank_tests`): Friedman test, Nemenyi
critical difference and its diagram (Demsar 2006). :func:`summary` gives every
mean with its spread and interval.

Examples
--------
>>> from bsym import stats
>>> table = stats.pairwise_tests(results, "auroc")               # doctest: +SKIP
>>> ranks = stats.rank_tests(results, "auroc")                   # doctest: +SKIP
>>> stats.plot_critical_difference(ranks, "cd_auroc.pdf")        # doctest: +SKIP
"""

from bsym.stats.bayes import BayesianTTest, bayesian_correlated_ttest
from bsym.stats.compare import (
    HIGHER_IS_BETTER,
    REQUIRED_COLUMNS,
    RankTests,
    holm,
    pairwise_tests,
    plot_critical_difference,
    rank_tests,
    summary,
)
from bsym.stats.errors import StatsError
from bsym.stats.rank import (
    FEW_BLOCKS,
    FriedmanResult,
    cd_diagram,
    cd_groups,
    friedman_test,
    min_blocks_for_significance,
    nemenyi_critical_difference,
    nemenyi_pvalues,
    rank_scores,
)
from bsym.stats.resampled import CorrectedTTest, corrected_resampled_ttest

__all__ = [
    "FEW_BLOCKS",
    "HIGHER_IS_BETTER",
    "REQUIRED_COLUMNS",
    "BayesianTTest",
    "CorrectedTTest",
    "FriedmanResult",
    "RankTests",
    "StatsError",
    "bayesian_correlated_ttest",
    "cd_diagram",
    "cd_groups",
    "corrected_resampled_ttest",
    "friedman_test",
    "holm",
    "min_blocks_for_significance",
    "nemenyi_critical_difference",
    "nemenyi_pvalues",
    "pairwise_tests",
    "plot_critical_difference",
    "rank_scores",
    "rank_tests",
    "summary",
]
