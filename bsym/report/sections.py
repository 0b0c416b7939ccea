"""The sections of the report, in order: each one short function of the document and the
:class:`~bsym.report.context.ReportData`.

A :class:`Section` has a title and, where it can have nothing to show, an ``omitted``
test that says why (the report then keeps its heading with that note). The sections of
one model family are :data:`MODEL_SECTIONS`: BrainSymphony's views and the attention
contrasts show content where the results (or ``--attention``) hold it, and the
BrainSymphony paper's published numbers stand beside ours in every report.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bsym import stats
from bsym.outputs import atomic_output
from bsym.report import figures
from bsym.report.board import leaderboard_html, leaderboard_md, primary_metrics
from bsym.report.glance import glance_cells, glance_order
from bsym.report.provenance import environment, table_provenance
from bsym.report.published import PUBLISHED_LABEL, beside_published, published_table
from bsym.stats.controls import netid_summary
from bsym.stats.run import close_figure, slug


@dataclass(frozen=True)
class Section:
    """A section of the report.

    Attributes
    ----------
    title : str
    write : callable
        ``write(doc, data)``: the section's content.
    omitted : callable, optional
        ``omitted(data)``: why the section has nothing to show (a note), or None.
    heading : bool
        False: a Markdown heading only (the HTML page opens with the picture).
    """

    title: str
    write: Callable
    omitted: Callable | None = None
    heading: bool = True

    def render(self, doc, data):
        """The heading, then the content or the note saying why there is none."""
        doc.section(self.title, heading=self.heading)
        reason = self.omitted(data) if self.omitted is not None else None
        if reason:
            doc.note(reason)
        else:
            self.write(doc, data)


def _fmt(mean, sd=None, digits=3) -> str:
    if mean is None or not np.isfinite(mean):
        return "-"
    if sd is None or not np.isfinite(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _protocol_groups(bench):
    """``(label, rows, mixed)``: each protocol on its own, then every protocol together
    (models compared as ``model [protocol]``) when there are several."""
    protocol = bench["protocol"].astype(str)
    groups = [(name, rows, False) for name, rows in bench.groupby(protocol, sort=True)]
    if protocol.nunique() > 1:
        groups.append(("all protocols", bench, True))
    return groups


# --------------------------------------------------------------------------- at a glance
def _no_verdict_to_glance(data):
    if data.verdict is None or data.verdict.empty:
        return "No real benchmark scores: nothing to show at a glance (see the sections below)."
    return None


def glance(doc, data):
    """The report's first screen: per dataset, one model x task picture of the verdict."""
    cells, how = glance_cells(data.verdict, data.pairwise, data.health, alpha=data.alpha)
    doc.save_table(cells.drop(columns=["label"]), "glance.csv")
    for dataset, block in cells.groupby("dataset", sort=True):
        _glance_figure(doc, dataset, block, how, data.alpha)
    doc.text("Ties (≈) come from the Nadeau-Bengio corrected resampled t-test on paired folds "
             "and seeds, Holm-adjusted over every pair of the column (the Pairwise comparisons "
             f"below), at alpha = {data.alpha:g}. The full tables follow: verdict, training "
             "health, leaderboard, statistics.")


def _glance_figure(doc, dataset, block, how, alpha):
    """One dataset's at-a-glance picture, and notes on the tasks left untested."""
    ways = sorted({v for (d, _), v in how.items() if d == dataset})
    tested = [w for w in ways if not w.startswith("not tested")]
    significance = (f"corrected resampled t-test, Holm over the column's pairs, "
                    f"alpha\u00a0=\u00a0{alpha:g}; {' / '.join(tested) or 'no test'}")
    block = block.set_index("row").loc[glance_order(block)].reset_index()
    path = doc.figdir / f"glance_{slug(dataset)}.png"
    doc.figure(figures.glance_matrix(block, path, significance=significance,
                                     title=f"{dataset}: primary metric per model and task"))
    for (d, task), way in sorted(how.items()):
        if d == dataset and way.startswith("not tested"):
            doc.note(f"{dataset} / {task}: best and tied marks {way}.")


# --------------------------------------------------------------------------- verdict
def _no_verdict(data):
    if data.verdict is None:
        return "No benchmark rows: no verdict."
    if data.verdict.empty:
        return "No real scores for the tasks' primary metrics: no verdict."
    return None


