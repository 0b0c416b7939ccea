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

Names are resolved lazily (PEP 562), so importing ``bsym.stats`` or its command line
(``bsym.stats.cli``) imports neither pandas nor scipy.
"""

from bsym._lazy import lazy_exports

_EXPORTS = {
    "BayesianTTest": "bsym.stats.bayes",
    "bayesian_correlated_ttest": "bsym.stats.bayes",
    "HIGHER_IS_BETTER": "bsym.stats.compare",
    "REQUIRED_COLUMNS": "bsym.stats.compare",
    "RankTests": "bsym.stats.compare",
    "holm": "bsym.stats.compare",
    "pairwise_tests": "bsym.stats.compare",
    "plot_critical_difference": "bsym.stats.compare",
    "rank_tests": "bsym.stats.compare",
    "summary": "bsym.stats.compare",
    "StatsError": "bsym.stats.errors",
    "FEW_BLOCKS": "bsym.stats.rank",
    "FriedmanResult": "bsym.stats.rank",
    "cd_diagram": "bsym.stats.rank",
    "cd_groups": "bsym.stats.rank",
    "friedman_test": "bsym.stats.rank",
    "min_blocks_for_significance": "bsym.stats.rank",
    "nemenyi_critical_difference": "bsym.stats.rank",
    "nemenyi_pvalues": "bsym.stats.rank",
    "rank_scores": "bsym.stats.rank",
    "CorrectedTTest": "bsym.stats.resampled",
    "corrected_resampled_ttest": "bsym.stats.resampled",
}

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
