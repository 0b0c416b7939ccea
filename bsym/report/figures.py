"""Report figures, each drawn from the result table (or a stats table) and saved as PNG.

Every function takes the data it shows and a path, writes the figure and returns the path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    """Save atomically, marked as bsym's (:func:`bsym.outputs.save_figure`), and close."""
    from bsym.outputs import save_figure

    plt = _plt()
    try:
        fig.tight_layout()
        return save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def strip_plot(scores: pd.DataFrame, path, *, metric: str, title: str | None = None) -> Path:
    """Per-fold scores per model (one point per seed x fold, coloured by seed), mean +- sd bars.

    ``scores`` has columns ``model``, ``seed``, ``score``.
    """
    plt = _plt()
    models = sorted(scores["model"].astype(str).unique())
    seeds = sorted(scores["seed"].astype(str).unique())
    colours = plt.get_cmap("tab10")
    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(models), 3.4))
    for i, model in enumerate(models):
        rows = scores[scores["model"].astype(str) == model]
        for s, seed in enumerate(seeds):
            y = rows.loc[rows["seed"].astype(str) == seed, "score"].to_numpy(dtype=float)
            x = i + rng.uniform(-0.18, 0.18, size=y.size)
            ax.scatter(x, y, s=14, alpha=0.75, color=colours(s % 10),
                       label=f"seed {seed}" if i == 0 else None)
        y = rows["score"].to_numpy(dtype=float)
        sd = float(np.std(y, ddof=1)) if y.size > 1 else 0.0
        ax.errorbar(i + 0.3, y.mean(), yerr=sd, fmt="s", color="black", ms=4, capsize=3)
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(title or metric, fontsize=9)
    if len(seeds) > 1:
        ax.legend(fontsize=7, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def significance_matrix(pairs: pd.DataFrame, path, *, title: str | None = None) -> Path:
    """Models x models: lower triangle Holm-adjusted corrected t-test p, upper triangle the
    Bayesian probability that the row model is better (ROPE excluded).

    ``pairs`` is one dataset x task x protocol of :func:`bsym.stats.pairwise_tests`.
    """
    plt = _plt()
    models = sorted(set(pairs["model_a"]) | set(pairs["model_b"]))
    k = len(models)
    index = {m: i for i, m in enumerate(models)}
    p = np.full((k, k), np.nan)
    prob = np.full((k, k), np.nan)
    for r in pairs.itertuples():
        i, j = index[r.model_a], index[r.model_b]
        lo, hi = max(i, j), min(i, j)
        p[lo, hi] = r.p_holm
        # upper cell (row hi, column lo): P(row model better)
        row_is_a = models[hi] == r.model_a
        prob[hi, lo] = r.p_a_better if row_is_a else r.p_b_better
    fig, ax = plt.subplots(figsize=(1.6 + 0.75 * k, 1.2 + 0.7 * k))
    lower = np.ma.masked_invalid(p)
    upper = np.ma.masked_invalid(prob)
    im1 = ax.imshow(lower, cmap="viridis_r", vmin=0, vmax=1)
    im2 = ax.imshow(upper, cmap="RdBu_r", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            value = p[i, j] if i > j else prob[i, j] if i < j else np.nan
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(k), models, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(k), models, fontsize=8)
    fig.colorbar(im1, ax=ax, shrink=0.7, label="Holm p (lower)")
    fig.colorbar(im2, ax=ax, shrink=0.7, label="P(row better) (upper)")
    ax.set_title(title or "pairwise comparison", fontsize=9)
    return _save(fig, path)


def grouped_bars(summary: pd.DataFrame, path, *, group: str, hue: str, title: str | None = None,
                 ylabel: str = "score") -> Path:
    """Bars of ``mean`` with ``sd`` error bars, grouped by ``group`` and coloured by ``hue``."""
    plt = _plt()
    groups = list(dict.fromkeys(summary[group].astype(str)))
    hues = list(dict.fromkeys(summary[hue].astype(str)))
    width = 0.8 / max(len(hues), 1)
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(groups) * max(1, len(hues) / 2), 3.4))
    for h, name in enumerate(hues):
        rows = summary[summary[hue].astype(str) == name].set_index(summary[group].astype(str)[
            summary[hue].astype(str) == name])
        x = np.array([g for g, gname in enumerate(groups) if gname in rows.index])
        present = [gname for gname in groups if gname in rows.index]
        mean = rows.loc[present, "mean"].to_numpy(dtype=float)
        sd = rows.loc[present, "sd"].to_numpy(dtype=float)
        ax.bar(x + (h - (len(hues) - 1) / 2) * width, mean, width,
               yerr=np.nan_to_num(sd) if np.isfinite(sd).any() else None, capsize=3, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title or "", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def netid_bars(table: pd.DataFrame, path, *, metrics=("ari_kmeans", "nmi_kmeans", "knn_accuracy"),
               title: str | None = None) -> Path:
    """Network-identification scores per model (the FC-row baseline beside them); mean and
    sd over rows (seeds, datasets) of one label."""
    metrics = [m for m in metrics if m in table.columns]
    long = table.melt(id_vars=["label"], value_vars=metrics, var_name="metric", value_name="score")
    long = long.groupby(["metric", "label"], sort=False)["score"].agg(["mean", "std"]).reset_index()
    long = long.rename(columns={"std": "sd"})
    return grouped_bars(long, path, group="metric", hue="label",
                        title=title or "network identification", ylabel="score")


def attention_heatmap(contrast: pd.DataFrame, path, *, map_name: str | None = None,
                      title: str | None = None) -> Path:
    """Network x network t values of an attention contrast (``net_pair`` rows); FDR hits ``*``."""
    plt = _plt()
    table = contrast[contrast["family"] == "net_pair"]
    name = map_name or str(table["map"].iloc[0])
    table = table[table["map"].astype(str) == name]
    nets = sorted(set(table["source"].astype(str)) | set(table["target"].astype(str)))
    t = table.pivot(index="source", columns="target", values="t").reindex(index=nets, columns=nets)
    sig = table.pivot(index="source", columns="target", values="significant").reindex(
        index=nets, columns=nets)
    values = t.to_numpy(dtype=float)
    bound = max(float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0, 1e-6)
    fig, ax = plt.subplots(figsize=(1.4 + 0.6 * len(nets), 1.0 + 0.6 * len(nets)))
    image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound)
    ax.set_xticks(range(len(nets)), nets, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(nets)), nets, fontsize=7)
    ax.set_xlabel("key network (attended)")
    ax.set_ylabel("query network")
    for i in range(len(nets)):
        for j in range(len(nets)):
            if sig.iloc[i, j] is True or sig.iloc[i, j] == 1:
                ax.text(j, i, "*", ha="center", va="center", fontsize=12)
    ax.set_title(title or f"attention contrast {name}: t; * FDR", fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.8, label="t")
    return _save(fig, path)