def verdict(doc, data):
    """Every model x task score beside its controls and health, in full."""
    table = data.verdict
    doc.save_table(table, "verdict.csv")
    doc.text("Per dataset and task, each model's primary metric (mean over folds and seeds, "
             "95% t-interval) beside its controls: the same architecture at random "
             "initialisation through the same path, the probe refitted on labels permuted "
             "within each training fold (mean ± sd over permutations, with the permutation "
             "p-value of the real score), and whether its pretraining beat trivial baselines "
             "on held-out subjects. A score is evidence only where it clears both controls.")
    failed = sorted({row.label for row in table.itertuples() if row.learned is False})
    if failed:
        doc.note(f"Did not learn (pretext task not above its trivial baseline on held-out "
                 f"subjects, or collapsed): {', '.join(failed)}. Their scores are shown, "
                 "marked, and never ranked unmarked.")
    doc.table(_verdict_shown(table))
    for text in verdict_notes(table, data.results):
        doc.note(text)
    for dataset, rows in table.groupby("dataset", sort=True):
        path = doc.figdir / f"verdict_{slug(dataset)}.png"
        doc.figure(figures.verdict_plot(rows, path, title=f"{dataset}: score (dot, 95% CI), "
                                        "random init (open circle), shuffled labels (grey, "
                                        "mean ± sd); red: did not learn"))


def _verdict_shown(table) -> pd.DataFrame:
    """The verdict as the report prints it."""
    rows = list(table.itertuples())
    return pd.DataFrame({
        "dataset": table["dataset"], "task": table["task"], "metric": table["metric"],
        "protocol": table["protocol"], "model": table["label"],
        "score [95% CI]": [f"{_fmt(r.mean)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" for r in rows],
        "random init": [_fmt(r.random_init, r.random_init_sd) for r in rows],
        "shuffled labels": [_fmt(r.shuffled, r.shuffled_sd) for r in rows],
        "perm. p": [f"{r.perm_p:.3g} ({r.permutations})" if np.isfinite(r.perm_p) else "-"
                    for r in rows],
        "health": [r.health or "-" for r in rows]})


def verdict_notes(verdict, results) -> list:
    """Where a trained model (fine-tuned or supervised) predicted a single class, or
    fine-tuning fell more than 0.05 below the same model's linear probe on the task's
    primary metric: one sentence each, with the numbers and the likely cause."""
    return _single_class_notes(results) + _below_probe_notes(verdict)


_TRAINED = {"finetune": "Fine-tuning of {}", "supervised": "Supervised {}"}


def _single_class_notes(results) -> list:
    if not {"protocol", "single_class"} <= set(results.columns):
        return []
    trained = results[results["protocol"].astype(str).isin(list(_TRAINED))]
    if "control" in trained.columns:
        trained = trained[trained["control"].astype(str) == "none"]
    notes = []
    for (protocol, model, task), rows in trained.groupby(["protocol", "model", "task"],
                                                         sort=True, observed=True):
        single = rows["single_class"].astype("boolean").fillna(False).astype(bool)
        if single.any():
            notes.append(f"{_TRAINED[str(protocol)].format(model)} on {task} predicted a single "
                         f"class on {int(single.sum())} of {len(rows)} fold(s): there its balanced "
                         "accuracy is 0.5 whatever its AUROC (pred_counts in the result "
                         "table).")
    return notes


def _below_probe_notes(verdict) -> list:
    notes = []
    key = ["dataset", "task", "metric", "model", "view"]
    probe = verdict[verdict["protocol"] == "linear_probe"].set_index(key)
    for row in verdict[verdict["protocol"] == "finetune"].itertuples():
        at = (row.dataset, row.task, row.metric, row.model, row.view)
        if at not in probe.index:
            continue
        reference = float(probe.loc[at, "mean"])
        if not row.mean < reference - 0.05:
            continue
        learned = probe.loc[at, "learned"] if "learned" in probe.columns else None
        cause = ("its encoder did not learn in pretraining (training health), so fine-tuning "
                 "starts from features no better than random and adapts them on few subjects"
                 if learned is not None and not pd.isna(learned) and not bool(learned) else
                 "the probe-initialised head was the early-stopping choice on few folds, or "
                 "fine-tuning trains on fewer subjects and windows than the probe reads")
        notes.append(f"Fine-tuning of {row.label} on {row.task} scored {row.metric} "
                     f"{row.mean:.3f}, more than 0.05 below its linear probe ({reference:.3f}): "
                     f"{cause} (see best_step, n_fit and lp_val_loss in the result table).")
    return notes


