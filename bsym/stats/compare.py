"""Table-level statistics: every comparison computed from the long result table.

The tests read the long result table (:mod:`bsym.evaluate.results`): one row per
model x dataset x task x protocol x split seed x fold, with ``n_train``, ``n_test``
and either one column per metric (wide) or a ``metric`` column beside a ``value``
(or ``score``) column (long). Give them real scores only
(:func:`bsym.stats.controls.real_rows`), with a model's view in its label
(``model:view``): the rest of the result table's key (view, control, checkpoint,
replicate) does not tell rows apart here, and two rows of one model on one split are
refused. Scores are paired by (seed, fold): every model of a comparison must have a
score on every split the others have, on splits of the same size, or the comparison
is refused with the row that is missing.

Protocols (``linear_probe``, ``finetune``, ``supervised``) are never mixed
silently: pairwise tests compare models within one protocol, rank tests refuse
a table with several, unless ``mix_protocols=True``, which compares
``"model [protocol]"`` entries instead.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from bsym.evaluate.results import KEY_COLUMNS
from bsym.stats.bayes import bayesian_correlated_ttest
from bsym.stats.errors import StatsError
from bsym.stats.rank import (
    FEW_BLOCKS,
    cd_diagram,
    cd_groups,
    friedman_test,
    min_blocks_for_significance,
    nemenyi_critical_difference,
    nemenyi_pvalues,
    rank_scores,
)
from bsym.stats.resampled import clip_interval, corrected_resampled_ttest, corrected_se

__all__ = ["HIGHER_IS_BETTER", "REQUIRED_COLUMNS", "RankTests", "holm", "pairwise_tests",
           "plot_critical_difference", "rank_tests", "summary"]

#: Key columns of the result table that the tests do not tell apart: the view is part of
#: the model's label (``model:view``) and only real scores (no control, the final checkpoint,
#: no permutation replicate) are compared.
_FOLDED_KEY = ("view", "control", "checkpoint", "replicate")
#: One score per model x dataset x task x protocol x seed x fold.
_KEY = tuple(column for column in KEY_COLUMNS if column not in _FOLDED_KEY)
#: Columns every result table must have (plus the metric, wide or long).
REQUIRED_COLUMNS = (*_KEY, "n_train", "n_test")

#: Orientation of the metrics bsym writes; others need ``higher_is_better`` given.
HIGHER_IS_BETTER = {
    **dict.fromkeys(["acc", "accuracy", "balanced_accuracy", "f1", "f1_macro", "auroc", "auc", "roc_auc",
                     "pearson", "pearson_r", "rho", "spearman", "spearman_r", "r2", "ari", "nmi",
                     "knn_accuracy"], True),
    **dict.fromkeys(["mse", "rmse", "mae", "loss", "log_loss", "brier"], False),
}


# --------------------------------------------------------------------------- input checks
def _direction(metric: str, higher_is_better) -> bool:
    if isinstance(higher_is_better, Mapping):
        higher_is_better = higher_is_better.get(metric)
    if higher_is_better is None:
        if metric.lower() not in HIGHER_IS_BETTER:
            raise StatsError(f"cannot tell whether a higher {metric!r} is better: pass "
                             "higher_is_better=True or False (known metrics: "
                             f"{', '.join(sorted(HIGHER_IS_BETTER))})")
        return HIGHER_IS_BETTER[metric.lower()]
    return bool(higher_is_better)


def _where(row) -> str:
    return ", ".join(f"{name} {row[name]!r}" for name in _KEY if name in row)


def _scores(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Key columns, n_train, n_test and ``score`` for one metric; rows of tasks without it dropped."""
    frame = _metric_rows(results, metric).reset_index(drop=True)
    try:
        frame["score"] = pd.to_numeric(frame["score"])
    except (TypeError, ValueError) as err:
        raise StatsError(f"metric {metric!r} must be numeric: {err}") from None
    # a task that does not report this metric (e.g. AUROC of a regression task) is left out
    reported = frame["score"].notna().groupby([frame["dataset"], frame["task"]]).transform("any")
    frame = frame[reported]
    if frame.empty:
        raise StatsError(f"no row of the result table has a value for metric {metric!r}")
    _check_scores(frame, metric)
    return frame


