"""The cells of the at-a-glance matrix, the report's first screen: per dataset x task,
each model's primary score, marked best or tied with the best by the pairwise tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bsym.stats.table import mark_unlearned

#: Display order of the protocols in the at-a-glance matrix (others follow, sorted).
GLANCE_PROTOCOLS = ("linear_probe", "finetune", "supervised")


def glance_cells(verdict, pairwise, health, *, alpha: float = 0.05):
    """The cells of the at-a-glance matrix: the verdict with its display ``row`` and the
    ``mark`` of each cell (``"best"``, ``"tied"`` or ``""``).

    Per dataset x task the model with the best mean is ``best``; a model whose Holm-adjusted
    corrected resampled t-test against it (``pairwise``, from
    :func:`bsym.report.context.pairwise_all`) has p >= ``alpha`` is ``tied``. With several
    protocols they are compared together (the ``model [protocol]`` tests) where those tests
    exist, else within each protocol. A group of one model gets no mark.

    Returns
    -------
    cells : DataFrame
    how : dict
        ``(dataset, task) -> "protocols compared together" | "within each protocol" | why
        untested``.
    """
    cells = _cell_frame(verdict)
    entities = _Entities(cells, health)
    tables = {(m, mixed): t for m, mixed, t, _ in pairwise if t is not None}
    errors = {(m, mixed): e for m, mixed, _, e in pairwise if e is not None}
    several = cells["protocol"].astype(str).nunique() > 1
    how = {}
    for (dataset, task), column in cells.groupby(["dataset", "task"], sort=True):
        metric = str(column["metric"].iloc[0])
        mixed = several and (metric, True) in tables
        table = tables.get((metric, mixed))
        how[(dataset, task)] = ("protocols compared together" if mixed else
                                "within each protocol") \
            if table is not None else f"not tested ({errors.get((metric, mixed), 'no pairs')})"
        if table is not None:
            table = table[(table["dataset"].astype(str) == str(dataset))
                          & (table["task"].astype(str) == str(task))]
        groups = [column] if mixed else [g for _, g in column.groupby("protocol", sort=True)]
        for group in groups:
            _mark_group(cells, group, table, entities, mixed=mixed, alpha=alpha)
    return cells, how


def _cell_frame(verdict) -> pd.DataFrame:
    """The verdict with the metric's orientation, the display ``row`` and an empty ``mark``."""
    from bsym.stats import HIGHER_IS_BETTER

    cells = verdict.copy()
    cells["higher"] = [HIGHER_IS_BETTER.get(str(m).lower(), True) for m in cells["metric"]]
    cells["row"] = [f"{label} [{protocol}]" for label, protocol in
                    zip(cells["label"], cells["protocol"].astype(str))]
    cells["mark"] = ""
    return cells


class _Entities:
    """The name a cell's model has in the pairwise tests: its label, marked where it did
    not learn, and ``[protocol]`` after it when protocols are compared together."""

    def __init__(self, cells, health):
        self.cells = cells
        self.marked = mark_unlearned(pd.DataFrame({"base_model": cells["model"].astype(str),
                                                   "view": cells["view"].astype(str),
                                                   "model": cells["label"].astype(str)}),
                                     health)["model"]

    def __call__(self, index, mixed) -> str:
        if mixed:
            return f"{self.marked[index]} [{self.cells.loc[index, 'protocol']}]"
        return self.marked[index]


def _mark_group(cells, group, table, entities, *, mixed, alpha):
    """Mark the best cell of ``group``, and those its pairwise tests (``table``) find tied
    with it; a group of one model gets no mark."""
    scores = pd.to_numeric(group["mean"], errors="coerce").dropna()
    if len(scores) < 2:
        return
    higher = bool(group["higher"].iloc[0])
    best = scores.idxmax() if higher else scores.idxmin()
    cells.loc[best, "mark"] = "best"
    if table is None:
        return
    for index in scores.index.drop(best):
        pair = {entities(best, mixed), entities(index, mixed)}
        hit = table[[{a, b} == pair for a, b in zip(table["model_a"], table["model_b"])]]
        if not mixed:
            hit = hit[hit["protocol"].astype(str) == str(cells.loc[index, "protocol"])]
        if len(hit) and float(hit["p_holm"].iloc[0]) >= alpha:
            cells.loc[index, "mark"] = "tied"


def glance_order(cells) -> list:
    """Display rows: by protocol (:data:`GLANCE_PROTOCOLS` first), then best mean rank over
    the tasks first."""
    rank = cells.assign(score=np.where(cells["higher"], cells["mean"], -cells["mean"]))
    rank["r"] = rank.groupby(["dataset", "task"])["score"].rank(ascending=False)
    order = rank.groupby(["row", "protocol"], sort=False)["r"].mean().reset_index()
    known = {p: i for i, p in enumerate(GLANCE_PROTOCOLS)}
    order["p"] = [known.get(str(p), len(known)) for p in order["protocol"]]
    return list(order.sort_values(["p", "protocol", "r", "row"], kind="stable")["row"])