# --------------------------------------------------------------------------- health
def health(doc, data):
    """Each pretraining run's held-out pretext score beside its trivial baseline, and the
    loss curves."""
    table = data.health
    if table is None or table.empty:
        doc.note("No training-health table given (bsym health; pass --health): whether each "
                 "pretraining run learned is not shown.")
    else:
        doc.text("Each pretraining run's own pretext task on held-out subjects (R² over the "
                 "hidden entries), beside the best trivial baseline that sees the same visible "
                 "entries, and the effective rank (RankMe) of its subject embeddings. learned = "
                 "beats the baseline on every objective and did not collapse.")
        cols = [c for c in ("dataset", "model", "view", "pretext_task", "pretext_score",
                            "trivial_score", "trivial_baseline", "effective_rank", "n_dims",
                            "dead_dims", "learned", "reason") if c in table.columns]
        doc.save_table(table, "health.csv")
        doc.table(table[cols])
    for path in map(Path, data.loss_figures):
        copy = doc.figdir / f"loss_{slug(path.parent.name, path.stem)}{path.suffix}"
        with atomic_output(copy, what="the loss-curve figure") as tmp:
            shutil.copyfile(path, tmp)
        doc.figure(copy)


# --------------------------------------------------------------------------- leaderboard
def _no_bench(text):
    return lambda data: text if data.bench.empty else None


def leaderboard(doc, data):
    """Mean ± sd, n and CI of every real score, per protocol."""
    doc.save_table(data.board, "leaderboard.csv")
    doc.text("Real scores only (controls are in the verdict above). Mean ± sample sd over "
             "folds and seeds; n = folds x seeds; 95% CI with the Nadeau-Bengio corrected "
             "standard error. Protocols are reported separately.")
    doc.add(leaderboard_html(data.board), leaderboard_md(data.board) + "\n")


# --------------------------------------------------------------------------- compute
def _no_budgets(data):
    if "pretrain_flops" not in data.everything.columns:
        return "No pretraining budgets in the result table: no compute curves."
    return None


def compute(doc, data):
    """Linear-probe score at each kept pretraining checkpoint against its compute."""
    everything = data.everything
    rows = everything[(everything["protocol"].astype(str) == "linear_probe")
                      & everything["control"].astype(str).isin(["none", "random_init"])
                      & pd.to_numeric(everything["pretrain_step"], errors="coerce").notna()]
    if rows.empty or rows["checkpoint"].nunique() < 2:
        doc.note("Probes exist at one pretraining checkpoint only (keep snapshots with "
                 "pretrain.snapshots to draw the curve).")
        return
    points = _compute_points(rows, data.primary)
    if points.empty:
        return
    doc.save_table(points, "compute_curves.csv")
    doc.text("Each model's linear-probe score (mean ± sd over folds) at the kept checkpoints of "
             "its pretraining run, against the training FLOPs (forward + backward) spent to "
             "reach them; the point at zero is the random initialisation. A ranking is read "
             "along these curves, not at one budget.")
    for dataset, block in points.groupby("dataset", sort=True):
        path = doc.figdir / f"compute_{slug(dataset)}.png"
        doc.figure(figures.compute_curves(block, path, title=f"{dataset}: linear probe against "
                                          "pretraining FLOPs (x = 0: random initialisation)"))
    budget = points.groupby(["dataset", "label"]).agg(
        steps=("pretrain_step", "max"), timepoints=("pretrain_timepoints", "max"),
        flops=("pretrain_flops", "max")).reset_index()
    doc.table(budget, floats="{:.3g}")


def _compute_points(rows, primary) -> pd.DataFrame:
    """Mean and sd of the primary metric per dataset x task x model x checkpoint, with the
    checkpoint's pretraining budget."""
    parts = []
    for (dataset, task, model, point), g in rows.groupby(["dataset", "task", "model",
                                                         "checkpoint"], sort=True):
        metric = primary.get(str(task))
        if metric is None:
            continue
        scores = pd.to_numeric(g[metric], errors="coerce").dropna()
        budget = {column: float(pd.to_numeric(g[column]).iloc[0]) for column in
                  ("pretrain_step", "pretrain_flops", "pretrain_timepoints")}
        parts.append({"dataset": dataset, "task": task, "metric": metric, "label": model,
                      "checkpoint": point, **budget, "mean": float(scores.mean()),
                      "sd": float(scores.std(ddof=1)) if len(scores) > 1 else float("nan")})
    return pd.DataFrame(parts)


