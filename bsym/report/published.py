"""The BrainSymphony paper's published HCP-Aging numbers, and ours in the same columns.

These are published results (arXiv 2506.18314, Fig. 2k-l), shown for comparison,
never expected values for this benchmark (different data, splits and code).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from bsym.report.board import mean_sd

PUBLISHED_LABEL = "published (paper, HCP-Aging)"
#: The paper's columns: (our task, our metric) per published column.
PUBLISHED_COLUMNS = {"age_mse": ("age", "mse"), "age_rho": ("age", "pearson_r"),
                     "sex_acc": ("sex", "accuracy"), "sex_f1": ("sex", "f1")}


def published_table() -> pd.DataFrame:
    """The paper's HCP-Aging numbers (arXiv 2506.18314, Fig. 2k-l), packaged with bsym.

    These are published results, shown for comparison, never expected values.
    """
    with resources.files("bsym.report").joinpath("published.csv").open() as handle:
        return pd.read_csv(handle, comment="#")


def beside_published(board: pd.DataFrame) -> pd.DataFrame:
    """Our leaderboard in the published table's columns (mean ± sd), one row per protocol,
    dataset and model."""
    rows = {}
    for column, (task, metric) in PUBLISHED_COLUMNS.items():
        hit = board[(board["task"].astype(str).str.lower() == task) & (board["metric"] == metric)]
        for r in hit.itertuples(index=False):
            key = (r.model, r.protocol, r.dataset)
            rows.setdefault(key, {})[column] = mean_sd(r.mean, r.sd, 3)
    return pd.DataFrame([{"model": k[0], "method": k[1], "dataset": k[2],
                          **{c: v.get(c, "-") for c in PUBLISHED_COLUMNS},
                          "source": "ours (this benchmark)"} for k, v in sorted(rows.items())])