def verdict_plot(verdict: pd.DataFrame, path, *, title: str | None = None) -> Path:
    """Each model's score (mean and CI over folds) with its controls on one axis per task:
    random initialisation (open circle) and shuffled labels (grey band, mean +- sd)."""
    plt = _plt()
    tasks = list(dict.fromkeys(verdict["task"].astype(str)))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 0.6 + 0.42 *
                                                     verdict.groupby("task").size().max()),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = verdict[verdict["task"].astype(str) == task].reset_index(drop=True)
        labels = [f"{m} [{p}]" for m, p in zip(rows["label"], rows["protocol"])]
        y = np.arange(len(rows))[::-1]
        for yi, r in zip(y, rows.itertuples(index=False)):
            if np.isfinite(r.shuffled):
                sd = r.shuffled_sd if np.isfinite(r.shuffled_sd) else 0.0
                ax.fill_betweenx([yi - 0.3, yi + 0.3], r.shuffled - sd, r.shuffled + sd,
                                 color="0.85", zorder=1)
                ax.plot([r.shuffled] * 2, [yi - 0.3, yi + 0.3], color="0.5", lw=1, zorder=2)
            colour = "tab:red" if r.learned is False else "tab:blue"
            low, high = r.ci_low, r.ci_high
            if np.isfinite(low) and np.isfinite(high):
                ax.plot([low, high], [yi, yi], color=colour, lw=2, zorder=3)
            ax.plot(r.mean, yi, "o", color=colour, zorder=4)
            if np.isfinite(r.random_init):
                ax.plot(r.random_init, yi, "o", mfc="none", mec="black", zorder=5)
        ax.set_yticks(y, labels, fontsize=7)
        ax.set_xlabel(str(rows["metric"].iloc[0]))
        ax.set_title(task, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title or "score (dot, 95% CI) | random init (open circle) | shuffled labels "
                 "(grey: mean ± sd); red: did not learn", fontsize=8)
    return _save(fig, path)