# --------------------------------------------------------------------------- per fold
def per_fold(doc, data):
    """Each fold's score, per protocol x dataset x task."""
    for (protocol, dataset, task), rows in data.bench.groupby(["protocol", "dataset", "task"],
                                                             sort=True):
        metric = data.primary.get(str(task))
        if metric is None:
            continue
        scores = rows.assign(score=pd.to_numeric(rows[metric], errors="coerce")).dropna(
            subset=["score"])
        path = doc.figdir / f"strip_{slug(protocol, dataset, task, metric)}.png"
        doc.figure(figures.strip_plot(scores, path, metric=metric,
                                      title=f"{dataset} / {task} ({protocol}): {metric} per fold"))


# --------------------------------------------------------------------------- ranks
def critical_difference(doc, data):
    """Friedman + Nemenyi over dataset x task blocks, per protocol and all together."""
    doc.text("Models ranked within each dataset x task block (N blocks, k models). Two mean "
             "ranks differ by at most k - 1, and the Nemenyi critical difference is "
             "CD = q_alpha sqrt(k (k + 1) / (6 N)): where CD >= k - 1 (N = 2 blocks, for any "
             "k) no difference can be significant, and each diagram says so.")
    drawn = [_rank_block(doc, protocol, rows, mixed, data.alpha)
             for protocol, rows, mixed in _protocol_groups(data.bench)]
    if not any(drawn) and not data.bench.empty and \
            not any("rank tests" in n for n in doc.notes):
        doc.note("No protocol has at least 2 models on 2 dataset x task blocks: no CD diagram.")


def _rank_block(doc, protocol, rows, mixed, alpha) -> bool:
    """The CD diagram and rank table of one protocol (or all together); False where the
    rank tests cannot run (a note says why)."""
    mapping = primary_metrics(rows)
    try:
        ranks = stats.rank_tests(rows, mapping, alpha=alpha, mix_protocols=mixed)
    except stats.StatsError as err:
        doc.note(f"{protocol}: rank tests not computed ({err}).")
        return False
    path = doc.figdir / f"cd_{slug(protocol)}.png"
    close_figure(stats.plot_critical_difference(
        ranks, path, title=f"{protocol}: N = {ranks.n_blocks} blocks, Friedman p = {ranks.pvalue:.3g}"))
    doc.text(f"{protocol}: metric per task {mapping}; CD = {ranks.cd:.3f} at alpha = {alpha}; "
             f"Friedman chi2 = {ranks.statistic:.3f}, p = {ranks.pvalue:.3g}.")
    if ranks.few_blocks_note():  # the diagram carries it too, wherever it is copied
        doc.note(f"{protocol}: {ranks.few_blocks_note()}")
    doc.figure(path)
    rank_table = ranks.table().assign(protocol=protocol)
    doc.save_table(rank_table, f"ranks_{slug(protocol)}.csv")
    doc.table(rank_table)
    return True


# --------------------------------------------------------------------------- pairwise
def pairwise(doc, data):
    """The pairwise tests of each primary metric as significance matrices."""
    doc.text(f"Lower triangle: Holm-adjusted p of the corrected resampled t-test; upper "
             f"triangle: Bayesian correlated t-test probability that the row model is better "
             f"(ROPE ±{data.rope}).")
    any_pairs = False
    for metric, mixed, pairs, error in data.pairwise:
        if pairs is None:
            doc.note(f"{metric}{' (all protocols)' if mixed else ''}: pairwise tests not "
                     f"computed ({error}).")
            continue
        doc.save_table(pairs, f"pairwise_{metric}{'_all_protocols' if mixed else ''}.csv")
        for (dataset, task, protocol), g in pairs.groupby(["dataset", "task", "protocol"],
                                                          sort=True):
            label = "all protocols" if mixed else protocol
            path = doc.figdir / f"pairs_{slug(label, dataset, task, metric)}.png"
            doc.figure(figures.significance_matrix(
                g, path, title=f"{dataset} / {task} ({label}): {metric}"))
            any_pairs = True
    if not any_pairs and not data.bench.empty and not any("pairwise" in n for n in doc.notes):
        doc.note("No dataset x task x protocol with two or more models: no pairwise tests.")


# --------------------------------------------------------------------------- probe vs fine-tuning
def _without_both_protocols(data):
    if not {"linear_probe", "finetune"} <= set(data.bench["protocol"].astype(str)):
        return "The table does not hold both linear_probe and finetune rows: comparison omitted."
    return None


