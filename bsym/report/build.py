"""Leaderboard, statistics and the self-contained HTML / Markdown report.

Every number comes from the long result table. A model with several views (e.g.
BrainSymphony's ``fmri``, ``sc`` and ``fusion`` embeddings) is shown as ``model:view``;
``view == "default"`` keeps the bare model name. Protocols are never mixed: each
leaderboard, test and figure is computed within one protocol. Leaderboards, tests and
ranks read the real scores (``control == "none"`` of finished models); the report opens
with the verdict, where each score stands beside its controls (random initialisation,
shuffled labels) and the training-health mark of its model, and a model that did not
learn is labelled so wherever it appears.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import pandas as pd

from bsym.errors import BsymError
from bsym.io import disk_error
from bsym.outputs import GENERATOR, OutputFolder, atomic_output, layout, write_csv

#: Metrics shown by default, in this order (those present in the table).
METRIC_ORDER = ("auroc", "balanced_accuracy", "accuracy", "f1", "pearson_r", "r2", "mse", "mae")
#: Preferred metric of a task for ranks and figures (first one the task reports).
PRIMARY_ORDER = ("auroc", "balanced_accuracy", "accuracy", "f1", "pearson_r", "r2", "mse", "mae")
NETID_PROTOCOL = "network_identification"
NETID_METRICS = ("ari_kmeans", "nmi_kmeans", "ari_spectral", "nmi_spectral", "knn_accuracy")
PROVENANCE_COLUMNS = ("git_sha", "config_hash", "manifest_hash", "split_hash")
PACKAGES = ("bsym", "torch", "numpy", "scikit-learn", "nilearn", "mlflow", "optuna", "pandas",
            "scipy", "matplotlib")
PUBLISHED_LABEL = "published (paper, HCP-Aging)"
#: Appended to the label of a model whose pretraining did not beat its trivial baseline.
UNLEARNED_MARK = " [did not learn]"


class ReportError(BsymError):
    """A result table or report input that cannot be reported."""


# --------------------------------------------------------------------------- inputs
def load_table(path, what="the result table", fix=None) -> pd.DataFrame:
    """A Parquet or CSV table; ``what`` and ``fix`` word the errors."""
    path = Path(path)
    fix = fix or ("pass the result table that `bsym probe | finetune | supervised | netid "
                  "--results` wrote (the default is results/results.parquet)")
    if not path.is_file():
        state = "a folder, not a file" if path.is_dir() else "no such file"
        raise ReportError(f"{path}: {state}; expected {what} (Parquet or CSV). Fix: {fix}")
    try:
        if path.suffix.lower() in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - pyarrow and pandas raise several types
        raise ReportError(f"{path}: cannot read {what} ({type(err).__name__}: {err}); it is "
                          f"damaged or not a Parquet/CSV table. Fix: {fix}") from None


def check_results(results: pd.DataFrame, source=None) -> pd.DataFrame:
    """Raise :class:`ReportError` unless ``results`` has the result table's key columns."""
    from bsym.stats import REQUIRED_COLUMNS

    missing = [c for c in REQUIRED_COLUMNS if c not in results.columns]
    if missing:
        where = f"{source}: " if source is not None else ""
        raise ReportError(
            f"{where}the result table lacks the column(s) {missing}; received "
            f"{list(results.columns)[:8]}{' ...' if len(results.columns) > 8 else ''}. Fix: "
            "pass the result table that `bsym probe | finetune | supervised | netid --results` "
            "wrote")
    return results