def compute_curves(points: pd.DataFrame, path, *, x: str = "pretrain_flops",
                   title: str | None = None) -> Path:
    """Score against pretraining compute: one line per model (mean +- sd over folds at each
    kept checkpoint; the random initialisation at zero), one panel per task.

    ``points`` has ``task``, ``metric``, ``label``, ``x`` column, ``mean``, ``sd``.
    """
    plt = _plt()
    tasks = list(dict.fromkeys(points["task"].astype(str)))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.8 * len(tasks), 3.2), squeeze=False)
    colours = plt.get_cmap("tab10")
    labels = list(dict.fromkeys(points["label"].astype(str)))
    for ax, task in zip(axes[0], tasks):
        rows = points[points["task"].astype(str) == task]
        for i, label in enumerate(labels):
            line = rows[rows["label"].astype(str) == label].sort_values(x)
            if line.empty:
                continue
            ax.errorbar(line[x].to_numpy(dtype=float), line["mean"].to_numpy(dtype=float),
                        yerr=np.nan_to_num(line["sd"].to_numpy(dtype=float)), marker="o",
                        ms=3, capsize=2, color=colours(i % 10), label=label)
        positive = rows[x][rows[x] > 0]
        if len(positive) and positive.max() > 20 * positive.min():  # budgets span decades
            ax.set_xscale("symlog", linthresh=float(positive.min()), linscale=0.3)
        ax.set_xlabel({"pretrain_flops": "pretraining FLOPs",
                       "pretrain_timepoints": "window time points seen"}.get(x, x))
        ax.set_ylabel(str(rows["metric"].iloc[0]))
        ax.set_title(task, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, frameon=False, loc="best")
    fig.suptitle(title or "score against pretraining compute (linear probe; x = 0: random "
                 "initialisation)", fontsize=8)
    return _save(fig, path)


#: Colours of the at-a-glance matrix: a control cleared / a model that learned, and not.
GLANCE_GOOD, GLANCE_BAD = "#1a7f37", "#b22222"


def _flag(value):
    """True, False, or None for a missing value (None, NaN, pd.NA)."""
    if value is None or (not isinstance(value, (bool, np.bool_)) and pd.isna(value)):
        return None
    return bool(value)


def glance_matrix(cells: pd.DataFrame, path, *, title: str, significance: str,
                  dpi: int = 100) -> Path:
    """The report's first picture: model x task heatmap of the primary metric, each cell
    with its CI, its controls, its model's health and whether it is (tied with) the best.

    Parameters
    ----------
    cells : DataFrame
        One row per model (``row``, its label, in display order; ``protocol``) and
        ``task``: ``metric``, ``higher`` (orientation), ``mean``, ``ci_low``, ``ci_high``,
        ``random_init``, ``shuffled`` (NaN where the control was not run), ``learned``
        (True, False or None: no health check), ``mark`` (``"best"``, ``"tied"``, ``""``).
    path : path
        PNG to write.
    title : str
    significance : str
        What "tied" means (the test, its correction and level), printed in the legend.
    dpi : int
        At 100 dpi the figure is at most 1080 px wide (the report's column) and a dozen
        models fit a 1280 x 800 screen.

    Returns
    -------
    Path
    """
    plt = _plt()
    from matplotlib.colors import LinearSegmentedColormap

    rows = list(dict.fromkeys(cells["row"].astype(str)))
    tasks = list(dict.fromkeys(cells["task"].astype(str)))
    at = {(str(r.row), str(r.task)): r for r in cells.itertuples(index=False)}
    label_in = min(4.0, 0.35 + 0.075 * max(len(r) for r in rows))
    width = float(np.clip(label_in + 2.4 * len(tasks) + 0.2, 7.5, 10.8))
    legend = _glance_legend(significance, width)
    fig, ax, height = _glance_canvas(plt, label_in, width, len(rows), legend)
    cmap = LinearSegmentedColormap.from_list("glance", ["#f7fbff", "#6fa8dc"]).with_extremes(
        bad="#eeeeee")
    ax.imshow(np.ma.masked_invalid(_glance_shade(cells, rows, tasks)), cmap=cmap, vmin=0,
              vmax=1, aspect="auto", interpolation="nearest")
    _glance_labels(ax, cells, rows, tasks, at)
    _glance_grid(ax, cells, rows, len(tasks))
    for (row, task), r in at.items():
        if np.isfinite(r.mean):
            _glance_cell(ax, rows.index(row), tasks.index(task), r)
    fig.text(0.01, 1 - 0.06 / height, title, ha="left", va="top", fontsize=11,
             fontweight="bold")
    fig.text(0.01, 0.05 / height, "\n".join(legend), ha="left", va="bottom", fontsize=8.5,
             color="#333333", linespacing=1.3)
    from bsym.outputs import save_figure

    try:
        return save_figure(fig, path, what="the at-a-glance figure", dpi=dpi)
    finally:
        plt.close(fig)


def _glance_shade(cells, rows, tasks) -> np.ndarray:
    """Each cell's place in its column, 0 (worst) to 1 (best); NaN without a score."""
    shade = np.full((len(rows), len(tasks)), np.nan)
    for j, task in enumerate(tasks):
        column = cells[cells["task"].astype(str) == task]
        values = pd.to_numeric(column["mean"], errors="coerce")
        low, high = values.min(), values.max()
        for r in column.itertuples(index=False):
            if not np.isfinite(r.mean):
                continue
            rel = 0.5 if not high > low else (r.mean - low) / (high - low)
            shade[rows.index(str(r.row)), j] = rel if r.higher else 1 - rel
    return shade