def probe_vs_finetune(doc, data):
    """Each model that was both probed and fine-tuned, the two side by side per task."""
    bench = data.bench
    both = bench[bench["protocol"].astype(str).isin(["linear_probe", "finetune"])]
    shared = both.groupby("model")["protocol"].nunique()
    both = both[both["model"].isin(shared[shared == 2].index)]
    if both.empty:
        doc.note("No model has both linear_probe and finetune rows: comparison omitted.")
        return
    for task, rows in both.groupby("task", sort=True):
        metric = data.primary.get(str(task))
        if metric is None:
            continue
        path = doc.figdir / f"probe_vs_finetune_{slug(task, metric)}.png"
        doc.figure(figures.grouped_bars(
            stats.summary(rows, metric), path, group="model", hue="protocol", ylabel=metric,
            title=f"{task}: linear probe vs fine-tuning ({metric}, mean ± sd)"))


# --------------------------------------------------------------------------- network identification
def _no_netid(data):
    if data.netid_rows.empty and not data.netid_figures:
        return "No network-identification results given: section omitted."
    return None


def network_identification(doc, data):
    """ROI embeddings against the atlas networks, beside their controls and baselines."""
    if not data.netid_rows.empty:
        _netid_scores(doc, data.netid_rows)
    for path in map(Path, data.netid_figures):
        if path.suffix.lower() not in (".png", ".svg", ".jpg", ".jpeg", ".gif"):
            doc.note(f"{path.name}: a browser cannot show {path.suffix} inline; write the "
                     "confusion figure as PNG or SVG (bsym netid --figure x.png) to embed it.")
            continue
        doc.figure(path)
    if not data.netid_figures:
        doc.note("No confusion-matrix figure given (bsym netid --figure; pass --netid-figure).")


def _netid_scores(doc, rows):
    summary = netid_summary(rows)
    doc.text("Mean ± sd over clustering seeds (k-means, spectral) of ROI embeddings "
             "against the atlas networks. Beside each model: its position-only embeddings "
             "(all-zero data: what its ROI code alone carries), its random initialisation, "
             "the FC- and SC-row baselines and the chance level (permuted network labels).")
    shown = pd.DataFrame({"dataset": summary["dataset"], "model": summary["model"],
                          "control": summary["control"], "n": summary["n"]})
    for metric in ("ari_kmeans", "nmi_kmeans", "ari_spectral", "knn_accuracy"):
        if f"{metric}_mean" in summary.columns:
            shown[metric] = [_fmt(m, sd) for m, sd in zip(summary[f"{metric}_mean"],
                                                         summary[f"{metric}_sd"])]
    doc.table(shown)
    labelled = rows.assign(label=[m if c == "none" else f"{m} ({c})"
                                  for m, c in zip(rows["model"], rows["control"].astype(str))])
    doc.figure(figures.netid_bars(labelled, doc.figdir / "netid_scores.png"))


# --------------------------------------------------------------------------- BrainSymphony
BRAINSYMPHONY_VIEWS = ("fmri", "sc", "fusion")


def _brainsymphony_rows(bench):
    return bench[(bench["base_model"].str.lower() == "brainsymphony")
                 & bench["view"].astype(str).str.lower().isin(BRAINSYMPHONY_VIEWS)]


def _fewer_than_two_views(data):
    if _brainsymphony_rows(data.bench)["view"].nunique() < 2:
        return ("No BrainSymphony rows with at least two of the views fmri / sc / fusion: "
                "section omitted.")
    return None


def brainsymphony_views(doc, data):
    """BrainSymphony's fusion embedding beside its single-modality branches."""
    rows = _brainsymphony_rows(data.bench)
    for protocol, block in rows.groupby(rows["protocol"].astype(str), sort=True):
        summary = _views_summary(block, data.primary)
        if summary is None:
            continue
        path = doc.figdir / f"brainsymphony_views_{slug(protocol)}.png"
        doc.figure(figures.grouped_bars(summary, path, group="label", hue="view",
                                        title=f"BrainSymphony views ({protocol}), mean ± sd"))
        doc.table(summary[["protocol", "dataset", "task", "metric", "view", "n", "mean", "sd",
                           "ci_low", "ci_high"]])


