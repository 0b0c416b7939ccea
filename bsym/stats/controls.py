"""Scores read beside their controls: the verdict table and permutation p-values.

The long result table keeps control rows beside the real ones (column ``control``):
``random_init`` (the same architecture untrained, through the same path),
``shuffled_labels`` (the probe refitted on labels permuted within each training fold;
``replicate`` numbers the permutations), ``position_only`` and ``permuted_networks``
(network identification). Rows of earlier pretraining checkpoints carry
``checkpoint = "step<N>"``; real scores are ``control == "none"`` and
``checkpoint == "final"``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bsym.evaluate.results import with_key_defaults
from bsym.stats.errors import StatsError
from bsym.stats.resampled import clip_interval

#: Orientation of the metrics a verdict may use.
_LOWER_IS_BETTER = {"mse", "mae", "rmse", "loss"}


def fill_key_defaults(table: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``control``, ``checkpoint``, ``replicate`` and ``view`` filled where older
    tables lack them (:data:`~bsym.evaluate.results.KEY_DEFAULTS`)."""
    table = with_key_defaults(table.copy())
    if "view" not in table.columns:
        table["view"] = "default"
    return table


def real_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows that are real scores of finished (or untrained) models."""
    table = fill_key_defaults(table)
    keep = (table["control"].astype(str) == "none") & (table["checkpoint"].astype(str) == "final")
    return table[keep].reset_index(drop=True)


def permutation_pvalue(real: pd.DataFrame, null: pd.DataFrame, metric: str,
                       higher_is_better: bool | None = None):
    """Permutation p-value of a cross-validated score.

    Parameters
    ----------
    real : DataFrame
        The real rows (one per fold) of one model, view and task.
    null : DataFrame
        Its ``shuffled_labels`` rows (one per fold and ``replicate``).
    metric : str
    higher_is_better : bool, optional
        Default: from the metric's name (errors are lower-is-better).

    Returns
    -------
    p : float
        ``(1 + #{null >= observed}) / (1 + n_permutations)`` on the mean over folds
        (``<=`` for lower-is-better metrics).
    observed : float
        Mean over folds of the real rows.
    null_scores : ndarray
        Mean over folds of each permutation.
    """
    if higher_is_better is None:
        higher_is_better = metric not in _LOWER_IS_BETTER
    if metric not in real.columns or metric not in null.columns:
        raise StatsError(f"metric {metric!r} is not in the rows; they have "
                         f"{sorted(set(real.columns) & set(null.columns))}")
    observed = float(pd.to_numeric(real[metric], errors="coerce").mean())
    per = pd.to_numeric(null[metric], errors="coerce").groupby(null["replicate"]).mean()
    null_scores = per.dropna().to_numpy(dtype=float)
    if not len(null_scores) or not np.isfinite(observed):
        return float("nan"), observed, null_scores
    tied = np.isclose(null_scores, observed, rtol=1e-9, atol=1e-12)
    beats = tied | (null_scores > observed if higher_is_better else null_scores < observed)
    return float((1 + beats.sum()) / (1 + len(null_scores))), observed, null_scores


def _mean_sd(values) -> tuple[float, float, int]:
    values = pd.to_numeric(pd.Series(values), errors="coerce").dropna().to_numpy(dtype=float)
    if not len(values):
        return float("nan"), float("nan"), 0
    sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), sd, len(values)


def verdict_table(table: pd.DataFrame, metrics: dict, *, confidence: float = 0.95,
                  health: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per dataset x task x protocol x model (view): the primary metric with its CI and
    its controls.

    Parameters
    ----------
    table : DataFrame
        The long result table (benchmark protocols; network identification rows are
        left out).
    metrics : dict
        Task -> primary metric.
    confidence : float
        Of the t-interval of the mean over folds.
    health : DataFrame, optional
        The training-health table (``model``, ``view``, ``learned``, ``reason``); a model
        missing from it (a supervised baseline) has no health mark.

    Returns
    -------
    DataFrame
        Columns ``dataset``, ``task``, ``metric``, ``protocol``, ``model``, ``view``,
        ``mean``, ``sd``, ``ci_low``, ``ci_high``, ``n``, ``random_init``,
        ``random_init_sd``, ``shuffled``, ``shuffled_sd``, ``permutations``,
        ``perm_p``, ``learned``, ``health``.
    """
    table = fill_key_defaults(table)
    if "protocol" in table.columns:
        table = table[table["protocol"].astype(str) != "network_identification"]
    rows = []
    keys = ["dataset", "task", "protocol", "model", "view"]
    for (dataset, task, protocol, model, view), group in table.groupby(keys, sort=True):
        metric = metrics.get(str(task))
        if metric is None or metric not in group.columns:
            continue
        scores = _score_and_controls(group, metric, confidence)
        if scores is not None:
            rows.append({"dataset": dataset, "task": task, "metric": metric, "protocol": protocol,
                         "model": model, "view": view, **scores,
                         **_health_mark(health, model, view)})
    return pd.DataFrame(rows)


def _score_and_controls(group, metric, confidence) -> dict | None:
    """One model's real score with its t-interval, beside its random-initialisation and
    shuffled-label controls (None without a real score)."""
    from scipy import stats as sps

    control = group["control"].astype(str)
    final = group["checkpoint"].astype(str) == "final"
    real = group[(control == "none") & final]
    if real.empty:
        return None
    mean, sd, n = _mean_sd(real[metric])
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1) * sd / np.sqrt(n)) if n > 1 \
        else float("nan")
    init_mean, init_sd, _ = _mean_sd(group.loc[control == "random_init", metric])
    null = group[(control == "shuffled_labels") & final]
    p, _, null_scores = permutation_pvalue(real, null, metric) if len(null) else \
        (float("nan"), mean, np.array([]))
    ci_low, ci_high = clip_interval(metric, mean - half, mean + half)
    return {"mean": mean, "sd": sd, "ci_low": ci_low, "ci_high": ci_high, "n": n,
            "random_init": init_mean, "random_init_sd": init_sd,
            "shuffled": float(null_scores.mean()) if len(null_scores) else float("nan"),
            "shuffled_sd": float(null_scores.std(ddof=1)) if len(null_scores) > 1
            else float("nan"),
            "permutations": int(len(null_scores)), "perm_p": p}


