"""Connectome features: functional and structural connectivity as vectors.

Small functions shared by the simulator's checks and the classical
connectome + linear model baseline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def fc_matrix(bold) -> np.ndarray:
    """Pearson correlation between ROI time series.

    Parameters
    ----------
    bold : array-like, shape (..., n_rois, n_timepoints)
        One scan or a stack of scans.

    Returns
    -------
    ndarray, shape (..., n_rois, n_rois), float64
        Correlations, with ones on the diagonal; a constant ROI correlates 0 with
        every other ROI.
    """
    x = np.asarray(bold, dtype=np.float64)
    if x.ndim < 2 or x.shape[-1] < 2:
        raise ValueError(f"expected ROIs x time (time >= 2), received shape {x.shape}")
    x = x - x.mean(axis=-1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=-1, keepdims=True))
    x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    r = np.clip(x @ np.swapaxes(x, -1, -2), -1.0, 1.0)
    diagonal = np.arange(r.shape[-1])
    r[..., diagonal, diagonal] = 1.0
    return r


def upper_triangle(matrix, k=1) -> np.ndarray:
    """Entries above the ``k``-th diagonal, row by row.

    Parameters
    ----------
    matrix : array-like, shape (..., n, n)
    k : int
        1 leaves out the diagonal, 0 keeps it.

    Returns
    -------
    ndarray, shape (..., n_entries)
    """
    matrix = np.asarray(matrix)
    if matrix.ndim < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise ValueError(f"expected square matrices (..., n, n), received shape {matrix.shape}")
    rows, cols = np.triu_indices(matrix.shape[-1], k=k)
    return matrix[..., rows, cols]


def fisher_z(r, eps=1e-7) -> np.ndarray:
    """Fisher transform ``arctanh(r)``, with ``r`` clipped to ``±(1 - eps)``."""
    r = np.asarray(r, dtype=np.float64)
    return np.arctanh(np.clip(r, -1.0 + eps, 1.0 - eps))


def log_sc(sc, base=None) -> np.ndarray:
    """Log-scaled structural connectivity: ``log(1 + sc)``.

    Parameters
    ----------
    sc : array-like
        Non-negative weights (e.g. streamline counts).
    base : float, optional
        Logarithm base (e.g. 10); natural log when None.
    """
    sc = np.asarray(sc, dtype=np.float64)
    if (sc < 0).any():
        raise ValueError("expected non-negative SC weights, received negative entries")
    out = np.log1p(sc)
    return out / np.log(base) if base is not None else out


def fc_features(bold) -> np.ndarray:
    """Fisher-z FC upper triangles of a stack of scans, shape (n_scans, n_edges)."""
    return fisher_z(upper_triangle(fc_matrix(bold)))


def sc_features(sc) -> np.ndarray:
    """``log(1 + SC)`` upper triangles of a stack of matrices, shape (n, n_edges)."""
    return upper_triangle(log_sc(sc))


def connectome_features(cohort, kind="fc", scans=None):
    """Feature matrix and matching table rows from a cohort store.

    Parameters
    ----------
    cohort : Cohort
        An opened store (:func:`bsym.data.open_cohort`).
    kind : {"fc", "sc"}
        ``"fc"``: Fisher-z FC upper triangle, one row per scan; ``"sc"``: log(1 + SC)
        upper triangle, one row per subject (its first scan's table row).
    scans : sequence of str, optional
        Restrict to these scans (and, for ``"sc"``, their subjects).

    Returns
    -------
    X : ndarray, shape (n_rows, n_rois * (n_rois - 1) / 2)
    rows : DataFrame
        The subjects-table rows, in the order of ``X``.
    """
    table = cohort.subjects
    if scans is not None:
        table = table[table["scan"].isin(list(scans))]
    if kind == "fc":
        x = np.stack([fc_features(np.asarray(cohort.bold(s))) for s in table["scan"]])
    elif kind == "sc":
        table = table.drop_duplicates("subject")
        x = np.stack([sc_features(np.asarray(cohort.sc(s))) for s in table["subject"]])
    else:
        raise ValueError(f"kind must be 'fc' or 'sc', received {kind!r}")
    return x, pd.DataFrame(table).reset_index(drop=True)
