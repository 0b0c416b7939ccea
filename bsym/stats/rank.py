"""Comparing k models over N blocks (datasets x tasks) by ranks.

Friedman test on mean ranks, the Iman-Davenport F refinement, the Nemenyi
post-hoc test with its critical difference (CD), and the CD diagram, all as in
Demsar (2006). Rank 1 is the best model in a block; ties get the mean rank.

References
----------
Demsar, J. (2006). Statistical comparisons of classifiers over multiple data
sets. JMLR 7, 1-30 (sections 3.2.2 and 3.2.3, figure 1).
Friedman, M. (1937). JASA 32, 675-701. Iman, R. L. & Davenport, J. M. (1980).
Communications in Statistics A9, 571-595. Nemenyi, P. B. (1963). Distribution-free
multiple comparisons. PhD thesis, Princeton University.
"""

from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from bsym.stats.errors import StatsError

__all__ = ["FEW_BLOCKS", "FriedmanResult", "cd_diagram", "cd_groups", "friedman_test",
           "min_blocks_for_significance", "nemenyi_critical_difference", "nemenyi_pvalues",
           "rank_scores"]

#: Blocks below which Friedman's chi^2 approximation is rough (Demsar 2006, section 3.2.2:
#: "N > 10 and k > 5" as a rule of thumb).
FEW_BLOCKS = 10


def _as_frame(scores) -> pd.DataFrame:
    frame = scores if isinstance(scores, pd.DataFrame) else pd.DataFrame(np.asarray(scores, dtype=float))
    if frame.ndim != 2 or frame.shape[0] < 2 or frame.shape[1] < 2:
        raise StatsError("rank tests need a blocks x models score table with at least 2 blocks and "
                         f"2 models; received shape {frame.shape}")
    values = frame.to_numpy(dtype=float)
    if not np.all(np.isfinite(values)):
        raise StatsError("rank tests need a finite score for every model in every block; received "
                         f"{int(np.sum(~np.isfinite(values)))} NaN/Inf values")
    return frame.astype(float)