def model_labels(results: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``model`` replaced by ``model:view`` where a view other than default is named
    (the original model kept in ``base_model``)."""
    if "model" not in results.columns:
        raise ReportError(f"the result table has no 'model' column; received {list(results.columns)}")
    frame = results.copy()
    frame["base_model"] = frame["model"].astype(str)
    if "view" in frame.columns:
        view = frame["view"]
        plain = view.isna() | view.astype(str).isin(["default", "", "None"])
        frame.loc[~plain, "model"] = frame.loc[~plain, "base_model"] + ":" + view[~plain].astype(str)
        frame["view"] = view.where(~plain, "default")
    else:
        frame["view"] = "default"
    frame["model"] = frame["model"].astype(str)
    return frame


def load_health(health) -> pd.DataFrame | None:
    """The training-health table (path or frame; None stays None)."""
    if health is None:
        return None
    fix = ("pass the table `bsym health --out` wrote (or the workflow's "
           "<dataset>_health.parquet)")
    frame = health if isinstance(health, pd.DataFrame) else \
        load_table(health, "the training-health table", fix)
    missing = [c for c in ("model", "view", "learned") if c not in frame.columns]
    if missing:
        where = "" if isinstance(health, pd.DataFrame) else f"{health}: "
        raise ReportError(f"{where}the health table lacks columns {missing}; expected the table "
                          f"of `bsym health` (model, view, learned, ...). Fix: {fix}")
    return frame


def health_beside(results_path) -> Path | None:
    """``<table>_health.parquet`` beside a result table, where the workflow writes it."""
    path = Path(results_path)
    candidate = path.with_name(f"{path.stem}_health.parquet")
    return candidate if candidate.exists() else None


def unlearned(health) -> set:
    """``{(model, view)}`` whose pretraining health check failed."""
    if health is None or health.empty:
        return set()
    failed = health[~health["learned"].astype(bool)]
    return {(str(m), str(v)) for m, v in zip(failed["model"], failed["view"])}


def mark_unlearned(labelled: pd.DataFrame, health) -> pd.DataFrame:
    """Append :data:`UNLEARNED_MARK` to the ``model`` label of rows whose model (and view)
    did not learn, so no ranking shows it silently."""
    failed = unlearned(health)
    if not failed:
        return labelled
    frame = labelled.copy()
    hit = [(str(m), str(v)) in failed or (str(m), "default") in failed
           for m, v in zip(frame["base_model"], frame["view"])]
    frame.loc[hit, "model"] = frame.loc[hit, "model"] + UNLEARNED_MARK
    return frame


def _has(frame, metric) -> bool:
    return metric in frame.columns and pd.to_numeric(frame[metric], errors="coerce").notna().any()


def report_metrics(results: pd.DataFrame, metrics=None, source=None) -> list[str]:
    """Metrics to report: the given ones (checked), else every known metric with a value
    (``source``: the table's file, for messages)."""
    if metrics:
        lacking = [m for m in metrics if m not in results.columns]
        if lacking:
            known = [m for m in results.columns if m in METRIC_ORDER or m in NETID_METRICS]
            where = f"{source}: " if source is not None else ""
            raise ReportError(f"{where}metric(s) {lacking} not in the result table; it has "
                              f"{known}. "
                              f"Fix: pass --metric with one of {known} (or leave it out: "
                              "every metric the table reports)")
        return list(metrics)
    return [m for m in METRIC_ORDER if _has(results, m)]


def primary_metrics(results: pd.DataFrame) -> dict:
    """Task -> its preferred metric (the first of :data:`PRIMARY_ORDER` it reports)."""
    out = {}
    for task, rows in results.groupby("task", sort=True):
        for metric in PRIMARY_ORDER:
            if _has(rows, metric):
                out[str(task)] = metric
                break
    return out


def _split(results: pd.DataFrame):
    """(benchmark rows, network-identification rows)."""
    protocol = results["protocol"].astype(str) if "protocol" in results.columns else None
    if protocol is None:
        raise ReportError("the result table has no 'protocol' column; every row must name its "
                          "protocol (linear_probe, finetune, supervised)")
    return results[protocol != NETID_PROTOCOL], results[protocol == NETID_PROTOCOL]


# --------------------------------------------------------------------------- leaderboard
def leaderboard(results: pd.DataFrame, metrics=None, *, confidence: float = 0.95,
                health=None) -> pd.DataFrame:
    """Mean, sd, n and CI per protocol x dataset x task x metric x model (from stats.summary).

    Real scores only (control rows and earlier checkpoints are left out); network-
    identification rows are left out (see the report's own section). With ``health``,
    models that did not learn carry :data:`UNLEARNED_MARK`.
    """
    from bsym import stats
    from bsym.stats.controls import real_rows

    frame, _ = _split(mark_unlearned(model_labels(real_rows(results)), load_health(health)))
    if frame.empty:
        raise ReportError("the result table has no benchmark rows (linear_probe, finetune or "
                          "supervised)")
    parts = []
    for metric in report_metrics(frame, metrics):
        rows = frame[pd.to_numeric(frame[metric], errors="coerce").notna()]
        if rows.empty:
            continue
        parts.append(stats.summary(rows, metric, confidence=confidence))
    if not parts:
        raise ReportError(f"no row has a value for {metrics}")
    board = pd.concat(parts, ignore_index=True)
    return board[["protocol", "dataset", "task", "metric", "model", "n", "n_seeds", "mean", "sd",
                  "ci_low", "ci_high"]].sort_values(
        ["protocol", "dataset", "task", "metric", "model"], kind="stable").reset_index(drop=True)


def _cell(mean, sd, digits=4) -> str:
    if not np.isfinite(sd):
        return f"{mean:.{digits}f} ± n/a"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def format_leaderboard(board: pd.DataFrame, digits: int = 3) -> str:
    """Plain-text leaderboard: per protocol and dataset and metric, model x task cells
    ``mean ± sd (n)``."""
    lines = []
    for (protocol, dataset), block in board.groupby(["protocol", "dataset"], sort=True):
        lines.append(f"== protocol: {protocol} | dataset: {dataset} ==")
        for metric, rows in block.groupby("metric", sort=False):
            cells = rows.assign(cell=[f"{_cell(m, s, digits)} (n={n})" for m, s, n in
                                      zip(rows["mean"], rows["sd"], rows["n"])])
            table = cells.pivot(index="model", columns="task", values="cell").fillna("-")
            table.columns.name = None
            table.index.name = f"[{metric}]"
            lines.append(table.to_string())
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- stats
def run_stats(results: pd.DataFrame, metric, out, *, alpha: float = 0.05, rope: float = 0.01,
              figure_format: str = "png", health=None, source=None) -> dict:
    """Pairwise tests (CSV), rank tests per protocol (CSV) and CD diagrams into ``out``.

    ``metric`` is one metric or several: pairwise tests are run per metric; rank tests
    rank each task by the first of the metrics it reports, so ``["auroc", "pearson_r"]``
    ranks classification and regression tasks together. Real scores only; models that
    did not learn (``health``) carry :data:`UNLEARNED_MARK`. Returns the written paths and
    notes on what could not be computed. ``source`` (the table's file) words the errors.
    Only a new, empty or bsym stats folder is written into (:class:`OutputFolder`).
    """
    from bsym.stats.controls import real_rows

    metrics = [metric] if isinstance(metric, str) else list(metric)
    out = Path(out)
    folder = stats_folder(out).check()
    check_results(results, source)
    frame, _ = _split(mark_unlearned(model_labels(real_rows(results)), load_health(health)))
    lacking = [m for m in metrics if m not in frame.columns]
    if lacking:
        known = [c for c in frame.columns if c in METRIC_ORDER or c in NETID_METRICS]
        where = f"{source}: " if source is not None else ""
        raise ReportError(f"{where}metric(s) {lacking} not columns of the result table; it "
                          f"has {known}. Fix: pass --metric with one of {known}")
    with folder:
        return _write_stats(frame, metrics, out, alpha=alpha, rope=rope,
                            figure_format=figure_format)


def stats_folder(out) -> OutputFolder:
    """The ``bsym stats --out`` folder (an older bsym's index-less one is recognised)."""
    return OutputFolder(out, "stats", legacy=layout(r"pairwise_.+\.csv", r"ranks_.+\.csv",
                                                    r"cd_.+\.(png|pdf|svg)"))


def report_folder(out) -> OutputFolder:
    """The ``bsym report --out`` folder (an older bsym's index-less one is recognised)."""
    return OutputFolder(out, "report", legacy=lambda entries: "report.html" in entries and
                        layout(r"report\.(html|md)", r"figures/[^/]+", r"tables/[^/]+")(entries))


def _write_stats(frame, metrics, out, *, alpha, rope, figure_format):
    from bsym import stats

    written, notes = {}, []
    for name in metrics:
        rows = frame[pd.to_numeric(frame[name], errors="coerce").notna()]
        try:
            pairs = stats.pairwise_tests(rows, name, rope=rope)
        except stats.StatsError as err:
            notes.append(f"pairwise tests ({name}): {err}")
            continue
        written[f"pairwise_{name}"] = write_csv(pairs, out / f"pairwise_{name}.csv")
    tag = "+".join(metrics)
    for protocol, rows in frame.groupby(frame["protocol"].astype(str), sort=True):
        mapping = {}
        for task, trows in rows.groupby("task", sort=True):
            found = next((m for m in metrics if _has(trows, m)), None)
            if found is not None:
                mapping[str(task)] = found
        try:
            if not mapping:
                raise stats.StatsError(f"no task reports {metrics}")
            ranks = stats.rank_tests(rows[rows["task"].astype(str).isin(mapping)],
                                     mapping if len(metrics) > 1 else metrics[0], alpha=alpha)
        except stats.StatsError as err:
            notes.append(f"rank tests ({protocol}): {err}")
            continue
        table = ranks.table().assign(protocol=protocol, metric=tag, n_blocks=ranks.n_blocks,
                                     friedman_chi2=ranks.statistic, friedman_p=ranks.pvalue,
                                     iman_davenport_p=ranks.iman_davenport_pvalue, cd=ranks.cd,
                                     alpha=alpha, can_be_significant=ranks.can_be_significant,
                                     min_blocks=ranks.min_blocks)
        if ranks.few_blocks_note():
            notes.append(f"rank tests ({protocol}): {ranks.few_blocks_note()}")
        written[f"ranks_{protocol}"] = write_csv(table, out / f"ranks_{_slug(tag)}_{protocol}.csv")
        path = out / f"cd_{_slug(tag)}_{protocol}.{figure_format}"
        _close(stats.plot_critical_difference(ranks, path))
        written[f"cd_{protocol}"] = path
    if not written:
        raise ReportError("no statistics could be computed: " + "; ".join(notes) + ". Fix: "
                          "compare at least two models on the same dataset, task and protocol "
                          "(add their rows to the result table), or pick --metric and "
                          "--protocol where they exist")
    return {"written": written, "notes": notes}


def _close(fig):
    import matplotlib.pyplot as plt

    plt.close(fig)


# --------------------------------------------------------------------------- provenance
def _gpu() -> str:
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=True)
            return out.stdout.strip().replace("\n", "; ") or "none found"
        except (OSError, subprocess.SubprocessError):
            return "nvidia-smi failed"
    return "none found (no nvidia-smi)"


def _cpu() -> str:
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name or 'unknown'} ({os.cpu_count()} logical cores)"


