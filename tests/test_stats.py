"""bsym.stats against published worked examples, hand derivations and independent implementations.

References used as oracles:
- Demsar (2006) JMLR 7:1-30, section 3.2.2 / table 6: the Friedman and Nemenyi
  worked example (AUC of four C4.5 variants on 14 data sets) and table 5a (q_alpha).
- scipy.stats.friedmanchisquare, ttest_rel, wilcoxon; statsmodels multipletests (Holm).
- scikit-posthocs posthoc_nemenyi_friedman (Nemenyi p-values).
- baycomp two_on_single / CorrelatedTTest (Bayesian correlated t-test, Benavoli et al. 2017).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from bsym import stats
from bsym.stats import StatsError

# Demsar (2006), table 6: AUC of C4.5 with/without pruning-parameter tuning on 14 UCI data sets.
DEMSAR_MODELS = ["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"]
DEMSAR_AUC = np.array([
    [0.763, 0.768, 0.771, 0.798],  # adult (sample)
    [0.599, 0.591, 0.590, 0.569],  # breast cancer
    [0.954, 0.971, 0.968, 0.967],  # breast cancer wisconsin
    [0.628, 0.661, 0.654, 0.657],  # cmc
    [0.882, 0.888, 0.886, 0.898],  # ionosphere
    [0.936, 0.931, 0.916, 0.931],  # iris
    [0.661, 0.668, 0.609, 0.685],  # liver disorders
    [0.583, 0.583, 0.563, 0.625],  # lung cancer
    [0.775, 0.838, 0.866, 0.875],  # lymphography
    [1.000, 1.000, 1.000, 1.000],  # mushroom
    [0.940, 0.962, 0.965, 0.962],  # primary tumor
    [0.619, 0.666, 0.614, 0.669],  # rheum
    [0.972, 0.981, 0.97501, 0.975],  # voting: see below
    [0.957, 0.978, 0.946, 0.970],  # wine
])
# The paper prints 0.975 for both C4.5+cf and C4.5+m+cf on "voting" but ranks C4.5+cf ahead
# (its rank sums are 40.5 and 27.5, not 41 and 27); 0.97501 restores the unrounded order.
DEMSAR_MEAN_RANKS = [3.143, 2.000, 2.893, 1.964]


def _long_table(scores, *, dataset="sim", task="sex", protocol="linear_probe", n_train=80, n_test=20,
                n_folds=5, metric="auroc"):
    """A long result table from {model: scores}, scores ordered seed-major over n_folds folds."""
    rows = []
    for model, values in scores.items():
        for i, value in enumerate(np.asarray(values, dtype=float)):
            rows.append(dict(model=model, dataset=dataset, task=task, protocol=protocol, seed=i // n_folds,
                             fold=i % n_folds, n_train=n_train, n_test=n_test, **{metric: value}))
    return pd.DataFrame(rows)


def _benchmark(seed=0, n_seeds=2, n_folds=5):
    """Three models x 2 datasets x 2 tasks; 'good' beats 'base' by 0.05 AUROC, 'twin' ~ 'base'."""
    rng = np.random.default_rng(seed)
    parts = []
    for dataset in ("sim", "hcp"):
        for task in ("sex", "diagnosis"):
            split = rng.normal(0.7, 0.03, n_seeds * n_folds)  # shared fold difficulty
            parts.append(_long_table({
                "base": split + rng.normal(0, 0.01, split.size),
                "good": split + 0.05 + rng.normal(0, 0.01, split.size),
                "twin": split + rng.normal(0, 0.01, split.size),
            }, dataset=dataset, task=task, n_folds=n_folds))
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------- Friedman / Nemenyi
def test_friedman_reproduces_demsar_worked_example():
    result = stats.friedman_test(pd.DataFrame(DEMSAR_AUC, columns=DEMSAR_MODELS), tie_correction=False)
    np.testing.assert_allclose(result.mean_ranks[DEMSAR_MODELS].round(3), DEMSAR_MEAN_RANKS)
    assert round(result.statistic, 2) == 9.28  # chi^2_F
    assert round(result.iman_davenport, 2) == 3.69  # F_F, with (3, 39) df
    assert round(sps.f.ppf(0.95, 3, 39), 2) == 2.85 and result.iman_davenport_pvalue < 0.05  # as published
    assert list(result.mean_ranks.index[:2]) == ["C4.5+m+cf", "C4.5+m"]


def test_nemenyi_q_and_cd_reproduce_demsar():
    # table 5a (two-tailed Nemenyi), k = 2..10
    published = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    for k, q in zip(range(2, 11), published):
        assert stats.nemenyi_critical_difference(k, 14, 0.05)[1] == pytest.approx(q, abs=1e-3)
    cd05, _ = stats.nemenyi_critical_difference(4, 14, 0.05)
    cd10, q10 = stats.nemenyi_critical_difference(4, 14, 0.10)
    assert round(cd05, 2) == 1.25 and round(q10, 3) == 2.291 and round(cd10, 2) == 1.12
    ranks = pd.Series(DEMSAR_MEAN_RANKS, index=DEMSAR_MODELS)
    # at 0.05 no pair differs (largest gap 1.179 < 1.25): one group of all four, as in the paper
    assert [set(g) for g in stats.cd_groups(ranks, cd05)] == [set(DEMSAR_MODELS)]
    # at 0.10 C4.5 differs from the two +m variants (gaps 1.179 and 1.143 > 1.118)
    assert stats.cd_groups(ranks, cd10) == [("C4.5+m+cf", "C4.5+m", "C4.5+cf"), ("C4.5+cf", "C4.5")]


@pytest.mark.parametrize("k", [2, 3, 4, 6, 10])
def test_min_blocks_is_where_the_most_extreme_ranking_becomes_significant(k):
    # the largest possible gap: every block ranks the k models the same way (mean ranks
    # 1..k); scikit-posthocs' Nemenyi p of first vs last is the independent oracle
    sp = pytest.importorskip("scikit_posthocs")
    need = stats.min_blocks_for_significance(k, 0.05)
    for n in range(2, need + 3):
        scores = np.tile(np.arange(k, 0, -1, dtype=float), (n, 1))
        p = sp.posthoc_nemenyi_friedman(scores).to_numpy()[0, k - 1]
        assert (p < 0.05) == (n >= need), (k, n, p)
    assert need == (4 if k == 2 else 3)


def test_two_blocks_never_conclude_and_the_note_says_so():
    for k in range(2, 31):  # with N = 2 no difference can be significant
        assert stats.min_blocks_for_significance(k) > 2
        assert stats.nemenyi_critical_difference(k, 2)[0] > k - 1
    rows = [dict(model=m, dataset=f"uci{i}", task="cls", protocol="supervised", seed=0, fold=0,
                 n_train=90, n_test=10, auroc=DEMSAR_AUC[i, j])
            for i in range(14) for j, m in enumerate(DEMSAR_MODELS)]
    table = pd.DataFrame(rows)
    demsar = stats.rank_tests(table, "auroc")
    assert demsar.can_be_significant and demsar.few_blocks_note() is None  # N = 14 > 10
    two = stats.rank_tests(table[table["dataset"].isin(["uci0", "uci1"])], "auroc")
    assert not two.can_be_significant and two.min_blocks == 3
    assert "no difference can be significant" in two.few_blocks_note()
    assert "CD = 3.32" in two.few_blocks_note()
    drawn = " ".join(t.get_text() for t in stats.plot_critical_difference(two).axes[0].texts)
    assert "Too few blocks to conclude" in drawn  # the diagram carries the note
    drawn = " ".join(t.get_text() for t in stats.plot_critical_difference(demsar).axes[0].texts)
    assert "blocks" not in drawn.replace("dataset x task blocks", "")
    five = stats.rank_tests(table[table["dataset"].isin([f"uci{i}" for i in range(5)])], "auroc")
    assert five.can_be_significant and five.few_blocks_note().startswith("Few blocks: N = 5")


def test_rank_tests_on_the_demsar_table_in_long_format():
    rows = [dict(model=m, dataset=f"uci{i}", task="cls", protocol="supervised", seed=0, fold=0, n_train=90,
                 n_test=10, auroc=DEMSAR_AUC[i, j], error=1 - DEMSAR_AUC[i, j])
            for i in range(14) for j, m in enumerate(DEMSAR_MODELS)]
    table = pd.DataFrame(rows)
    result = stats.rank_tests(table, "auroc", tie_correction=False)
    assert (result.n_blocks, result.n_models) == (14, 4)
    np.testing.assert_allclose(result.mean_ranks[DEMSAR_MODELS].round(3), DEMSAR_MEAN_RANKS)
    assert round(result.statistic, 2) == 9.28 and round(result.iman_davenport, 2) == 3.69
    assert round(result.cd, 2) == 1.25 and len(result.groups) == 1
    # the same ranking from the error rate when told lower is better
    flipped = stats.rank_tests(table, "error", higher_is_better=False, tie_correction=False)
    pd.testing.assert_series_equal(flipped.mean_ranks, result.mean_ranks)
    assert result.table()["model"].iloc[0] == "C4.5+m+cf"


def test_tie_corrected_friedman_matches_scipy():
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=(12, 5)), 1)  # rounding makes ties
    ours = stats.friedman_test(scores)
    ref = sps.friedmanchisquare(*scores.T)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-10)


def test_nemenyi_pvalues_match_scikit_posthocs_and_the_cd():
    sp = pytest.importorskip("scikit_posthocs")
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(15, 5)) + np.linspace(0, 1.5, 5)
    mean_ranks = stats.rank_scores(scores).mean()
    ours = stats.nemenyi_pvalues(mean_ranks, 15).to_numpy()
    np.testing.assert_allclose(ours, sp.posthoc_nemenyi_friedman(scores).to_numpy(), atol=1e-10)
    cd, _ = stats.nemenyi_critical_difference(5, 15, 0.05)
    gaps = np.abs(mean_ranks.to_numpy()[:, None] - mean_ranks.to_numpy()[None, :])
    assert np.array_equal(ours < 0.05, gaps > cd)


# --------------------------------------------------------------------------- corrected resampled t
def test_corrected_ttest_hand_example():
    # d = 1..5: mean 3, var 2.5; n_test/n_train = 1/4 -> se^2 = 2.5 (1/5 + 1/4) = 1.125, t = 3/sqrt(1.125)
    res = stats.corrected_resampled_ttest([1, 2, 3, 4, 5], n_train=80, n_test=20)
    assert (res.mean, res.df, res.n, res.ratio) == (3.0, 4, 5, 0.25)
    assert res.se == pytest.approx(math.sqrt(1.125))
    assert res.t == pytest.approx(2 * math.sqrt(2))
    assert res.pvalue == pytest.approx(2 * sps.t.sf(2 * math.sqrt(2), 4))
    half = 2.7764451051977987 * math.sqrt(1.125)  # t_{0.975, 4}
    assert (res.ci_low, res.ci_high) == pytest.approx((3 - half, 3 + half))


def test_corrected_ttest_is_scipy_ttest_rel_rescaled_and_more_conservative():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.75, 0.03, 30), rng.normal(0.74, 0.03, 30)
    naive = sps.ttest_rel(a, b)
    uncorrected = stats.corrected_resampled_ttest(a, b, n_train=90, n_test=0)
    assert uncorrected.t == pytest.approx(naive.statistic)
    assert uncorrected.pvalue == pytest.approx(naive.pvalue)
    res = stats.corrected_resampled_ttest(a, b, n_train=90, n_test=10)
    n = 30
    assert res.t == pytest.approx(naive.statistic * math.sqrt((1 / n) / (1 / n + 10 / 90)))
    assert res.pvalue > naive.pvalue
    lo, hi = sps.t.interval(0.95, n - 1, loc=np.mean(a - b), scale=sps.sem(a - b))
    assert res.ci_low < lo and res.ci_high > hi


def test_corrected_ttest_degenerate_and_bad_input():
    assert stats.corrected_resampled_ttest([0.0, 0.0, 0.0], n_train=8, n_test=2).pvalue == 1.0
    constant = stats.corrected_resampled_ttest([0.1, 0.1, 0.1], n_train=8, n_test=2)
    assert constant.pvalue == 0.0 and constant.t == math.inf
    with pytest.raises(StatsError, match="at least 2"):
        stats.corrected_resampled_ttest([0.1], n_train=8, n_test=2)
    with pytest.raises(StatsError, match="equal lengths; received 3 and 2"):
        stats.corrected_resampled_ttest([1, 2, 3], [1, 2], n_train=8, n_test=2)
    with pytest.raises(StatsError, match="positive"):
        stats.corrected_resampled_ttest([1, 2, 3], n_train=0, n_test=2)


# --------------------------------------------------------------------------- Bayesian correlated t
@pytest.mark.parametrize("runs,folds,shift,rope", [(1, 10, 0.0, 0.01), (5, 10, 0.01, 0.01),
                                                     (10, 5, -0.02, 0.005), (3, 10, 0.003, 0.0)])
def test_bayesian_correlated_ttest_matches_baycomp(runs, folds, shift, rope):
    baycomp = pytest.importorskip("baycomp")
    rng = np.random.default_rng(runs * folds)
    a = rng.normal(0.8, 0.02, runs * folds)
    b = a - shift + rng.normal(0, 0.01, a.size)
    # baycomp uses rho = 1/folds, i.e. n_test/n_train = 1/(folds - 1)
    ours = stats.bayesian_correlated_ttest(a, b, n_train=folds - 1, n_test=1, rope=rope)
    ref = baycomp.CorrelatedTTest.probs(a, b, rope=rope, runs=runs)
    expected = ref if rope > 0 else (ref[0], 0.0, ref[1])
    np.testing.assert_allclose((ours.p_a_better, ours.p_rope, ours.p_b_better), expected, atol=1e-9)
    mean, var, df = baycomp.CorrelatedTTest.compute_statistics(b, a, runs)  # baycomp's diff is y - x
    assert (ours.mean, ours.scale ** 2, ours.df) == pytest.approx((mean, var, df))


def test_bayesian_posterior_tail_is_the_corrected_one_sided_p():
    rng = np.random.default_rng(6)
    a, b = rng.normal(0.72, 0.02, 20), rng.normal(0.71, 0.02, 20)
    freq = stats.corrected_resampled_ttest(a, b, n_train=150, n_test=50)
    bayes = stats.bayesian_correlated_ttest(a, b, n_train=150, n_test=50, rope=0.0)
    assert bayes.rho == pytest.approx(50 / 200)
    smaller = bayes.p_b_better if freq.mean > 0 else bayes.p_a_better
    assert smaller == pytest.approx(freq.pvalue / 2)
    lower = stats.bayesian_correlated_ttest(a, b, n_train=150, n_test=50, rope=0.0, higher_is_better=False)
    assert (lower.p_a_better, lower.p_b_better) == pytest.approx((bayes.p_b_better, bayes.p_a_better))


# --------------------------------------------------------------------------- table-level API
def test_pairwise_identical_models():
    rng = np.random.default_rng(7)
    x = rng.normal(0.7, 0.03, 10)
    exact = stats.pairwise_tests(_long_table({"a": x, "b": x}), "auroc").iloc[0]
    assert exact.p == 1.0 and exact.wilcoxon_p == 1.0 and exact.p_rope == 1.0 and exact.mean_diff == 0
    assert exact.better is None and exact.d_av == 0.0
    near = stats.pairwise_tests(_long_table({"a": x, "b": x + rng.normal(0, 1e-4, 10)}), "auroc").iloc[0]
    assert near.p > 0.05 and near.p_rope > 0.99


def test_pairwise_large_consistent_difference():
    rng = np.random.default_rng(8)
    x = rng.normal(0.7, 0.03, 10)
    row = stats.pairwise_tests(_long_table({"strong": x + 0.1 + rng.normal(0, 0.002, 10), "weak": x}),
                               "auroc").iloc[0]
    assert (row.model_a, row.model_b, row.better) == ("strong", "weak", "strong")
    assert row.p < 1e-6 and row.wilcoxon_p == pytest.approx(2 / 2 ** 10)  # exact two-sided minimum, n = 10
    assert row.ci_low > 0.09 and row.ci_high < 0.11 and row.p_a_better > 0.999 and row.d_av > 2


def test_pairwise_matches_references_on_every_row():
    table = _benchmark()
    out = stats.pairwise_tests(table, "auroc")
    assert len(out) == 2 * 2 * 3  # datasets x tasks x pairs
    assert set(out.columns) >= {"n", "mean_diff", "ci_low", "ci_high", "t", "p", "p_holm", "wilcoxon_p",
                                "wilcoxon_p_holm", "d_av", "p_a_better", "p_rope", "p_b_better"}
    for row in out.itertuples():
        sel = table[(table.dataset == row.dataset) & (table.task == row.task)]
        a = sel[sel.model == row.model_a].sort_values(["seed", "fold"])["auroc"].to_numpy()
        b = sel[sel.model == row.model_b].sort_values(["seed", "fold"])["auroc"].to_numpy()
        assert row.n == 10 and row.n_seeds == 2 and row.df == 9
        assert row.wilcoxon_p == pytest.approx(sps.wilcoxon(a - b).pvalue)
        assert row.p >= sps.ttest_rel(a, b).pvalue  # corrected is more conservative
        assert row.d_av == pytest.approx(np.mean(a - b) / math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2))
    for _, family in out.groupby(["dataset", "task", "protocol"]):
        for raw, adj in (("p", "p_holm"), ("wilcoxon_p", "wilcoxon_p_holm")):
            np.testing.assert_allclose(family[adj], multipletests(family[raw], method="holm")[1])
            assert (family[adj] >= family[raw] - 1e-15).all()
            ordered = family.sort_values(raw)[adj].to_numpy()
            assert np.all(np.diff(ordered) >= 0)  # monotone in the raw order
    good = out[(out.model_a == "base") & (out.model_b == "good")]
    assert (good.better == "good").all() and (good.p_holm < 0.01).all()


def test_holm_family_all_and_holm_against_statsmodels():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2, 0.04])
    np.testing.assert_allclose(stats.holm(p), multipletests(p, method="holm")[1])
    out = stats.pairwise_tests(_benchmark(), "auroc", holm_family="all")
    np.testing.assert_allclose(out.p_holm, multipletests(out.p, method="holm")[1])


def test_lower_is_better_metric_and_long_format():
    rng = np.random.default_rng(9)
    x = rng.normal(1.0, 0.05, 10)
    wide = _long_table({"a": x - 0.2 + rng.normal(0, 0.01, 10), "b": x}, metric="mse")
    row = stats.pairwise_tests(wide, "mse").iloc[0]  # mse: lower is better, known
    assert row.better == "a" and row.p_a_better > 0.99 and row.mean_diff < 0
    long = wide.rename(columns={"mse": "value"}).assign(metric="mse")
    pd.testing.assert_frame_equal(stats.pairwise_tests(long, "mse"), stats.pairwise_tests(wide, "mse"))
    with pytest.raises(StatsError, match="higher_is_better"):
        stats.pairwise_tests(wide.rename(columns={"mse": "my_score"}), "my_score")


def test_summary_mean_sd_and_corrected_ci():
    x = np.array([0.70, 0.72, 0.74, 0.71, 0.73])
    out = stats.summary(_long_table({"m": x}, n_train=80, n_test=20), "auroc")
    row = out.iloc[0]
    assert (row.n, row.n_seeds) == (5, 1)
    assert row["mean"] == pytest.approx(0.72) and row.sd == pytest.approx(np.std(x, ddof=1))
    se = np.std(x, ddof=1) * math.sqrt(1 / 5 + 20 / 80)
    assert (row.ci_low, row.ci_high) == pytest.approx(sps.t.interval(0.95, 4, loc=0.72, scale=se))
    naive = stats.summary(_long_table({"m": x}), "auroc", ci="naive").iloc[0]
    assert (naive.ci_low, naive.ci_high) == pytest.approx(sps.t.interval(0.95, 4, loc=0.72, scale=sps.sem(x)))
    assert naive.ci_high - naive.ci_low < row.ci_high - row.ci_low


# --------------------------------------------------------------------------- refusals
def test_unpaired_results_are_refused_with_the_row():
    table = _benchmark()
    gone = (table.model == "twin") & (table.dataset == "hcp") & (table.task == "sex") & (table.seed == 1) \
        & (table.fold == 3)
    with pytest.raises(StatsError) as err:
        stats.pairwise_tests(table[~gone], "auroc")
    for part in ("'twin'", "'hcp'", "'sex'", "seed 1", "fold 3"):
        assert part in str(err.value)
    with pytest.raises(StatsError, match="'twin'.*seed 1, fold 3"):
        stats.rank_tests(table[~gone], "auroc")
    whole = (table.model == "twin") & (table.dataset == "hcp")
    with pytest.raises(StatsError, match="model 'twin' has no score on dataset 'hcp'"):
        stats.rank_tests(table[~whole], "auroc")


def test_bad_tables_are_refused():
    table = _benchmark()
    with pytest.raises(StatsError, match="rows for the same split"):
        stats.pairwise_tests(pd.concat([table, table.iloc[[0]]]), "auroc")
    with pytest.raises(StatsError, match=r"lacks columns \['n_test'\]"):
        stats.pairwise_tests(table.drop(columns="n_test"), "auroc")
    with pytest.raises(StatsError, match="'f1' is not a column"):
        stats.pairwise_tests(table, "f1")
    nan = table.copy()
    nan.loc[3, "auroc"] = np.nan
    with pytest.raises(StatsError, match="missing or not finite.*seed"):
        stats.summary(nan, "auroc")
    uneven = table.copy()
    uneven.loc[(uneven.model == "good") & (uneven.fold == 2), "n_test"] = 21
    with pytest.raises(StatsError, match="not scored on the same split.*n_test=21"):
        stats.pairwise_tests(uneven, "auroc")


def test_protocols_are_never_mixed_silently():
    probe = _benchmark()
    supervised = probe[probe.model == "base"].assign(model="bnt", protocol="supervised")
    table = pd.concat([probe, supervised], ignore_index=True)
    out = stats.pairwise_tests(table, "auroc")
    assert "bnt" not in set(out.model_a) | set(out.model_b)  # alone in its protocol: no pair
    with pytest.raises(StatsError, match=r"mixes protocols \['linear_probe', 'supervised'\]"):
        stats.rank_tests(table, "auroc")
    mixed = stats.pairwise_tests(table, "auroc", mix_protocols=True)
    assert "bnt [supervised]" in set(mixed.model_a) and set(mixed.protocol) == {"mixed"}
    assert stats.rank_tests(table, "auroc", mix_protocols=True).n_models == 4


def test_rank_tests_with_a_metric_per_task():
    table = _benchmark()
    table["pearson_r"] = np.where(table.task == "diagnosis", table.auroc - 0.2, np.nan)
    table.loc[table.task == "diagnosis", "auroc"] = np.nan
    result = stats.rank_tests(table, {"sex": "auroc", "diagnosis": "pearson_r"})
    assert result.n_blocks == 4 and result.mean_ranks.index[0] == "good"
    assert result.scores.loc[("hcp", "diagnosis"), "good"] < 0.6  # Pearson units kept


# --------------------------------------------------------------------------- figure
def test_critical_difference_diagram_is_written(tmp_path):
    result = stats.rank_tests(_benchmark(), "auroc")
    for suffix in ("png", "pdf"):
        path = tmp_path / f"cd.{suffix}"
        fig = stats.plot_critical_difference(result, path)
        assert path.exists() and path.stat().st_size > 1000
        assert fig.axes
    stats.plot_critical_difference(pd.Series({"a": 1.2, "b": 2.0, "c": 2.8}), tmp_path / "s.svg", cd=1.0)
    assert (tmp_path / "s.svg").stat().st_size > 1000
    with pytest.raises(StatsError, match="cd="):
        stats.plot_critical_difference(pd.Series({"a": 1.0, "b": 2.0}))