def rank_scores(scores, higher_is_better: bool = True) -> pd.DataFrame:
    """Rank models within each block: 1 = best, ties share their mean rank.

    Parameters
    ----------
    scores : DataFrame or array_like, shape (N blocks, k models)
    higher_is_better : bool
        Orientation of the metric.

    Returns
    -------
    DataFrame
        Ranks with the index and columns of ``scores``.
    """
    frame = _as_frame(scores)
    return frame.rank(axis=1, ascending=not higher_is_better, method="average")


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman test and its Iman-Davenport F form.

    Attributes
    ----------
    statistic : float
        Friedman chi^2_F (tie-corrected when ``tie_correction``).
    pvalue : float
        From chi^2 with ``k - 1`` degrees of freedom.
    iman_davenport : float
        ``F_F = (N - 1) chi^2_F / (N (k - 1) - chi^2_F)``.
    iman_davenport_pvalue : float
        From F with ``(k - 1, (k - 1)(N - 1))`` degrees of freedom.
    mean_ranks : Series
        Mean rank per model (1 = best), sorted best first.
    n_blocks, n_models : int
        N and k.
    tie_correction : bool
        Whether chi^2_F was divided by ``1 - sum(t^3 - t) / (N k (k^2 - 1))``.
    """

    statistic: float
    pvalue: float
    iman_davenport: float
    iman_davenport_pvalue: float
    mean_ranks: pd.Series
    n_blocks: int
    n_models: int
    tie_correction: bool


def friedman_test(scores, higher_is_better: bool = True, *, tie_correction: bool = True) -> FriedmanResult:
    r"""Friedman test that k models have equal mean ranks over N blocks.

    .. math::

        \chi^2_F = \frac{12N}{k(k+1)}\left[\sum_j R_j^2 - \frac{k(k+1)^2}{4}\right],
        \qquad F_F = \frac{(N-1)\chi^2_F}{N(k-1) - \chi^2_F}

    with :math:`R_j` the mean rank of model j (Demsar 2006, eqs. 1-2). With
    ``tie_correction`` :math:`\chi^2_F` is divided by
    :math:`1 - \sum_{blocks}\sum_{ties}(t^3 - t) / (Nk(k^2-1))`, as
    :func:`scipy.stats.friedmanchisquare` does; Demsar's worked example uses the
    uncorrected form.

    Parameters
    ----------
    scores : DataFrame or array_like, shape (N, k)
        One score per block (row) and model (column).
    higher_is_better : bool
        Orientation of the metric.
    tie_correction : bool
        Apply the correction for tied ranks.

    Returns
    -------
    FriedmanResult
        A table whose every block is fully tied gives statistic 0, p = 1.
    """
    ranks = rank_scores(scores, higher_is_better)
    n, k = ranks.shape
    mean_ranks = ranks.mean(axis=0)
    chi2 = 12 * n / (k * (k + 1)) * (float(np.sum(mean_ranks.to_numpy() ** 2)) - k * (k + 1) ** 2 / 4)
    if tie_correction:
        ties = 0.0
        for row in ranks.to_numpy():
            _, counts = np.unique(row, return_counts=True)
            ties += float(np.sum(counts ** 3 - counts))
        factor = 1 - ties / (n * k * (k * k - 1))
        chi2 = chi2 / factor if factor > 0 else 0.0
    chi2 = max(chi2, 0.0)
    pvalue = float(stats.chi2.sf(chi2, k - 1))
    denominator = n * (k - 1) - chi2
    if denominator > 1e-12:
        f_stat = (n - 1) * chi2 / denominator
        f_p = float(stats.f.sf(f_stat, k - 1, (k - 1) * (n - 1)))
    else:  # every block ranks the models identically
        f_stat, f_p = math.inf, 0.0
    return FriedmanResult(statistic=float(chi2), pvalue=pvalue, iman_davenport=float(f_stat),
                          iman_davenport_pvalue=f_p, mean_ranks=mean_ranks.sort_values(kind="stable"),
                          n_blocks=n, n_models=k, tie_correction=tie_correction)


def nemenyi_critical_difference(n_models: int, n_blocks: int, alpha: float = 0.05) -> tuple[float, float]:
    r"""Nemenyi critical difference of mean ranks.

    .. math::

        CD = q_\alpha \sqrt{\frac{k(k+1)}{6N}}, \qquad
        q_\alpha = \frac{Q_{1-\alpha}(k, \infty)}{\sqrt 2}

    with :math:`Q` the studentized range distribution (Demsar 2006, section 3.2.2;
    e.g. :math:`q_{0.05} = 2.569` for k = 4).

    Returns
    -------
    cd, q_alpha : float
    """
    if n_models < 2 or n_blocks < 1:
        raise StatsError(f"Nemenyi needs k >= 2 models and N >= 1 blocks; received k={n_models}, "
                         f"N={n_blocks}")
    if not 0 < alpha < 1:
        raise StatsError(f"alpha must be in (0, 1); received {alpha}")
    q_alpha = float(stats.studentized_range.ppf(1 - alpha, n_models, np.inf)) / math.sqrt(2)
    return q_alpha * math.sqrt(n_models * (n_models + 1) / (6 * n_blocks)), q_alpha


def min_blocks_for_significance(n_models: int, alpha: float = 0.05) -> int:
    r"""Fewest blocks N at which the Nemenyi test can find any difference among k models.

    Two mean ranks differ by at most k - 1 (one model first in every block, the other
    last), so a difference can be significant only when
    :math:`CD = q_\alpha\sqrt{k(k+1)/(6N)} < k - 1`, that is when
    :math:`N > q_\alpha^2 k (k+1) / (6 (k-1)^2)`. At alpha = 0.05 this is N >= 4 for
    k = 2 and N >= 3 for 3 <= k <= 30: with N = 2 blocks no difference can be significant.

    Returns
    -------
    int
    """
    _, q_alpha = nemenyi_critical_difference(n_models, 1, alpha)
    bound = q_alpha ** 2 * n_models * (n_models + 1) / (6 * (n_models - 1) ** 2)
    return math.floor(bound) + 1


def nemenyi_pvalues(mean_ranks: pd.Series, n_blocks: int) -> pd.DataFrame:
    r"""Pairwise Nemenyi p-values from mean ranks.

    :math:`p_{ij} = P\left(Q_{k,\infty} > \sqrt2\,|R_i - R_j| / \sqrt{k(k+1)/(6N)}\right)`,
    so that :math:`p_{ij} < \alpha` exactly when :math:`|R_i - R_j| > CD_\alpha`.

    Returns
    -------
    DataFrame
        Symmetric k x k matrix, 1 on the diagonal.
    """
    ranks = pd.Series(mean_ranks, dtype=float)
    k = ranks.size
    se = math.sqrt(k * (k + 1) / (6 * n_blocks))
    values = ranks.to_numpy()
    out = np.ones((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            q = math.sqrt(2) * abs(values[i] - values[j]) / se
            out[i, j] = out[j, i] = min(1.0, float(stats.studentized_range.sf(q, k, np.inf)))
    return pd.DataFrame(out, index=ranks.index, columns=ranks.index)


def cd_groups(mean_ranks: pd.Series, cd: float) -> list[tuple]:
    """Maximal groups of models whose mean ranks lie within less than ``cd`` of each other.

    Models are sorted by mean rank; a group is a run of consecutive models whose
    range of mean ranks is < ``cd`` (no pair in it significantly different) and
    that no larger group contains. Single models are not groups.

    Returns
    -------
    list of tuple
        Model names, best first within a group, groups ordered by their best rank.
    """
    ranks = pd.Series(mean_ranks, dtype=float).sort_values(kind="stable")
    names, values = list(ranks.index), ranks.to_numpy()
    groups, last_end = [], -1
    for i in range(len(values)):
        end = i
        while end + 1 < len(values) and values[end + 1] - values[i] < cd:
            end += 1
        if end > i and end > last_end:
            groups.append(tuple(names[i:end + 1]))
            last_end = end
    return groups


#: Layout of the CD diagram (axis units): the first name's depth below the rank axis
#: (before the group bars), the step between names, the step between group bars.
_NAMES_TOP, _NAME_STEP, _GROUP_STEP = 0.25, 0.32, 0.13
_LINE = dict(color="black", linewidth=0.9, solid_capstyle="butt")


def cd_diagram(mean_ranks: pd.Series, cd: float, *, groups=None, path=None, title: str | None = None,
               ax=None, label_ranks: bool = True, note: str | None = None):
    """Draw a critical-difference diagram (Demsar 2006, figure 1).

    A horizontal axis of mean ranks (1 = best, on the left), each model joined
    to its name by an elbow line (better half to the left, worse half to the
    right), a bar of length CD, and thick bars joining models that are not
    significantly different.

    Parameters
    ----------
    mean_ranks : Series
        Mean rank per model, indexed by model name.
    cd : float
        Critical difference (e.g. from :func:`nemenyi_critical_difference`).
    groups : list of tuple, optional
        Groups to join; default :func:`cd_groups` of ``mean_ranks`` and ``cd``.
    path : str or PathLike, optional
        Save the figure there (format from the suffix: .pdf, .svg, .png at 300 dpi).
    title : str, optional
    ax : matplotlib Axes, optional
        Draw into this axes instead of a new figure.
    label_ranks : bool
        Print each model's mean rank beside its name.
    note : str, optional
        Printed in red under the diagram (e.g. that too few blocks allow no conclusion).

    Returns
    -------
    matplotlib.figure.Figure
    """
    ranks = pd.Series(mean_ranks, dtype=float).sort_values(kind="stable")
    k = ranks.size
    if k < 2:
        raise StatsError(f"a CD diagram needs at least 2 models; received {k}")
    groups = cd_groups(ranks, cd) if groups is None else [tuple(g) for g in groups]
    first = _NAMES_TOP + _GROUP_STEP * max(len(groups), 1)
    height = first + _NAME_STEP * ((k + 1) // 2) + 0.1
    longest = max(len(f"{name} (0.00)") for name in ranks.index)
    # the names take a fixed share: widen the axis with many models, and for long names
    width = max(6.4 + 0.4 * max(0, k - 6), 3.0 + 2 * 0.085 * longest)
    note_lines = textwrap.wrap(note, width=int(14 * width)) if note else []
    if ax is None:
        ax = _cd_axes(width, height, title, note_lines)
    lo, hi = 1, max(k, math.ceil(ranks.max()))
    _cd_rank_axis(ax, lo, hi, k, cd)
    left_x, right_x = lo - 0.12 * (hi - lo) - 0.2, hi + 0.12 * (hi - lo) + 0.2
    _cd_names(ax, ranks, first, (left_x, right_x), label_ranks)
    for g, members in enumerate(groups):
        xs = ranks.loc[list(members)]
        y = -(0.18 + _GROUP_STEP * g)
        ax.plot([xs.min() - 0.03, xs.max() + 0.03], [y, y], color="black", linewidth=3.0,
                solid_capstyle="round")
    ax.set_xlim(left_x - 0.02, right_x + 0.02)
    ax.set_ylim(-(height + 0.05), 1.1)
    ax.axis("off")
    if note_lines:
        ax.text(0.5, -0.02, "\n".join(note_lines), transform=ax.transAxes, ha="center",
                va="top", fontsize=8, color="#b22222")
    if title:
        ax.set_title(title, fontsize=10)
    if path is not None:
        from bsym.outputs import save_figure

        save_figure(ax.figure, os.fspath(path), what="the critical-difference diagram",
                    dpi=300, bbox_inches="tight")
    return ax.figure


def _cd_axes(width, height, title, note_lines):
    """A new figure's axes, sized for the diagram, its title and its note."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 0.8 + 0.55 * height + (0.25 if title else 0)
                          + 0.16 * len(note_lines)), layout="constrained")
    return fig.add_subplot()