def environment() -> dict:
    """Package versions, Python, platform, CPU and GPU of the machine building the report."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"packages": versions, "python": platform.python_version(), "platform": platform.platform(),
            "cpu": _cpu(), "gpu": _gpu(),
            "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def table_provenance(results: pd.DataFrame, limit: int = 12) -> pd.DataFrame:
    """Distinct values of the provenance columns found in the table, with row counts (the
    ``limit`` most frequent per column, the rest counted in one line)."""
    rows = []
    for column in (*PROVENANCE_COLUMNS, "bsym_version"):
        if column not in results.columns:
            rows.append({"field": column, "value": "(column absent)", "rows": 0})
            continue
        counts = results[column].astype("string").fillna("(none)").value_counts()
        for value, count in counts.head(limit).items():
            rows.append({"field": column, "value": str(value), "rows": int(count)})
        if len(counts) > limit:
            rows.append({"field": column, "value": f"... and {len(counts) - limit} more distinct values",
                         "rows": int(counts.iloc[limit:].sum())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- published
def published_table() -> pd.DataFrame:
    """The paper's HCP-Aging numbers (arXiv 2506.18314, Fig. 2k-l), packaged with bsym.

    These are published results, shown for comparison, never expected values.
    """
    with resources.files("bsym.report").joinpath("published.csv").open() as handle:
        return pd.read_csv(handle, comment="#")


#: The paper's columns: (our task, our metric) per published column.
PUBLISHED_COLUMNS = {"age_mse": ("age", "mse"), "age_rho": ("age", "pearson_r"),
                     "sex_acc": ("sex", "accuracy"), "sex_f1": ("sex", "f1")}


def _beside_published(board: pd.DataFrame) -> pd.DataFrame:
    """Our leaderboard in the published table's columns (mean ± sd), one row per protocol,
    dataset and model."""
    rows = {}
    for column, (task, metric) in PUBLISHED_COLUMNS.items():
        hit = board[(board["task"].astype(str).str.lower() == task) & (board["metric"] == metric)]
        for r in hit.itertuples(index=False):
            key = (r.model, r.protocol, r.dataset)
            rows.setdefault(key, {})[column] = _cell(r.mean, r.sd, 3)
    frame = pd.DataFrame([{"model": k[0], "method": k[1], "dataset": k[2],
                           **{c: v.get(c, "-") for c in PUBLISHED_COLUMNS},
                           "source": "ours (this benchmark)"} for k, v in sorted(rows.items())])
    return frame


# --------------------------------------------------------------------------- HTML pieces
_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 10px;color:#222}
h1{margin:.2em 0 .4em;font-size:1.7em}figure{margin:0 0 1.2em}figcaption{color:#777;font-size:12px}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f0f0f0}
td.l,th.l{text-align:left}.note{color:#666;font-style:italic}img{max-width:100%}
.wide{overflow-x:auto}h2{border-bottom:1px solid #ddd;margin-top:2em}"""


def _esc(value) -> str:
    return html.escape(str(value))


def _img(path) -> str:
    path = Path(path)
    data = base64.b64encode(path.read_bytes()).decode()
    kind = {"svg": "svg+xml", "jpg": "jpeg"}.get(path.suffix.lower().lstrip("."),
                                                 path.suffix.lower().lstrip("."))
    return f'<figure><img alt="{_esc(path.name)}" src="data:image/{kind};base64,{data}"/>' \
           f"<figcaption>{_esc(path.name)}</figcaption></figure>"