def _views_summary(rows, primary) -> pd.DataFrame | None:
    """:func:`bsym.stats.summary` of each task's primary metric per view, labelled
    ``task (metric)``; None where no task has a primary metric."""
    parts = []
    for task, trows in rows.groupby("task", sort=True):
        metric = primary.get(str(task))
        if metric is None:
            continue
        parts.append(stats.summary(trows, metric).assign(
            view=lambda f: f["model"].str.split(":").str[-1],
            label=lambda f, m=metric: f["task"].astype(str) + f" ({m})"))
    return pd.concat(parts, ignore_index=True) if parts else None


# --------------------------------------------------------------------------- attention
def _no_contrast(data):
    return None if data.contrasts else "No attention contrast given: section omitted."


def attention(doc, data):
    """Each ``bsym attention`` contrast: network x network heatmaps and its FDR hits."""
    for label, contrast in data.contrasts:
        if len(data.contrasts) > 1:
            doc.text(f"**{label}**")
        prefix = "attention" if len(data.contrasts) == 1 else f"attention_{slug(label)}"
        if "family" in contrast.columns and (contrast["family"] == "net_pair").any():
            for name in sorted(contrast.loc[contrast["family"] == "net_pair",
                                            "map"].astype(str).unique()):
                path = doc.figdir / f"{prefix}_{slug(name)}.png"
                doc.figure(figures.attention_heatmap(contrast, path, map_name=name))
        hits = contrast[contrast["significant"].astype(bool)] if "significant" in contrast \
            else contrast[:0]
        cols = [c for c in ("map", "family", "feature", "diff", "t", "effect_size", "q")
                if c in contrast]
        doc.text(f"{len(hits)} of {len(contrast)} attention summaries survive FDR.")
        if len(hits):
            doc.table(hits[cols].head(30))


# --------------------------------------------------------------------------- published
def published(doc, data):
    """The BrainSymphony paper's HCP-Aging numbers, and ours in its columns."""
    doc.text("Numbers published in BrainSymphony (arXiv 2506.18314, Fig. 2k-l) on HCP-Aging, shown "
             "for reference beside ours. They are the paper's results, not expected values for "
             "this benchmark (different data, splits and code).")
    doc.table(published_table().assign(source=PUBLISHED_LABEL), floats="{:g}")
    ours = beside_published(data.board) if data.board is not None else pd.DataFrame()
    if len(ours):
        doc.text("Ours (this benchmark; mean ± sd over folds and seeds) in the paper's columns, "
                 "from tasks named age and sex:")
        doc.table(ours)
    else:
        doc.note("No age or sex task with the paper's metrics in our table: nothing to set "
                 "beside it.")


# --------------------------------------------------------------------------- provenance
def provenance(doc, data):
    """The table's provenance columns, the package versions and the machine."""
    doc.table(table_provenance(data.results))
    env = environment()
    doc.table(pd.DataFrame({"package": list(env["packages"]),
                            "version": list(env["packages"].values())}))
    doc.table(pd.DataFrame({"field": ["python", "platform", "cpu", "gpu", "report built (UTC)",
                                      "result rows"],
                            "value": [env["python"], env["platform"], env["cpu"], env["gpu"],
                                      env["built"], str(len(data.results))]}))


#: The sections of one model family, each included when the results hold what it shows.
MODEL_SECTIONS = {
    "brainsymphony_views": Section("BrainSymphony: fusion vs single-modality branches",
                                   brainsymphony_views, _fewer_than_two_views),
    "attention": Section("Attention contrast", attention, _no_contrast),
    "published": Section(PUBLISHED_LABEL, published),
}

#: The report's sections, in order.
SECTIONS = (
    Section("At a glance", glance, _no_verdict_to_glance, heading=False),
    Section("Verdict", verdict, _no_verdict),
    Section("Training health", health),
    Section("Leaderboard", leaderboard, _no_bench(
        "No linear_probe / finetune / supervised rows in the result table: no leaderboard.")),
    Section("Score against pretraining compute", compute, _no_budgets),
    Section("Per-fold scores", per_fold, _no_bench("No benchmark rows: no per-fold plots.")),
    Section("Critical-difference diagram (Friedman + Nemenyi)", critical_difference),
    Section("Pairwise comparisons", pairwise),
    MODEL_SECTIONS["brainsymphony_views"],
    Section("Linear probe vs fine-tuning", probe_vs_finetune, _without_both_protocols),
    Section("Network identification", network_identification, _no_netid),
    MODEL_SECTIONS["attention"],
    MODEL_SECTIONS["published"],
    Section("Provenance", provenance),
)