def _cd_rank_axis(ax, lo, hi, k, cd):
    """The axis of mean ranks (1 = best, on the left) and the CD bar above it."""
    ax.plot([lo, hi], [0, 0], **_LINE)
    for tick in np.arange(lo, hi + 0.001, 0.5):
        major = float(tick).is_integer()
        ax.plot([tick, tick], [0, 0.08 if major else 0.045], **_LINE)
        if major and (k <= 10 or int(tick) % 2 == 1 or tick == hi):
            ax.text(tick, 0.12, f"{int(tick)}", ha="center", va="bottom", fontsize=9)
    ax.text((lo + hi) / 2, 0.36, "mean rank (1 = best)", ha="center", va="bottom", fontsize=8,
            color="0.3")
    ax.plot([lo, lo + cd], [0.78, 0.78], color="black", linewidth=1.4)
    for x in (lo, lo + cd):
        ax.plot([x, x], [0.73, 0.83], color="black", linewidth=0.9)
    ax.text(lo + cd / 2, 0.86, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)


def _cd_names(ax, ranks, first, ends, label_ranks):
    """Each model joined to its name by an elbow line: the better half to the left, the
    worse half to the right, the outermost ranks closest to the axis."""
    k, n_left = ranks.size, (ranks.size + 1) // 2
    for i, name in enumerate(ranks.index):
        value = ranks.iloc[i]
        if i < n_left:  # best first, closest to the axis
            y, end, ha = -(first + _NAME_STEP * i), ends[0], "right"
        else:  # worst first, closest to the axis
            y, end, ha = -(first + _NAME_STEP * (k - 1 - i)), ends[1], "left"
        ax.plot([value, value, end], [0, y, y], **_LINE)
        label = f"{name} ({value:.2f})" if label_ranks else str(name)
        pad = -0.05 if ha == "right" else 0.05
        ax.text(end + pad, y, label, ha=ha, va="center", fontsize=9)