def _health_mark(health, model, view) -> dict:
    if health is None or health.empty:
        return {"learned": None, "health": ""}
    rows = health[(health["model"].astype(str) == str(model))]
    if "view" in rows.columns and (rows["view"].astype(str) == str(view)).any():
        rows = rows[rows["view"].astype(str) == str(view)]
    if rows.empty:
        return {"learned": None, "health": ""}
    learned = bool(rows["learned"].astype(bool).all())
    reason = "; ".join(str(r) for r in rows.get("reason", pd.Series(dtype=str)) if str(r))
    return {"learned": learned, "health": "learned" if learned else f"did not learn: {reason}"}


def netid_summary(table: pd.DataFrame, metrics=("ari_kmeans", "nmi_kmeans", "ari_spectral",
                                                "knn_accuracy")) -> pd.DataFrame:
    """Network identification per dataset x model x view x control x checkpoint: mean and
    sd over clustering seeds (or over label permutations for ``permuted_networks``)."""
    table = fill_key_defaults(table)
    table = table[table["protocol"].astype(str) == "network_identification"]
    rows = []
    keys = ["dataset", "model", "view", "control", "checkpoint"]
    for key, group in table.groupby(keys, sort=True):
        row = dict(zip(keys, key))
        row["n"] = len(group)
        for metric in metrics:
            if metric in group.columns:
                row[f"{metric}_mean"], row[f"{metric}_sd"], _ = _mean_sd(group[metric])
        rows.append(row)
    return pd.DataFrame(rows)
