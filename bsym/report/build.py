"""The self-contained HTML report and its Markdown summary of a result table.

Every number comes from the long result table. A model with several views (e.g.
BrainSymphony's ``fmri``, ``sc`` and ``fusion`` embeddings) is shown as ``model:view``;
``view == "default"`` keeps the bare model name. Protocols are never mixed: each
leaderboard, test and figure is computed within one protocol. Leaderboards, tests and
ranks read the real scores (``control == "none"`` of finished models); the report opens
with the verdict, where each score stands beside its controls (random initialisation,
shuffled labels) and the training-health mark of its model, and a model that did not
learn is labelled so wherever it appears.

The page is assembled from the templates in ``templates/`` (:mod:`bsym.report.markup`),
one short function per section (:mod:`bsym.report.sections`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bsym.outputs import OutputFolder, layout
from bsym.report.board import report_metrics
from bsym.report.errors import ReportError
from bsym.stats.table import check_results, health_beside, load_health, load_table

__all__ = ["ReportError", "build_report", "report_folder"]


def report_folder(out) -> OutputFolder:
    """The ``bsym report --out`` folder (an older bsym's index-less one is recognised)."""
    return OutputFolder(out, "report", legacy=lambda entries: "report.html" in entries and
                        layout(r"report\.(html|md)", r"figures/[^/]+", r"tables/[^/]+")(entries))


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
    results, health = _results_and_health(results, source, health)
    if netid is not None and not isinstance(netid, pd.DataFrame):
        netid = load_table(netid, "the network-identification table",
                           "pass the --results table of `bsym netid` (or leave --netid out: "
                           "its rows are read from --results)")
    _check_figures(netid_figures, "--netid-figure", "bsym netid --figure")
    _check_figures(loss_figures, "--loss-figure", "bsym health --figure")
    contrasts = _attention_tables(attention)
    report_metrics(results, metrics, source)
    folder = report_folder(out).check()
    with folder:
        return _write_report(results, Path(out), title, metrics=metrics, netid=netid,
                             health=health, alpha=alpha, rope=rope, contrasts=contrasts,
                             netid_figures=netid_figures, loss_figures=loss_figures)


def _results_and_health(results, source, health):
    """The checked result table (read from ``source`` where it is a path) and the health
    table (by default the one beside ``source``)."""
    if health is None and source is not None:
        health = health_beside(source)
    if source is not None:
        results = load_table(source)
    check_results(results, source)
    return results, load_health(health)


def _check_figures(paths, option, made_by):
    for path in paths:
        if not Path(path).is_file():
            raise ReportError(f"{path}: no such figure ({option}). Fix: pass the figure "
                              f"`{made_by}` wrote, or leave {option} out")


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


def _write_report(results, out, title, **inputs) -> dict:
    from bsym.report.context import report_data
    from bsym.report.markup import Document
    from bsym.report.sections import SECTIONS

    doc = Document(out)
    doc.make_folders()
    data = report_data(results, **inputs)
    for section in SECTIONS:
        section.render(doc, data)
    html_path, md_path = doc.write(title)
    return {"html": html_path, "markdown": md_path, "figures": doc.figures,
            "tables": doc.tables, "notes": doc.notes}