def _metric_rows(results, metric) -> pd.DataFrame:
    """The required columns and ``score``, from a wide table (a column per metric) or a long
    one (``metric`` beside ``value`` or ``score``)."""
    if not isinstance(results, pd.DataFrame):
        raise StatsError("expected the result table as a pandas DataFrame; received "
                         f"{type(results).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in results.columns]
    if missing:
        raise StatsError(f"the result table lacks columns {missing}; expected {list(REQUIRED_COLUMNS)} "
                         f"and one column per metric; received {list(results.columns)}")
    if metric in results.columns:
        return results.loc[:, list(REQUIRED_COLUMNS)].assign(score=results[metric])
    if "metric" in results.columns and ({"value", "score"} & set(results.columns)):
        value = "value" if "value" in results.columns else "score"
        rows = results[results["metric"] == metric]
        if rows.empty:
            raise StatsError(f"metric {metric!r} not in the result table; received metrics "
                             f"{sorted(map(str, results['metric'].unique()))}")
        return rows.loc[:, list(REQUIRED_COLUMNS)].assign(score=rows[value])
    known = [c for c in results.columns if c not in REQUIRED_COLUMNS and c != "metric"]
    raise StatsError(f"metric {metric!r} is not a column of the result table; received columns {known}")


def _check_scores(frame, metric):
    """Refuse a missing or infinite score, two rows of one split, a non-positive split size."""
    bad = frame[~np.isfinite(frame["score"].to_numpy(dtype=float))]
    if not bad.empty:
        raise StatsError(f"{metric} is missing or not finite for {_where(bad.iloc[0])} "
                         f"({len(bad)} such rows); every fold needs a score")
    dup = frame.duplicated(list(_KEY), keep=False)
    if dup.any():
        raise StatsError(f"the result table has {int(dup.sum())} rows for the same split, e.g. "
                         f"{_where(frame[dup].iloc[0])}; expected one row per model x dataset x task x "
                         "protocol x seed x fold")
    sizes = frame[["n_train", "n_test"]].to_numpy(dtype=float)
    if not (np.all(np.isfinite(sizes)) and np.all(sizes > 0)):
        row = frame[~(np.isfinite(sizes) & (sizes > 0)).all(axis=1)].iloc[0]
        raise StatsError(f"n_train and n_test must be positive; received n_train={row['n_train']}, "
                         f"n_test={row['n_test']} for {_where(row)}")


def _entities(frame: pd.DataFrame, mix_protocols: bool) -> pd.DataFrame:
    """Add the compared entity: the model, or ``model [protocol]`` when protocols are mixed."""
    frame = frame.copy()
    if mix_protocols:
        frame["entity"] = frame["model"].astype(str) + " [" + frame["protocol"].astype(str) + "]"
        frame["group_protocol"] = "mixed"
    else:
        frame["entity"] = frame["model"].astype(str)
        frame["group_protocol"] = frame["protocol"].astype(str)
    return frame


def _paired_matrix(group: pd.DataFrame, where: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores as (seed, fold) x entity, refusing a missing split or splits of different sizes."""
    splits = group.set_index(["seed", "fold"])
    every = sorted(set(splits.index), key=lambda s: (str(s[0]), str(s[1])))
    for entity, rows in splits.groupby("entity", sort=True):
        have = set(rows.index)
        lacking = [s for s in every if s not in have]
        if lacking:
            seed, fold = lacking[0]
            other = splits.loc[[lacking[0]], "entity"].iloc[0]
            raise StatsError(
                f"unpaired results: model {entity!r} has no score for {where}, seed {seed!r}, fold "
                f"{fold!r} (model {other!r} has one; {len(lacking)} split(s) missing in all). Paired tests "
                "need every model on every split: rerun the missing folds or drop the split for all models")
    sizes = splits.groupby(level=["seed", "fold"])[["n_train", "n_test"]].nunique()
    uneven = sizes[(sizes > 1).any(axis=1)]
    if not uneven.empty:
        seed, fold = uneven.index[0]
        rows = splits.loc[[(seed, fold)]]
        detail = "; ".join(f"{r.entity}: n_train={r.n_train}, n_test={r.n_test}" for r in rows.itertuples())
        raise StatsError(f"models were not scored on the same split for {where}, seed {seed!r}, fold "
                         f"{fold!r}: {detail}. Paired tests need identical splits")
    scores = splits.pivot_table(index=["seed", "fold"], columns="entity", values="score", aggfunc="first")
    size = splits.groupby(level=["seed", "fold"])[["n_train", "n_test"]].first()
    return scores.sort_index(), size.loc[scores.sort_index().index]


def _describe(dataset, task, protocol) -> str:
    return f"dataset {dataset!r}, task {task!r}, protocol {protocol!r}"


# --------------------------------------------------------------------------- summary
def summary(results: pd.DataFrame, metric: str, *, confidence: float = 0.95,
            ci: str = "corrected") -> pd.DataFrame:
    r"""Mean, spread and confidence interval per model x dataset x task x protocol.

    ``ci="corrected"`` (default) uses the Nadeau-Bengio standard error of a
    resampled cross-validation estimate, :math:`sd\sqrt{1/n + n_{test}/n_{train}}`;
    ``ci="naive"`` uses :math:`sd/\sqrt n`, which treats the overlapping folds as
    independent and is too narrow. Both use Student's t with n - 1 df.

    Parameters
    ----------
    results : DataFrame
        The long result table.
    metric : str
        Metric column (or ``metric`` value in a long table).
    confidence : float
        Level of the interval.
    ci : {"corrected", "naive"}

    Returns
    -------
    DataFrame
        Columns ``dataset, task, protocol, model, metric, n, n_seeds, mean, sd, se,
        ci_low, ci_high, ci_method``; ``sd`` and the interval are NaN when n = 1.
    """
    if ci not in ("corrected", "naive"):
        raise StatsError(f"ci must be 'corrected' or 'naive'; received {ci!r}")
    if not 0 < confidence < 1:
        raise StatsError(f"confidence must be in (0, 1); received {confidence}")
    frame = _scores(results, metric)
    rows = []
    for (dataset, task, protocol, model), g in frame.groupby(["dataset", "task", "protocol", "model"],
                                                              sort=True):
        x = g["score"].to_numpy(dtype=float)
        n = x.size
        ratio = float(np.mean(g["n_test"] / g["n_train"])) if ci == "corrected" else 0.0
        sd = float(np.std(x, ddof=1)) if n > 1 else math.nan
        se = corrected_se(x, ratio) if n > 1 else math.nan
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se if n > 1 else math.nan
        mean = float(np.mean(x))
        ci_low, ci_high = clip_interval(metric, mean - half, mean + half)
        rows.append(dict(dataset=dataset, task=task, protocol=protocol, model=model, metric=metric, n=n,
                         n_seeds=g["seed"].nunique(), mean=mean, sd=sd, se=se,
                         ci_low=ci_low, ci_high=ci_high, ci_method=ci))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- pairwise
def _wilcoxon(d: np.ndarray, zero_method: str) -> tuple[float, float]:
    if np.all(d == 0):
        return 0.0, 1.0
    res = stats.wilcoxon(d, zero_method=zero_method, alternative="two-sided")
    return float(res.statistic), float(res.pvalue)


def holm(pvalues) -> np.ndarray:
    r"""Holm's (1979) step-down adjusted p-values.

    With the m p-values sorted ascending, :math:`\tilde p_{(i)} = \max_{j \le i}
    \min(1, (m - j + 1) p_{(j)})`, returned in the input order. Equal to
    ``statsmodels.stats.multitest.multipletests(p, method="holm")[1]`` (tested),
    without its per-call ``gc.collect()`` (about 0.1 s each in a large process).
    """
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * np.arange(p.size, 0, -1)))
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out


def _d_av(a: np.ndarray, b: np.ndarray) -> float:
    diff = float(np.mean(a - b))
    scale = math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
    if scale > 0:
        return diff / scale
    return 0.0 if diff == 0 else math.copysign(math.inf, diff)


def pairwise_tests(results: pd.DataFrame, metric: str, higher_is_better: bool | None = None, *,
                   rope: float = 0.01, confidence: float = 0.95, mix_protocols: bool = False,
                   holm_family: str = "comparison", zero_method: str = "wilcox") -> pd.DataFrame:
    r"""Every pair of models on every dataset x task (x protocol), paired by seed and fold.

    For each pair (A, B), with per-split differences :math:`d = A - B` (n = folds x repeats):

    - corrected resampled t-test (Nadeau & Bengio 2003):
      :math:`t = \bar d / \sqrt{s_d^2(1/n + n_{test}/n_{train})}`, df = n - 1, and
      the confidence interval :math:`\bar d \pm t_{n-1} \cdot se`;
    - Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`; all-zero
      differences give p = 1);
    - Holm's step-down adjustment of both p-values over the family of pairs
      (:func:`holm`, equal to statsmodels' ``multipletests(method="holm")``);
    - effect sizes: ``mean_diff`` in metric units and Cohen's
      :math:`d_{av} = \bar d / \sqrt{(s_A^2 + s_B^2)/2}` (Lakens 2013), the mean
      difference over the average SD of the two models' fold scores;
    - Bayesian correlated t-test with a ROPE (Corani & Benavoli 2015):
      ``p_a_better``, ``p_rope``, ``p_b_better``.

    Parameters
    ----------
    results : DataFrame
        The long result table (see module docstring).
    metric : str
        Metric to compare (a column, or a ``metric`` value of a long table).
    higher_is_better : bool, optional
        Orientation; default looked up in :data:`HIGHER_IS_BETTER`, else an error.
        Only ``better`` and the Bayesian probabilities depend on it.
    rope : float
        Half-width of the region of practical equivalence, in metric units.
    confidence : float
        Level of the interval of the mean difference.
    mix_protocols : bool
        Compare ``model [protocol]`` entries across protocols instead of within each.
    holm_family : {"comparison", "all"}
        Holm-adjust over the pairs of one dataset x task x protocol, or over every row.
    zero_method : str
        Passed to :func:`scipy.stats.wilcoxon` (``"wilcox"``, ``"pratt"``, ``"zsplit"``).

    Returns
    -------
    DataFrame
        One row per dataset x task x protocol x pair (``model_a < model_b``), columns
        ``dataset, task, protocol, metric, higher_is_better, model_a, model_b, n,
        n_seeds, test_train_ratio, mean_a, mean_b, mean_diff, se, ci_low, ci_high,
        d_av, t, df, p, p_holm, wilcoxon_stat, wilcoxon_p, wilcoxon_p_holm, rope,
        p_a_better, p_rope, p_b_better, better`` (``better``: the model with the
        better mean, no significance implied; None on an exact tie).

    Raises
    ------
    StatsError
        Unpaired or duplicated rows, unequal split sizes, a missing score, an
        unknown metric orientation.
    """
    if holm_family not in ("comparison", "all"):
        raise StatsError(f"holm_family must be 'comparison' or 'all'; received {holm_family!r}")
    higher = _direction(metric, higher_is_better)
    frame = _entities(_scores(results, metric), mix_protocols)
    rows = []
    for (dataset, task, protocol), group in frame.groupby(["dataset", "task", "group_protocol"], sort=True):
        where = _describe(dataset, task, protocol)
        scores, sizes = _paired_matrix(group, where)
        seeds = scores.index.get_level_values("seed").nunique()
        for model_a, model_b in itertools.combinations(sorted(scores.columns), 2):
            tests = _pair_tests(scores[model_a].to_numpy(), scores[model_b].to_numpy(), sizes,
                                seeds, higher=higher, rope=rope, confidence=confidence,
                                zero_method=zero_method, where=f"{model_a!r} vs {model_b!r} on {where}")
            oriented = tests["mean_diff"] if higher else -tests["mean_diff"]
            rows.append(dict(
                dataset=dataset, task=task, protocol=protocol, metric=metric, higher_is_better=higher,
                model_a=model_a, model_b=model_b, **tests,
                better=model_a if oriented > 0 else model_b if oriented < 0 else None))
    table = pd.DataFrame(rows)
    if table.empty:
        raise StatsError(f"no pair of models to compare on {metric!r}: every dataset x task x protocol "
                         "has a single model (pass mix_protocols=True to compare across protocols)")
    _holm_adjust(table, ["dataset", "task", "protocol"] if holm_family == "comparison" else None)
    return table


def _pair_tests(a, b, sizes, seeds, *, higher, rope, confidence, zero_method, where) -> dict:
    """The tests of one pair's paired scores ``a`` and ``b`` (over ``seeds`` split seeds),
    as columns of :func:`pairwise_tests`."""
    try:
        tt = corrected_resampled_ttest(a, b, n_train=sizes["n_train"], n_test=sizes["n_test"],
                                       confidence=confidence)
        bayes = bayesian_correlated_ttest(a, b, n_train=sizes["n_train"], n_test=sizes["n_test"],
                                          rope=rope, higher_is_better=higher)
    except StatsError as err:
        raise StatsError(f"{where}: {err}") from None
    w_stat, w_p = _wilcoxon(a - b, zero_method)
    return dict(n=tt.n, n_seeds=seeds, test_train_ratio=tt.ratio, mean_a=float(a.mean()),
                mean_b=float(b.mean()), mean_diff=tt.mean, se=tt.se, ci_low=tt.ci_low, ci_high=tt.ci_high,
                d_av=_d_av(a, b), t=tt.t, df=tt.df, p=tt.pvalue, p_holm=math.nan,
                wilcoxon_stat=w_stat, wilcoxon_p=w_p, wilcoxon_p_holm=math.nan, rope=float(rope),
                p_a_better=bayes.p_a_better, p_rope=bayes.p_rope, p_b_better=bayes.p_b_better)


def _holm_adjust(table, keys):
    """Fill ``p_holm`` and ``wilcoxon_p_holm`` by Holm over each ``keys`` group (None: all rows)."""
    for raw, adjusted in (("p", "p_holm"), ("wilcoxon_p", "wilcoxon_p_holm")):
        groups = table.groupby(keys, sort=False) if keys else [(None, table)]
        for _, g in groups:
            table.loc[g.index, adjusted] = holm(g[raw].to_numpy())


# --------------------------------------------------------------------------- ranks
@dataclass(frozen=True)
class RankTests:
    """Friedman + Nemenyi comparison of models over blocks (dataset x task).

    Attributes
    ----------
    metric : str or dict
        Metric ranked (or task -> metric).
    scores : DataFrame
        Mean score over seeds and folds (metric units), blocks (dataset, task) x models.
    ranks : DataFrame
        Ranks within each block, 1 = best, ties averaged.
    mean_ranks : Series
        Mean rank per model, best first.
    n_blocks, n_models : int
        N and k.
    statistic, pvalue : float
        Friedman chi^2_F (df = k - 1) and its p-value.
    iman_davenport, iman_davenport_pvalue : float
        F_F with (k - 1, (k - 1)(N - 1)) df and its p-value.
    alpha, q_alpha, cd : float
        Nemenyi level, studentized-range quantile / sqrt(2), critical difference.
    nemenyi_p : DataFrame
        Pairwise Nemenyi p-values.
    groups : list of tuple
        Maximal groups of models not significantly different (mean ranks within < CD).
    tie_correction : bool
        Whether chi^2_F is tie-corrected.
    """

    metric: object
    scores: pd.DataFrame
    ranks: pd.DataFrame
    mean_ranks: pd.Series
    n_blocks: int
    n_models: int
    statistic: float
    pvalue: float
    iman_davenport: float
    iman_davenport_pvalue: float
    alpha: float
    q_alpha: float
    cd: float
    nemenyi_p: pd.DataFrame
    groups: list = field(default_factory=list)
    tie_correction: bool = True

    def table(self) -> pd.DataFrame:
        """One row per model: mean rank, rank SD over blocks, and the groups it belongs to."""
        member = {m: [i + 1 for i, g in enumerate(self.groups) if m in g] for m in self.mean_ranks.index}
        return pd.DataFrame({
            "model": self.mean_ranks.index,
            "mean_rank": self.mean_ranks.to_numpy(),
            "rank_sd": self.ranks[self.mean_ranks.index].std(ddof=1).to_numpy(),
            "groups": [",".join(map(str, member[m])) for m in self.mean_ranks.index],
        })

    @property
    def min_blocks(self) -> int:
        """Fewest blocks at which any difference among these k models could be significant
        (:func:`~bsym.stats.rank.min_blocks_for_significance`)."""
        return min_blocks_for_significance(self.n_models, self.alpha)

    @property
    def can_be_significant(self) -> bool:
        """Whether the CD is below the largest possible mean-rank difference, k - 1."""
        return self.cd < self.n_models - 1

    def few_blocks_note(self) -> str | None:
        """A sentence on what these N blocks cannot show, or None when N > :data:`FEW_BLOCKS`
        and a difference can be significant."""
        k, n = self.n_models, self.n_blocks
        if not self.can_be_significant:
            return (f"Too few blocks to conclude: with N = {n} dataset x task blocks and k = {k} "
                    f"models the critical difference CD = {self.cd:.2f} exceeds the largest "
                    f"possible mean-rank difference ({k - 1}), so no difference can be "
                    f"significant (Nemenyi, alpha = {self.alpha:g}); it takes N >= "
                    f"{self.min_blocks} blocks before even a model first in every block can "
                    "differ from one last in every block. The ranks are descriptive only.")
        if n <= FEW_BLOCKS:
            return (f"Few blocks: N = {n} dataset x task blocks (Demsar 2006 asks for N > "
                    f"{FEW_BLOCKS} for the Friedman chi^2 approximation); only mean-rank "
                    f"differences above CD = {self.cd:.2f} of at most {k - 1} are significant, "
                    "so read the ranks with care.")
        return None


def rank_tests(results: pd.DataFrame, metric, higher_is_better=None, *, alpha: float = 0.05,
               mix_protocols: bool = False, tie_correction: bool = True) -> RankTests:
    r"""Friedman test and Nemenyi post-hoc comparison of models across datasets and tasks.

    Each block is one dataset x task; a model's score in a block is its mean over
    seeds and folds (the models must be paired within the block). Models are
    ranked within each block (1 = best, ties averaged) and compared by mean rank:

    .. math::

        \chi^2_F = \frac{12N}{k(k+1)}\Big[\sum_j R_j^2 - \frac{k(k+1)^2}{4}\Big],\quad
        F_F = \frac{(N-1)\chi^2_F}{N(k-1)-\chi^2_F},\quad
        CD = \frac{Q_{1-\alpha}(k,\infty)}{\sqrt2}\sqrt{\frac{k(k+1)}{6N}}

    (Demsar 2006). Demsar recommends N > 10 blocks and k > 5 models for the chi^2
    approximation; ``iman_davenport`` is the less conservative F form.

    Parameters
    ----------
    results : DataFrame
        The long result table.
    metric : str or Mapping[str, str]
        Metric to rank by, or task -> metric (e.g. AUROC for classification tasks,
        Pearson r for regression tasks: ranks are scale-free). Tasks that do not
        report the metric, or that the mapping does not name, are left out.
    higher_is_better : bool or Mapping[str, bool], optional
        Orientation, per metric when a mapping; default looked up in
        :data:`HIGHER_IS_BETTER`.
    alpha : float
        Level of the Nemenyi test.
    mix_protocols : bool
        Rank ``model [protocol]`` entries; otherwise a table with more than one
        protocol is refused.
    tie_correction : bool
        Tie-correct the Friedman statistic (as :func:`scipy.stats.friedmanchisquare`).

    Returns
    -------
    RankTests
    """
    metrics = dict(metric) if isinstance(metric, Mapping) else None
    frame = _oriented_scores(results, metric, metrics, higher_is_better)
    protocols = sorted(frame["protocol"].astype(str).unique())
    if len(protocols) > 1 and not mix_protocols:
        raise StatsError(f"the result table mixes protocols {protocols}; rank one protocol at a time "
                         "(e.g. results[results.protocol == 'finetune']) or pass mix_protocols=True to rank "
                         "'model [protocol]' entries")
    frame = _entities(frame, mix_protocols)
    entities = sorted(frame["entity"].unique())
    scores, oriented = _block_means(frame, entities)
    fried = friedman_test(oriented, higher_is_better=True, tie_correction=tie_correction)
    cd, q_alpha = nemenyi_critical_difference(len(entities), len(scores), alpha)
    return RankTests(
        metric=metrics if metrics is not None else metric, scores=scores,
        ranks=rank_scores(oriented, True), mean_ranks=fried.mean_ranks, n_blocks=fried.n_blocks,
        n_models=fried.n_models, statistic=fried.statistic, pvalue=fried.pvalue,
        iman_davenport=fried.iman_davenport, iman_davenport_pvalue=fried.iman_davenport_pvalue,
        alpha=alpha, q_alpha=q_alpha, cd=cd, nemenyi_p=nemenyi_pvalues(fried.mean_ranks, fried.n_blocks),
        groups=cd_groups(fried.mean_ranks, cd), tie_correction=tie_correction)


def _oriented_scores(results, metric, metrics, higher_is_better) -> pd.DataFrame:
    """The scores of ``metric`` (or of each task's metric in the mapping ``metrics``), with
    ``oriented`` = the score where higher is better, else its negative."""
    parts = []
    for name in (sorted(set(metrics.values())) if metrics else [metric]):
        frame = _scores(results, name)
        if metrics is not None:
            frame = frame[frame["task"].map(metrics) == name]
        higher = _direction(name, higher_is_better)
        parts.append(frame.assign(oriented=frame["score"] if higher else -frame["score"]))
    frame = pd.concat(parts, ignore_index=True)
    if metrics is not None:
        absent = sorted(set(metrics) - set(frame["task"]))
        if absent:
            raise StatsError(f"tasks {absent} named in the metric mapping have no score for their metric")
    return frame


def _block_means(frame, entities) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each entity's mean over seeds and folds per dataset x task block, as scores and as
    oriented scores (blocks x entities); every entity must be in every block, and there
    must be at least 2 of each."""
    raw, oriented = {}, {}
    for (dataset, task), group in frame.groupby(["dataset", "task"], sort=True):
        where = f"dataset {dataset!r}, task {task!r}"
        lacking = sorted(set(entities) - set(group["entity"]))
        if lacking:
            raise StatsError(f"unpaired results: model {lacking[0]!r} has no score on {where} (models "
                             f"{sorted(set(group['entity']))} have). Rank tests need every model on every "
                             "dataset and task: add its results or drop the block for all models")
        raw[(dataset, task)] = _paired_matrix(group, where)[0].mean(axis=0)
        flipped = group.assign(score=group["oriented"])
        oriented[(dataset, task)] = _paired_matrix(flipped, where)[0].mean(axis=0)
    if len(raw) < 2 or len(entities) < 2:
        raise StatsError(f"rank tests need at least 2 models and 2 dataset x task blocks; received "
                         f"{len(entities)} models and {len(raw)} blocks")
    return tuple(pd.DataFrame(d).T[entities].rename_axis(index=["dataset", "task"], columns="model")
                 for d in (raw, oriented))


def plot_critical_difference(ranks, path=None, *, cd: float | None = None, groups=None,
                             title: str | None = None, ax=None, note: str | None = None):
    """Critical-difference diagram (Demsar 2006, fig. 1) of a rank comparison.

    Parameters
    ----------
    ranks : RankTests or Series
        A :func:`rank_tests` result, or mean ranks per model (then ``cd`` is needed).
    path : str or PathLike, optional
        Where to save it (.pdf, .svg or .png).
    cd : float, optional
        Critical difference; taken from ``ranks`` when it is a RankTests.
    groups : list of tuple, optional
        Groups to join by bars; default: those of ``ranks`` (or from ``cd``).
    title : str, optional
        Default for a RankTests: metric, N, k and the Friedman p-value.
    ax : matplotlib Axes, optional
    note : str, optional
        Printed under the diagram; default for a RankTests: its
        :meth:`RankTests.few_blocks_note` (too few blocks to conclude), if any.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if isinstance(ranks, RankTests):
        cd = ranks.cd if cd is None else cd
        groups = ranks.groups if groups is None else groups
        note = ranks.few_blocks_note() if note is None else note
        if title is None:
            metric = ranks.metric
            what = metric if isinstance(metric, str) else ", ".join(sorted(set(metric.values())))
            title = (f"{what}: N = {ranks.n_blocks} dataset x task blocks, Friedman p = {ranks.pvalue:.3g}, "
                     f"Nemenyi alpha = {ranks.alpha:g}")
        mean_ranks = ranks.mean_ranks
    else:
        if cd is None:
            raise StatsError("plot_critical_difference needs cd= when given mean ranks rather than a "
                             "rank_tests result")
        mean_ranks = pd.Series(ranks, dtype=float)
    return cd_diagram(mean_ranks, cd, groups=groups, path=path, title=title, ax=ax, note=note)