def _html_table(frame: pd.DataFrame, floats: str = "{:.4g}") -> str:
    head = "".join(f'<th class="l">{_esc(c)}</th>' for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            if isinstance(value, float | np.floating):
                cells.append(f"<td>{'' if np.isnan(value) else floats.format(value)}</td>")
            else:
                cells.append(f'<td class="l">{_esc(value)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class=\"wide\"><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _md_table(frame: pd.DataFrame, floats: str = "{:.4g}") -> str:
    def fmt(v):
        if isinstance(v, float | np.floating):
            return "" if np.isnan(v) else floats.format(v)
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
             "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(str(p) for p in parts)).strip("-")


def _leaderboard_html(board: pd.DataFrame) -> str:
    """Per protocol: one row per dataset x task x metric x model, cells tagged for parsing."""
    parts = []
    for protocol, block in board.groupby("protocol", sort=True):
        parts.append(f"<h3>protocol: {_esc(protocol)}</h3>")
        rows = []
        for r in block.itertuples(index=False):
            attrs = (f'data-protocol="{_esc(r.protocol)}" data-dataset="{_esc(r.dataset)}" '
                     f'data-task="{_esc(r.task)}" data-metric="{_esc(r.metric)}" '
                     f'data-model="{_esc(r.model)}"')
            ci = "n/a" if not np.isfinite(r.ci_low) else f"[{r.ci_low:.4f}, {r.ci_high:.4f}]"
            rows.append(f'<tr><td class="l">{_esc(r.dataset)}</td><td class="l">{_esc(r.task)}</td>'
                        f'<td class="l">{_esc(r.metric)}</td><td class="l">{_esc(r.model)}</td>'
                        f'<td class="n" {attrs}>{r.n}</td>'
                        f'<td class="score" {attrs}>{_cell(r.mean, r.sd)}</td>'
                        f'<td class="ci" {attrs}>{ci}</td></tr>')
        parts.append('<div class="wide"><table class="leaderboard"><tr><th class="l">dataset'
                     '</th><th class="l">task</th><th class="l">metric</th><th class="l">model'
                     '</th><th>n (folds x seeds)</th><th>mean ± sd</th><th>95% CI (corrected)'
                     '</th></tr>' + "".join(rows) + "</table></div>")
    return "\n".join(parts)


def _leaderboard_md(board: pd.DataFrame) -> str:
    parts = []
    for protocol, block in board.groupby("protocol", sort=True):
        shown = pd.DataFrame({
            "dataset": block["dataset"], "task": block["task"], "metric": block["metric"],
            "model": block["model"], "n": block["n"],
            "mean ± sd": [_cell(m, s) for m, s in zip(block["mean"], block["sd"])],
            "95% CI": ["n/a" if not np.isfinite(lo) else f"[{lo:.4f}, {hi:.4f}]"
                       for lo, hi in zip(block["ci_low"], block["ci_high"])]})
        parts.append(f"### protocol: {protocol}\n\n{_md_table(shown)}")
    return "\n\n".join(parts)


class _Doc:
    """Accumulates the HTML and Markdown of the report side by side."""

    def __init__(self, out: Path):
        self.out = out
        self.html: list[str] = []
        self.md: list[str] = []
        self.figures: list[Path] = []

    def section(self, title):
        self.html.append(f"<h2>{_esc(title)}</h2>")
        self.md.append(f"\n## {title}\n")

    def note(self, text):
        self.html.append(f'<p class="note">{_esc(text)}</p>')
        self.md.append(f"_{text}_\n")

    def text(self, text):
        self.html.append(f"<p>{_esc(text)}</p>")
        self.md.append(f"{text}\n")

    def table(self, frame, floats="{:.4g}"):
        self.html.append(_html_table(frame, floats))
        self.md.append(_md_table(frame, floats) + "\n")

    def figure(self, path):
        path = Path(path)
        self.figures.append(path)
        self.html.append(_img(path))
        self.md.append(f"![{path.stem}]({path.relative_to(self.out).as_posix()})\n"
                       if path.is_relative_to(self.out) else f"![{path.stem}]({path})\n")


# --------------------------------------------------------------------------- report
def _protocol_groups(bench):
    """``(label, rows, mixed)``: each protocol on its own, then every protocol together
    (models compared as ``model [protocol]``) when there are several."""
    protocol = bench["protocol"].astype(str)
    groups = [(name, rows, False) for name, rows in bench.groupby(protocol, sort=True)]
    if protocol.nunique() > 1:
        groups.append(("all protocols", bench, True))
    return groups


def _fmt(mean, sd=None, digits=3) -> str:
    if mean is None or not np.isfinite(mean):
        return "-"
    if sd is None or not np.isfinite(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


#: Display order of the protocols in the at-a-glance matrix (others follow, sorted).
GLANCE_PROTOCOLS = ("linear_probe", "finetune", "supervised")


def _pairwise_all(bench, primary, rope) -> list:
    """``[(metric, mixed, pairs or None, error or None)]``: :func:`bsym.stats.pairwise_tests`
    of each primary metric within each protocol and, with several protocols, across them."""
    from bsym import stats

    out = []
    if bench.empty or not primary:
        return out
    mixes = (False, True) if bench["protocol"].astype(str).nunique() > 1 else (False,)
    for metric in sorted(set(primary.values())):
        rows = bench[bench["task"].astype(str).map(primary) == metric]
        for mixed in mixes:
            try:
                out.append((metric, mixed, stats.pairwise_tests(rows, metric, rope=rope,
                                                                mix_protocols=mixed), None))
            except stats.StatsError as err:
                out.append((metric, mixed, None, str(err)))
    return out


def glance_cells(verdict, pairwise, health, *, alpha: float = 0.05):
    """The cells of the at-a-glance matrix: the verdict with its display ``row`` and the
    ``mark`` of each cell (``"best"``, ``"tied"`` or ``""``).

    Per dataset x task the model with the best mean is ``best``; a model whose Holm-adjusted
    corrected resampled t-test against it (``pairwise``, from :func:`_pairwise_all`) has
    p >= ``alpha`` is ``tied``. With several protocols they are compared together (the
    ``model [protocol]`` tests) where those tests exist, else within each protocol. A group
    of one model gets no mark.

    Returns
    -------
    cells : DataFrame
    how : dict
        ``(dataset, task) -> "protocols compared together" | "within each protocol" | why
        untested``.
    """
    from bsym.stats import HIGHER_IS_BETTER

    cells = verdict.copy()
    cells["higher"] = [HIGHER_IS_BETTER.get(str(m).lower(), True) for m in cells["metric"]]
    cells["row"] = [f"{label} [{protocol}]" for label, protocol in
                    zip(cells["label"], cells["protocol"].astype(str))]
    cells["mark"] = ""
    marked = mark_unlearned(pd.DataFrame({"base_model": cells["model"].astype(str),
                                          "view": cells["view"].astype(str),
                                          "model": cells["label"].astype(str)}), health)["model"]
    tables = {(m, mixed): t for m, mixed, t, _ in pairwise if t is not None}
    errors = {(m, mixed): e for m, mixed, _, e in pairwise if e is not None}
    several = cells["protocol"].astype(str).nunique() > 1
    how = {}
    for (dataset, task), column in cells.groupby(["dataset", "task"], sort=True):
        metric, higher = str(column["metric"].iloc[0]), bool(column["higher"].iloc[0])
        mixed = several and (metric, True) in tables
        table = tables.get((metric, mixed))
        how[(dataset, task)] = ("protocols compared together" if mixed else
                                "within each protocol") \
            if table is not None else f"not tested ({errors.get((metric, mixed), 'no pairs')})"
        groups = [column] if mixed else [g for _, g in column.groupby("protocol", sort=True)]
        for group in groups:
            scores = pd.to_numeric(group["mean"], errors="coerce").dropna()
            if len(scores) < 2:
                continue
            best = scores.idxmax() if higher else scores.idxmin()
            cells.loc[best, "mark"] = "best"
            if table is None:
                continue

            def entity(index, mixed=mixed):
                return f"{marked[index]} [{cells.loc[index, 'protocol']}]" if mixed \
                    else marked[index]

            here = table[(table["dataset"].astype(str) == str(dataset))
                         & (table["task"].astype(str) == str(task))]
            for index in scores.index.drop(best):
                pair = {entity(best), entity(index)}
                hit = here[[{a, b} == pair for a, b in zip(here["model_a"], here["model_b"])]]
                if not mixed:
                    hit = hit[hit["protocol"].astype(str) == str(cells.loc[index, "protocol"])]
                if len(hit) and float(hit["p_holm"].iloc[0]) >= alpha:
                    cells.loc[index, "mark"] = "tied"
    return cells, how


def _glance_order(cells) -> list:
    """Display rows: by protocol (:data:`GLANCE_PROTOCOLS` first), then best mean rank over
    the tasks first."""
    rank = cells.assign(score=np.where(cells["higher"], cells["mean"], -cells["mean"]))
    rank["r"] = rank.groupby(["dataset", "task"])["score"].rank(ascending=False)
    order = rank.groupby(["row", "protocol"], sort=False)["r"].mean().reset_index()
    known = {p: i for i, p in enumerate(GLANCE_PROTOCOLS)}
    order["p"] = [known.get(str(p), len(known)) for p in order["protocol"]]
    return list(order.sort_values(["p", "protocol", "r", "row"], kind="stable")["row"])


def _glance_section(doc, verdict, bench, pairwise, health, figdir, tabdir, tables, note, *,
                    alpha):
    """The report's first screen: per dataset, one model x task picture of the verdict."""
    from bsym.report.figures import glance_matrix

    doc.md.append("\n## At a glance\n")  # no HTML heading: the picture is the first screen
    if verdict is None or verdict.empty:
        note("No real benchmark scores: nothing to show at a glance (see the sections below).")
        return
    cells, how = glance_cells(verdict, pairwise, health, alpha=alpha)
    tables.append(tabdir / "glance.csv")
    write_csv(cells.drop(columns=["label"]), tables[-1])
    for dataset, block in cells.groupby("dataset", sort=True):
        ways = sorted({v for (d, _), v in how.items() if d == dataset})
        tested = [w for w in ways if not w.startswith("not tested")]
        significance = (f"corrected resampled t-test, Holm over the column's pairs, "
                        f"alpha\u00a0=\u00a0{alpha:g}; {' / '.join(tested) or 'no test'}")
        order = _glance_order(block)
        block = block.set_index("row").loc[order].reset_index()
        path = figdir / f"glance_{_slug(dataset)}.png"
        doc.figure(glance_matrix(block, path, significance=significance,
                                 title=f"{dataset}: primary metric per model and task"))
        for (d, task), way in sorted(how.items()):
            if d == dataset and way.startswith("not tested"):
                note(f"{dataset} / {task}: best and tied marks {way}.")
    doc.text("Ties (≈) come from the Nadeau-Bengio corrected resampled t-test on paired folds "
             "and seeds, Holm-adjusted over every pair of the column (the Pairwise comparisons "
             f"below), at alpha = {alpha:g}. The full tables follow: verdict, training health, "
             "leaderboard, statistics.")


def _verdict(results, primary, health) -> pd.DataFrame | None:
    """:func:`~bsym.stats.controls.verdict_table` with a ``label`` (``model:view``), sorted;
    None without benchmark rows."""
    from bsym.stats.controls import verdict_table

    if not primary:
        return None
    verdict = verdict_table(results, primary, health=health)
    if verdict.empty:
        return verdict
    verdict["label"] = [m if str(v) in ("default", "", "None") else f"{m}:{v}"
                        for m, v in zip(verdict["model"], verdict["view"])]
    return verdict.sort_values(["dataset", "task", "protocol", "mean"],
                               ascending=[True, True, True, False], kind="stable")


def _verdict_section(doc, results, verdict, figdir, tabdir, tables, note):
    """Every model x task score beside its controls and health, in full."""
    from bsym.report.figures import verdict_plot

    doc.section("Verdict")
    if verdict is None:
        note("No benchmark rows: no verdict.")
        return
    if verdict.empty:
        note("No real scores for the tasks' primary metrics: no verdict.")
        return
    tables.append(tabdir / "verdict.csv")
    write_csv(verdict, tables[-1])
    doc.text("Per dataset and task, each model's primary metric (mean over folds and seeds, "
             "95% t-interval) beside its controls: the same architecture at random "
             "initialisation through the same path, the probe refitted on labels permuted "
             "within each training fold (mean ± sd over permutations, with the permutation "
             "p-value of the real score), and whether its pretraining beat trivial baselines "
             "on held-out subjects. A score is evidence only where it clears both controls.")
    failed = sorted({row.label for row in verdict.itertuples() if row.learned is False})
    if failed:
        note(f"Did not learn (pretext task not above its trivial baseline on held-out "
             f"subjects, or collapsed): {', '.join(failed)}. Their scores are shown, marked, "
             "and never ranked unmarked.")
    shown = pd.DataFrame({
        "dataset": verdict["dataset"], "task": verdict["task"], "metric": verdict["metric"],
        "protocol": verdict["protocol"], "model": verdict["label"],
        "score [95% CI]": [f"{_fmt(r.mean)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"
                           for r in verdict.itertuples()],
        "random init": [_fmt(r.random_init, r.random_init_sd) for r in verdict.itertuples()],
        "shuffled labels": [_fmt(r.shuffled, r.shuffled_sd) for r in verdict.itertuples()],
        "perm. p": [f"{r.perm_p:.3g} ({r.permutations})" if np.isfinite(r.perm_p) else "-"
                    for r in verdict.itertuples()],
        "health": [r.health or "-" for r in verdict.itertuples()]})
    doc.table(shown)
    for text in _finetune_notes(verdict, results):
        note(text)
    for dataset, rows in verdict.groupby("dataset", sort=True):
        path = figdir / f"verdict_{_slug(dataset)}.png"
        doc.figure(verdict_plot(rows, path, title=f"{dataset}: score (dot, 95% CI), random init "
                                "(open circle), shuffled labels (grey, mean ± sd); red: did "
                                "not learn"))


def _finetune_notes(verdict, results) -> list:
    """Where fine-tuning predicted a single class, or fell more than 0.05 below the same
    model's linear probe on the task's primary metric: one sentence each, with the numbers
    and the likely cause."""
    notes = []
    tuned = results[(results["protocol"].astype(str) == "finetune")] \
        if "protocol" in results.columns else results[:0]
    if "single_class" in tuned.columns:
        single = tuned[tuned["single_class"].astype("boolean").fillna(False).astype(bool)]
        for (model, task), rows in single.groupby(["model", "task"], sort=True):
            notes.append(f"Fine-tuning of {model} on {task} predicted a single class on "
                         f"{len(rows)} fold(s) (pred_counts in the result table).")
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


def _health_section(doc, health, loss_figures, figdir, tabdir, tables, note):
    doc.section("Training health")
    if health is None or health.empty:
        note("No training-health table given (bsym health; pass --health): whether each "
             "pretraining run learned is not shown.")
    else:
        doc.text("Each pretraining run's own pretext task on held-out subjects (R² over the "
                 "hidden entries), beside the best trivial baseline that sees the same visible "
                 "entries, and the effective rank (RankMe) of its subject embeddings. learned = "
                 "beats the baseline on every objective and did not collapse.")
        cols = [c for c in ("dataset", "model", "view", "pretext_task", "pretext_score",
                            "trivial_score", "trivial_baseline", "effective_rank", "n_dims",
                            "dead_dims", "learned", "reason") if c in health.columns]
        tables.append(tabdir / "health.csv")
        write_csv(health, tables[-1])
        doc.table(health[cols])
    for path in loss_figures:
        path = Path(path)
        copy = figdir / f"loss_{_slug(path.parent.name, path.stem)}{path.suffix}"
        with atomic_output(copy, what="the loss-curve figure") as tmp:
            shutil.copyfile(path, tmp)
        doc.figure(copy)


def _compute_section(doc, everything, primary, figdir, tabdir, tables, note):
    """Linear-probe score at each kept pretraining checkpoint against its compute."""
    from bsym.report.figures import compute_curves

    doc.section("Score against pretraining compute")
    if "pretrain_flops" not in everything.columns:
        note("No pretraining budgets in the result table: no compute curves.")
        return
    rows = everything[(everything["protocol"].astype(str) == "linear_probe")
                      & everything["control"].astype(str).isin(["none", "random_init"])
                      & pd.to_numeric(everything["pretrain_step"], errors="coerce").notna()]
    if rows.empty or rows["checkpoint"].nunique() < 2:
        note("Probes exist at one pretraining checkpoint only (keep snapshots with "
             "pretrain.snapshots to draw the curve).")
        return
    parts = []
    for (dataset, task, model, point), g in rows.groupby(["dataset", "task", "model",
                                                         "checkpoint"], sort=True):
        metric = primary.get(str(task))
        if metric is None:
            continue
        scores = pd.to_numeric(g[metric], errors="coerce").dropna()
        parts.append({"dataset": dataset, "task": task, "metric": metric, "label": model,
                      "checkpoint": point,
                      "pretrain_step": float(pd.to_numeric(g["pretrain_step"]).iloc[0]),
                      "pretrain_flops": float(pd.to_numeric(g["pretrain_flops"]).iloc[0]),
                      "pretrain_timepoints": float(pd.to_numeric(g["pretrain_timepoints"]).iloc[0]),
                      "mean": float(scores.mean()),
                      "sd": float(scores.std(ddof=1)) if len(scores) > 1 else float("nan")})
    points = pd.DataFrame(parts)
    if points.empty:
        return
    tables.append(tabdir / "compute_curves.csv")
    write_csv(points, tables[-1])
    doc.text("Each model's linear-probe score (mean ± sd over folds) at the kept checkpoints of "
             "its pretraining run, against the training FLOPs (forward + backward) spent to "
             "reach them; the point at zero is the random initialisation. A ranking is read "
             "along these curves, not at one budget.")
    for dataset, block in points.groupby("dataset", sort=True):
        path = figdir / f"compute_{_slug(dataset)}.png"
        doc.figure(compute_curves(block, path, title=f"{dataset}: linear probe against "
                                  "pretraining FLOPs (x = 0: random initialisation)"))
    budget = points.groupby(["dataset", "label"]).agg(
        steps=("pretrain_step", "max"), timepoints=("pretrain_timepoints", "max"),
        flops=("pretrain_flops", "max")).reset_index()
    doc.table(budget, floats="{:.3g}")


def _netid_section(doc, netid_rows, netid_figures, figdir, note):
    from bsym.report.figures import netid_bars
    from bsym.stats.controls import netid_summary

    doc.section("Network identification")
    if netid_rows.empty and not netid_figures:
        note("No network-identification results given: section omitted.")
        return
    if not netid_rows.empty:
        summary = netid_summary(netid_rows)
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
        labelled = netid_rows.assign(label=[
            m if c == "none" else f"{m} ({c})"
            for m, c in zip(netid_rows["model"], netid_rows["control"].astype(str))])
        path = figdir / "netid_scores.png"
        doc.figure(netid_bars(labelled, path))
    for fig_path in netid_figures:
        fig_path = Path(fig_path)
        if fig_path.suffix.lower() not in (".png", ".svg", ".jpg", ".jpeg", ".gif"):
            note(f"{fig_path.name}: a browser cannot show {fig_path.suffix} inline; write the "
                 "confusion figure as PNG or SVG (bsym netid --figure x.png) to embed it.")
            continue
        doc.figure(fig_path)
    if not netid_figures:
        note("No confusion-matrix figure given (bsym netid --figure; pass --netid-figure).")


def build_report(results, out, *, metrics=None, netid=None, netid_figures=(), attention=None,
                 health=None, loss_figures=(), title: str = "bsym benchmark report",
                 alpha: float = 0.05, rope: float = 0.01) -> dict:
    """Write ``report.html`` (self-contained: figures inlined as base64 PNG), ``report.md``,
    ``figures/*.png`` and ``tables/*.csv`` into ``out``.

    Parameters
    ----------
    results : DataFrame or path
        The long result table.
    out : path
        Output folder (created).
    metrics : sequence of str, optional
        Metrics of the leaderboard (default every known metric in the table).
    netid : DataFrame or path, optional
        Network-identification rows (``bsym netid``); default: those in ``results``.
    netid_figures : sequence of paths
        Confusion-matrix figures (``bsym netid --figure``) to embed.
    attention : path or sequence of paths, optional
        ``contrast.csv``/``.parquet`` of ``bsym attention``, or its output folder (one per
        model; a folder is labelled by its name); the
        network x network heatmaps are redrawn from its ``net_pair`` rows.
    health : DataFrame or path, optional
        The training-health table (``bsym health``; default ``<results>_health.parquet``
        beside a result table given as a path, when it exists).
    loss_figures : sequence of paths
        Loss-curve figures of the pretraining runs (``bsym health --figure``).
    title : str
    alpha, rope : float
        Nemenyi level; ROPE half-width of the Bayesian test (metric units).

    Returns
    -------
    dict
        ``html``, ``markdown``, ``figures`` (list), ``tables`` (list), ``notes`` (list).
    """
    source = None if isinstance(results, pd.DataFrame) else Path(results)
    if health is None and source is not None:
        health = health_beside(source)
    if source is not None:
        results = load_table(source)
    check_results(results, source)
    health = load_health(health)
    if netid is not None and not isinstance(netid, pd.DataFrame):
        netid = load_table(netid, "the network-identification table",
                           "pass the --results table of `bsym netid` (or leave --netid out: "
                           "its rows are read from --results)")
    for path, option, made_by in [*((p, "--netid-figure", "bsym netid --figure")
                                    for p in netid_figures),
                                  *((p, "--loss-figure", "bsym health --figure")
                                    for p in loss_figures)]:
        if not Path(path).is_file():
            raise ReportError(f"{path}: no such figure ({option}). Fix: pass the figure "
                              f"`{made_by}` wrote, or leave {option} out")
    contrasts = _attention_tables(attention)
    report_metrics(results, metrics, source)
    folder = report_folder(out).check()
    with folder:
        return _write_report(results, Path(out), metrics=metrics, netid=netid,
                             netid_figures=netid_figures, contrasts=contrasts, health=health,
                             loss_figures=loss_figures, title=title, alpha=alpha, rope=rope)


def _attention_tables(attention) -> list:
    """``[(label, contrast table)]`` of the ``--attention`` inputs (files or folders)."""
    sources = [] if attention is None else \
        [attention] if isinstance(attention, (str, Path)) else list(attention)
    out = []
    for source in map(Path, sources):
        if source.is_dir():
            candidates = [source / "contrast.parquet", source / "contrast.csv"]
            table_path = next((c for c in candidates if c.exists()), None)
            label = source.name
        else:
            table_path, label = source, source.parent.name
        if table_path is None:
            raise ReportError(f"{source}: no contrast.parquet or contrast.csv in this folder. "
                              "Fix: pass the --out folder of `bsym attention` (or its "
                              "contrast.csv / contrast.parquet)")
        out.append((label, load_table(table_path, "the attention contrast",
                                      "pass the --out folder of `bsym attention`")))
    return out


def _write_report(results, out, *, metrics, netid, netid_figures, contrasts, health,
                  loss_figures, title, alpha, rope):
    from bsym import stats
    from bsym.stats.controls import fill_key_defaults, real_rows

    figdir, tabdir = out / "figures", out / "tables"
    for d in (figdir, tabdir):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise disk_error(err, d, what="the report folder") from err
    labelled = mark_unlearned(model_labels(real_rows(results)), health)
    bench, _ = _split(labelled)
    everything = fill_key_defaults(model_labels(results))
    _, netid_rows = _split(everything)
    doc = _Doc(out)
    tables, notes = [], []

    def note(text):
        notes.append(text)
        doc.note(text)

    primary = primary_metrics(bench) if not bench.empty else {}
    verdict = _verdict(results, primary, health)
    pairwise = _pairwise_all(bench, primary, rope)
    _glance_section(doc, verdict, bench, pairwise, health, figdir, tabdir, tables, note,
                    alpha=alpha)
    _verdict_section(doc, results, verdict, figdir, tabdir, tables, note)
    _health_section(doc, health, loss_figures, figdir, tabdir, tables, note)

    # -- leaderboard
    doc.section("Leaderboard")
    board = None
    if bench.empty:
        note("No linear_probe / finetune / supervised rows in the result table: no leaderboard.")
    else:
        board = leaderboard(results, metrics, health=health)
        tables.append(tabdir / "leaderboard.csv")
        write_csv(board, tables[-1])
        doc.text("Real scores only (controls are in the verdict above). Mean ± sample sd over "
                 "folds and seeds; n = folds x seeds; 95% CI with the Nadeau-Bengio corrected "
                 "standard error. Protocols are reported separately.")
        doc.html.append(_leaderboard_html(board))
        doc.md.append(_leaderboard_md(board) + "\n")

    _compute_section(doc, everything, primary, figdir, tabdir, tables, note)

    # -- per-fold strip plots
    doc.section("Per-fold scores")
    if bench.empty:
        note("No benchmark rows: no per-fold plots.")
    for (protocol, dataset, task), rows in bench.groupby(["protocol", "dataset", "task"], sort=True):
        metric = primary.get(str(task))
        if metric is None:
            continue
        scores = rows.assign(score=pd.to_numeric(rows[metric], errors="coerce")).dropna(subset=["score"])
        path = figdir / f"strip_{_slug(protocol, dataset, task, metric)}.png"
        from bsym.report.figures import strip_plot

        doc.figure(strip_plot(scores, path, metric=metric,
                              title=f"{dataset} / {task} ({protocol}): {metric} per fold"))

    # -- critical difference
    doc.section("Critical-difference diagram (Friedman + Nemenyi)")
    doc.text("Models ranked within each dataset x task block (N blocks, k models). Two mean "
             "ranks differ by at most k - 1, and the Nemenyi critical difference is "
             "CD = q_alpha sqrt(k (k + 1) / (6 N)): where CD >= k - 1 (N = 2 blocks, for any "
             "k) no difference can be significant, and each diagram says so.")
    drawn = False
    for protocol, rows, mixed in _protocol_groups(bench):
        mapping = {t: m for t, m in primary_metrics(rows).items()}
        try:
            ranks = stats.rank_tests(rows, mapping, alpha=alpha, mix_protocols=mixed)
        except stats.StatsError as err:
            note(f"{protocol}: rank tests not computed ({err}).")
            continue
        path = figdir / f"cd_{_slug(protocol)}.png"
        fig = stats.plot_critical_difference(
            ranks, path, title=f"{protocol}: N = {ranks.n_blocks} blocks, Friedman p = {ranks.pvalue:.3g}")
        _close(fig)
        doc.text(f"{protocol}: metric per task {mapping}; CD = {ranks.cd:.3f} at alpha = {alpha}; "
                 f"Friedman chi2 = {ranks.statistic:.3f}, p = {ranks.pvalue:.3g}.")
        if ranks.few_blocks_note():  # the diagram carries it too, wherever it is copied
            note(f"{protocol}: {ranks.few_blocks_note()}")
        doc.figure(path)
        rank_table = ranks.table().assign(protocol=protocol)
        tables.append(tabdir / f"ranks_{_slug(protocol)}.csv")
        write_csv(rank_table, tables[-1])
        doc.table(rank_table)
        drawn = True
    if not drawn and not bench.empty and not any("rank tests" in n for n in notes):
        note("No protocol has at least 2 models on 2 dataset x task blocks: no CD diagram.")

    # -- pairwise significance
    doc.section("Pairwise comparisons")
    doc.text(f"Lower triangle: Holm-adjusted p of the corrected resampled t-test; upper triangle: "
             f"Bayesian correlated t-test probability that the row model is better (ROPE ±{rope}).")
    any_pairs = False
    for metric, mixed, pairs, error in pairwise:
        suffix = "_all_protocols" if mixed else ""
        if pairs is None:
            note(f"{metric}{' (all protocols)' if mixed else ''}: pairwise tests not computed "
                 f"({error}).")
            continue
        tables.append(tabdir / f"pairwise_{metric}{suffix}.csv")
        write_csv(pairs, tables[-1])
        from bsym.report.figures import significance_matrix

        for (dataset, task, protocol), g in pairs.groupby(["dataset", "task", "protocol"],
                                                          sort=True):
            label = "all protocols" if mixed else protocol
            path = figdir / f"pairs_{_slug(label, dataset, task, metric)}.png"
            doc.figure(significance_matrix(g, path, title=f"{dataset} / {task} ({label}): {metric}"))
            any_pairs = True
    if not any_pairs and not bench.empty and not any("pairwise" in n for n in notes):
        note("No dataset x task x protocol with two or more models: no pairwise tests.")

    # -- BrainSymphony fusion vs branches
    doc.section("BrainSymphony: fusion vs single-modality branches")
    bs = bench[(bench["base_model"].str.lower() == "brainsymphony")
               & bench["view"].astype(str).str.lower().isin(["fmri", "sc", "fusion"])]
    if bs["view"].nunique() < 2:
        note("No BrainSymphony rows with at least two of the views fmri / sc / fusion: section omitted.")
    else:
        from bsym.report.figures import grouped_bars

        for protocol, rows in bs.groupby(bs["protocol"].astype(str), sort=True):
            parts = []
            for task, trows in rows.groupby("task", sort=True):
                metric = primary.get(str(task))
                if metric is None:
                    continue
                parts.append(stats.summary(trows, metric).assign(
                    view=lambda f: f["model"].str.split(":").str[-1],
                    label=lambda f, m=metric: f["task"].astype(str) + f" ({m})"))
            if not parts:
                continue
            summ = pd.concat(parts, ignore_index=True)
            path = figdir / f"brainsymphony_views_{_slug(protocol)}.png"
            doc.figure(grouped_bars(summ, path, group="label", hue="view",
                                    title=f"BrainSymphony views ({protocol}), mean ± sd"))
            doc.table(summ[["protocol", "dataset", "task", "metric", "view", "n", "mean", "sd",
                            "ci_low", "ci_high"]])

    # -- linear probe vs fine-tuning
    doc.section("Linear probe vs fine-tuning")
    protocols = set(bench["protocol"].astype(str))
    if not {"linear_probe", "finetune"} <= protocols:
        note("The table does not hold both linear_probe and finetune rows: comparison omitted.")
    else:
        both = bench[bench["protocol"].astype(str).isin(["linear_probe", "finetune"])]
        shared = both.groupby("model")["protocol"].nunique()
        both = both[both["model"].isin(shared[shared == 2].index)]
        if both.empty:
            note("No model has both linear_probe and finetune rows: comparison omitted.")
        else:
            from bsym.report.figures import grouped_bars

            for task, rows in both.groupby("task", sort=True):
                metric = primary.get(str(task))
                if metric is None:
                    continue
                summ = stats.summary(rows, metric)
                path = figdir / f"probe_vs_finetune_{_slug(task, metric)}.png"
                doc.figure(grouped_bars(summ, path, group="model", hue="protocol", ylabel=metric,
                                        title=f"{task}: linear probe vs fine-tuning ({metric}, mean ± sd)"))

    # -- network identification
    if netid is not None:
        netid_rows = fill_key_defaults(model_labels(netid))
    _netid_section(doc, netid_rows, netid_figures, figdir, note)

    # -- attention
    doc.section("Attention contrast")
    if not contrasts:
        note("No attention contrast given: section omitted.")
    for label, contrast in contrasts:
        from bsym.report.figures import attention_heatmap

        if len(contrasts) > 1:
            doc.text(f"**{label}**")
        if "family" in contrast.columns and (contrast["family"] == "net_pair").any():
            for name in sorted(contrast.loc[contrast["family"] == "net_pair", "map"].astype(str).unique()):
                stem = f"attention_{_slug(name)}" if len(contrasts) == 1 else \
                    f"attention_{_slug(label)}_{_slug(name)}"
                doc.figure(attention_heatmap(contrast, figdir / f"{stem}.png", map_name=name))
        hits = contrast[contrast["significant"].astype(bool)] if "significant" in contrast else contrast[:0]
        cols = [c for c in ("map", "family", "feature", "diff", "t", "effect_size", "q") if c in contrast]
        doc.text(f"{len(hits)} of {len(contrast)} attention summaries survive FDR.")
        if len(hits):
            doc.table(hits[cols].head(30))

    # -- published
    doc.section(PUBLISHED_LABEL)
    doc.text("Numbers published in BrainSymphony (arXiv 2506.18314, Fig. 2k-l) on HCP-Aging, shown "
             "for reference beside ours. They are the paper's results, not expected values for "
             "this benchmark (different data, splits and code).")
    published = published_table()
    doc.table(published.assign(source=PUBLISHED_LABEL), floats="{:g}")
    ours = _beside_published(board) if board is not None else pd.DataFrame()
    if len(ours):
        doc.text("Ours (this benchmark; mean ± sd over folds and seeds) in the paper's columns, "
                 "from tasks named age and sex:")
        doc.table(ours)
    else:
        note("No age or sex task with the paper's metrics in our table: nothing to set beside it.")

    # -- provenance
    doc.section("Provenance")
    prov = table_provenance(results)
    doc.table(prov)
    env = environment()
    doc.table(pd.DataFrame({"package": list(env["packages"]), "version": list(env["packages"].values())}))
    doc.table(pd.DataFrame({"field": ["python", "platform", "cpu", "gpu", "report built (UTC)",
                                      "result rows"],
                            "value": [env["python"], env["platform"], env["cpu"], env["gpu"],
                                      env["built"], str(len(results))]}))

    head = (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f'<meta name="generator" content="{_esc(GENERATOR)}"><title>{_esc(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{_esc(title)}</h1>")
    html_path, md_path = out / "report.html", out / "report.md"
    with atomic_output(md_path, what="the Markdown report") as tmp:
        tmp.write_text(f"# {title}\n" + "\n".join(doc.md) + "\n", encoding="utf-8")
    with atomic_output(html_path, what="the HTML report") as tmp:
        tmp.write_text(head + "\n".join(doc.html) + "</body></html>\n", encoding="utf-8")
    return {"html": html_path, "markdown": md_path, "figures": doc.figures, "tables": tables,
            "notes": notes}