def _glance_legend(significance, width) -> list[str]:
    """The legend's lines, wrapped to the figure's ``width`` (inches)."""
    import textwrap

    legend = [f"★ best mean of the column; ≈ not significantly different from it "
              f"({significance}).",
              "Cell: mean over folds and seeds [95% CI]; colour: its place in the column "
              "(darker = better). Lines separate protocols.",
              "Second line, controls: init = the same model at random initialisation, shuf = "
              "labels shuffled (mean over permutations); green: the CI clears every control, "
              "red: it does not.",
              "Pretraining health: ✓ learned, ✗ did not learn (model name in red)."]
    return [line for text in legend for line in textwrap.wrap(text, int(width * 16.5))]


def _glance_canvas(plt, label_in, width, n_rows, legend):
    """``(figure, axes, height)``: the matrix between the title and the legend, the model
    names in a left margin ``label_in`` inches wide."""
    row_h, head_h, legend_h = 0.42, 0.75, 0.1 + 0.17 * len(legend)
    height = head_h + legend_h + row_h * n_rows
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes([label_in / width, legend_h / height, 1 - (label_in + 0.1) / width,
                       row_h * n_rows / height])
    return fig, ax, height


def _glance_labels(ax, cells, rows, tasks, at):
    """Task heads on top (metric and orientation); model names on the left, in red where
    the model did not learn."""
    heads = []
    for task in tasks:
        first = cells[cells["task"].astype(str) == task].iloc[0]
        heads.append(f"{task}\n{first['metric']} ({'higher' if first['higher'] else 'lower'} "
                     "is better)")
    ax.set_xticks(range(len(tasks)), heads, fontsize=9.5)
    for label in ax.get_xticklabels():
        label.set_fontweight("bold")
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(rows)), rows, fontsize=9.5)
    for row, label in zip(rows, ax.get_yticklabels()):
        learned = [_flag(at[(row, t)].learned) for t in tasks if (row, t) in at]
        if any(v is False for v in learned):
            label.set_color(GLANCE_BAD)
    ax.tick_params(length=0)


def _glance_grid(ax, cells, rows, n_cols):
    """A thin white grid, a heavier line between protocols, no frame."""
    protocols = [str(cells.loc[cells["row"].astype(str) == r, "protocol"].iloc[0]) for r in rows]
    for i in range(1, len(rows)):
        heavy = protocols[i] != protocols[i - 1]
        ax.axhline(i - 0.5, color="#444444" if heavy else "white", lw=1.8 if heavy else 1.0)
    for j in range(1, n_cols):
        ax.axvline(j - 0.5, color="white", lw=2)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _glance_cell(ax, i, j, r):
    """One cell: mean and CI, the best / tied sign and frame, controls, health."""
    from matplotlib.patches import Rectangle

    best, tied = r.mark == "best", r.mark == "tied"
    ax.text(j + 0.02, i - 0.17, f"{r.mean:.3f}", ha="right", va="center", fontsize=11,
            fontweight="bold" if best or tied else "normal")
    ci = f"[{r.ci_low:.2f}, {r.ci_high:.2f}]" if np.isfinite(r.ci_low) else "[CI n/a]"
    ax.text(j + 0.06, i - 0.17, ci, ha="left", va="center", fontsize=8.5, color="#333333")
    if best or tied:
        ax.text(j - 0.46, i + 0.2, "★" if best else "≈", ha="left", va="center",
                fontsize=12, fontweight="bold")
    controls, colour = _glance_controls(r)
    ax.text(j, i + 0.22, controls, ha="center", va="center", fontsize=8.5, color=colour)
    learned = _flag(r.learned)
    if learned is not None:
        ax.text(j - 0.46, i - 0.17, "✓" if learned else "✗", ha="left", va="center",
                fontsize=10, fontweight="bold", color=GLANCE_GOOD if learned else GLANCE_BAD)
    if best or tied:
        ax.add_patch(Rectangle((j - 0.485, i - 0.47), 0.97, 0.94, fill=False,
                               ec="black", lw=2.2 if best else 1.1,
                               ls="-" if best else (0, (3, 2))))


def _glance_controls(r) -> tuple[str, str]:
    """A cell's controls line and its colour: green where the CI clears every control."""
    controls, fails = [], False
    for name, value in (("init", r.random_init), ("shuf", r.shuffled)):
        if value is None or not np.isfinite(value):
            continue
        controls.append(f"{name} {value:.2f}")
        bound = r.ci_low if r.higher else r.ci_high
        clears = np.isfinite(bound) and (bound > value if r.higher else bound < value)
        fails = fails or not clears
    if not controls:
        return "no controls", "#777777"
    return " · ".join(controls), GLANCE_BAD if fails else GLANCE_GOOD
