"""Pretext predictions of self-supervised models, beside trivial baselines.

Every self-supervised model has ``pretext_predictions(batch, *, generator=None,
stage=None)``: it draws its own pretraining masks from ``generator`` and returns, for
each embedding view, a tuple of :class:`PretextPrediction` (one per pretraining
objective of that view). Each holds the hidden quantities, the model's predictions of
them and the predictions of trivial baselines computed from exactly the entries the
model sees. The helpers below are those baselines: they read the visible entries only.
Scores (:func:`regression_scores`) are pooled over windows by
:mod:`bsym.evaluate.health`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class PretextPrediction(NamedTuple):
    """One pretext objective on one batch.

    task : str
        What is predicted (e.g. ``fmri_masked_cells``).
    target : Tensor (n,)
        The true hidden values.
    prediction : Tensor (n,)
        The model's predictions of them.
    baselines : dict
        Baseline name -> Tensor (n,), computed from the visible entries only.
    """

    task: str
    target: torch.Tensor
    prediction: torch.Tensor
    baselines: dict


def _masked_sum(x, visible, dims):
    weights = visible.to(x.dtype)
    return (x * weights).sum(dim=dims), weights.sum(dim=dims)


def sample_mean(x, visible):
    """Mean of each sample's visible entries (B, 1, ..., 1); 0 where none is visible.

    ``x`` and ``visible`` (bool) share their shape (B, ...).
    """
    dims = tuple(range(1, x.dim()))
    total, count = _masked_sum(x, visible, dims)
    mean = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
    return mean.reshape(-1, *([1] * (x.dim() - 1)))


def row_mean(x, visible):
    """Each row's mean over its visible entries (last axis), broadcast to ``x``'s shape.

    A row without visible entries takes the sample's visible mean (:func:`sample_mean`).
    """
    total, count = _masked_sum(x, visible, -1)
    fallback = sample_mean(x, visible).squeeze(-1).expand_as(total)
    mean = torch.where(count > 0, total / count.clamp_min(1), fallback)
    return mean[..., None].expand_as(x)


def interpolate_time(x, visible):
    """Linear interpolation of each row over the last axis from its visible entries.

    Before the first and after the last visible entry the nearest visible value is
    kept; a row without visible entries takes :func:`row_mean`. Visible entries are
    returned unchanged.
    """
    n = x.shape[-1]
    steps = torch.arange(n, device=x.device).expand_as(x)
    before = torch.where(visible, steps, torch.full_like(steps, -1)).cummax(dim=-1).values
    flipped = torch.where(visible, steps, torch.full_like(steps, n)).flip(-1)
    after = flipped.cummin(dim=-1).values.flip(-1)
    left = x.gather(-1, before.clamp(0, n - 1))
    right = x.gather(-1, after.clamp(0, n - 1))
    span = (after - before).clamp_min(1).to(x.dtype)
    weight = ((steps - before).to(x.dtype) / span).clamp(0, 1)
    inside = left + weight * (right - left)
    out = torch.where(before < 0, right, torch.where(after >= n, left, inside))
    return torch.where((before < 0) & (after >= n), row_mean(x, visible), out)


def grouped_mean(values, groups, n_groups, query, fallback):
    """Mean of the ``values`` of each query's group, or ``fallback`` where a group is empty.

    Parameters
    ----------
    values : Tensor (B, n, d)
    groups : LongTensor (B, n)
        Group of each value (0 .. n_groups - 1).
    n_groups : int
    query : LongTensor (B, m)
        Groups asked for.
    fallback : Tensor (B, m, d)

    Returns
    -------
    Tensor (B, m, d)
    """
    b, _, d = values.shape
    sums = values.new_zeros(b, n_groups, d).scatter_add_(
        1, groups[..., None].expand(-1, -1, d), values)
    counts = values.new_zeros(b, n_groups).scatter_add_(1, groups, values.new_ones(groups.shape))
    means = sums / counts.clamp_min(1)[..., None]
    picked = means.gather(1, query[..., None].expand(-1, -1, d))
    found = counts.gather(1, query) > 0
    return torch.where(found[..., None], picked, fallback)


def masked_series_prediction(task, x, hidden, reconstruction):
    """Hidden cells of series (B, R, T): the reconstruction beside three baselines.

    The baselines read the visible cells (``~hidden``) of each window: ``window_mean``
    (:func:`sample_mean`), ``roi_mean`` (:func:`row_mean`) and ``interpolation``
    (:func:`interpolate_time`).
    """
    visible = ~hidden
    baselines = {"window_mean": sample_mean(x, visible).expand_as(x),
                 "roi_mean": row_mean(x, visible), "interpolation": interpolate_time(x, visible)}
    return PretextPrediction(task, x[hidden], reconstruction[hidden],
                             {name: value[hidden] for name, value in baselines.items()})


def edge_baselines(adjacency, hidden):
    """Baselines of hidden edges from the visible ones (off-diagonal, not hidden).

    Returns
    -------
    dict
        ``mean_edge``: the sample's mean visible edge; ``node_mean``: for (i, j) the
        mean of node i's and node j's mean visible edges. Both (B, R, R).
    """
    eye = torch.eye(adjacency.shape[-1], dtype=torch.bool, device=adjacency.device)
    visible = ~hidden & ~eye
    node = row_mean(adjacency, visible)[..., 0]
    return {"mean_edge": sample_mean(adjacency, visible).expand_as(adjacency),
            "node_mean": 0.5 * (node[:, :, None] + node[:, None, :])}


def regression_scores(target, prediction):
    """R^2, Pearson r and MSE of predictions of hidden values (pooled, flat arrays).

    R^2 is ``1 - SSE / SST`` with SST the sum of squares around the mean of ``target``;
    NaN when the targets are constant. Pearson r is 0 when either side is constant.

    Returns
    -------
    dict
        ``r2``, ``pearson_r``, ``mse``, ``n``.
    """
    target = np.asarray(target, dtype=np.float64).ravel()
    prediction = np.asarray(prediction, dtype=np.float64).ravel()
    if target.shape != prediction.shape or target.size == 0:
        raise ValueError(f"expected two non-empty arrays of one length, received "
                         f"{target.size} targets and {prediction.size} predictions")
    sse = float(((target - prediction) ** 2).sum())
    sst = float(((target - target.mean()) ** 2).sum())
    constant = target.std() == 0 or prediction.std() == 0
    r = 0.0 if constant else float(np.corrcoef(target, prediction)[0, 1])
    return {"r2": 1.0 - sse / sst if sst > 0 else float("nan"), "pearson_r": r,
            "mse": sse / target.size, "n": int(target.size)}


__all__ = ["PretextPrediction", "edge_baselines", "grouped_mean", "interpolate_time",
           "masked_series_prediction", "regression_scores", "row_mean", "sample_mean"]
