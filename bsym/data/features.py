"""Connectome features: functional and structural connectivity as vectors.

Functional connectivity (correlation, partial correlation, tangent space) is computed by
nilearn's :class:`~nilearn.connectome.ConnectivityMeasure`; :class:`ConnectomeFeatures`
is the scikit-learn transformer of the connectome baseline. Small functions shared by
the simulator's checks and the baseline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

KINDS = ("correlation", "partial correlation", "tangent")


def _correlations(tables) -> np.ndarray:
    """Pearson correlations (n, R, R) of time x ROI tables, by nilearn with the empirical
    covariance; a constant ROI correlates 0 with every other ROI."""
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import EmpiricalCovariance

    measure = ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance(),
                                  standardize=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.asarray(measure.fit_transform(list(tables)), dtype=np.float64)
    r = np.clip(np.where(np.isfinite(r), r, 0.0), -1.0, 1.0)
    diagonal = np.arange(r.shape[-1])
    r[:, diagonal, diagonal] = 1.0
    return r


def fc_matrix(bold) -> np.ndarray:
    """Pearson correlation between ROI time series (nilearn ``ConnectivityMeasure``).

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
    scans = x.reshape(-1, *x.shape[-2:])
    r = _correlations(np.swapaxes(scans, 1, 2))
    return r.reshape(*x.shape[:-1], x.shape[-2])


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


def sc_vectors(sc, log=False) -> np.ndarray:
    """SC upper triangles (n, n_edges) of a stack (or a sequence) of matrices; with
    ``log``, of ``log(1 + SC)`` (for raw streamline counts)."""
    sc = np.stack([np.asarray(m, dtype=np.float64) for m in sc])
    return upper_triangle(log_sc(sc) if log else sc)


def scan_tables(X):
    """``(tables, form)``: ``X`` as a list of (n_timepoints, n_rois) tables, and whether it
    was one ``"table"``, a ``"stack"`` (3-D array) or a ``"list"`` of scans.

    A sequence of 2-D arrays (or a pandas column of them) is a list of scans; any other
    array-like (nested lists included) is read as an array, 2-D for one scan.
    """
    if hasattr(X, "toarray"):
        check_array(X)  # a sparse matrix: scikit-learn's error naming it
    sequence = (isinstance(X, (list, tuple)) or type(X).__name__ == "Series"
                or (isinstance(X, np.ndarray) and X.dtype == object and X.ndim == 1))
    if sequence:
        items = list(X)
        if not items:
            raise ValueError("received no scans; expected at least one (n_timepoints, n_rois) "
                             "table")
        dims = [np.ndim(item) for item in items]
        if all(d == 2 for d in dims):
            return items, "list"
        if 2 in dims:
            bad = next(i for i, d in enumerate(dims) if d != 2)
            raise ValueError(f"expected every scan as a 2-D (n_timepoints, n_rois) table; scan "
                             f"{bad} has {dims[bad]} dimension(s)")
    array = np.asarray(X)
    if array.ndim == 3:
        return list(array), "stack"
    return [array], "table"                      # one scan (or invalid: validated later)


def _scan_tables(estimator, X, *, reset):
    """``X`` as a list of validated float64 (n_timepoints, n_rois) tables."""
    tables, _ = scan_tables(X)
    tables = [validate_data(estimator, t, reset=reset and i == 0, dtype=np.float64,
                            ensure_min_samples=2, ensure_min_features=2 if reset else 1)
              for i, t in enumerate(tables)]
    if tables[0].shape[1] < 2:                   # a stateless kind used before fit
        raise ValueError(f"expected scans of at least 2 ROIs; received 1 feature(s) "
                         f"(shape={tables[0].shape})")
    return tables


class ConnectomeFeatures(TransformerMixin, BaseEstimator):
    """Functional connectome of each scan as a feature vector (nilearn ``ConnectivityMeasure``).

    A scan is a table of time points (rows) by ROIs (columns), as in nilearn and
    scikit-learn; bsym's stores and batches hold ROIs x time, so transpose them
    (``bold.T``, ``np.swapaxes(batch, 1, 2)``).

    Parameters
    ----------
    kind : {"correlation", "partial correlation", "tangent"}
        ``"correlation"``: Fisher-z Pearson correlations (empirical covariance), the upper
        triangle row by row; ``"partial correlation"``: Fisher-z partial correlations
        (Ledoit-Wolf covariance), below the diagonal; ``"tangent"``: tangent-space
        embedding (Ledoit-Wolf) around the geometric mean covariance of the scans given to
        :meth:`fit`, diagonal included. Only ``"tangent"`` learns from :meth:`fit`; the
        others transform each scan on its own.

    Attributes
    ----------
    n_features_in_ : int
        Number of ROIs.
    measure_ : ConnectivityMeasure
        The fitted tangent-space measure (``measure_.mean_`` is the group reference);
        ``"tangent"`` only.

    Examples
    --------
    >>> scans = np.random.default_rng(0).normal(size=(6, 50, 4))  # scans x time x ROIs
    >>> ConnectomeFeatures().fit_transform(scans).shape
    (6, 6)
    """

    def __init__(self, kind="correlation"):
        self.kind = kind

    def _check_kind(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, received {self.kind!r}")

    def fit(self, X, y=None):
        """Learn the tangent-space reference (``kind="tangent"``); check the scans otherwise.

        Parameters
        ----------
        X : array-like (n_timepoints, n_rois), list of such arrays, or array of shape
            (n_scans, n_timepoints, n_rois)
            One scan, or several (their lengths may differ).
        y : None
            Ignored.

        Returns
        -------
        self
        """
        self._check_kind()
        tables = _scan_tables(self, X, reset=True)
        if self.kind == "tangent":
            from nilearn.connectome import ConnectivityMeasure

            self.measure_ = ConnectivityMeasure(kind="tangent", vectorize=True).fit(tables)
        return self

    def transform(self, X):
        """Connectivity vectors, one row per scan.

        Parameters
        ----------
        X : array-like (n_timepoints, n_rois), list of such arrays, or array of shape
            (n_scans, n_timepoints, n_rois)

        Returns
        -------
        ndarray of shape (n_scans, n_features), float64
            ``n_rois * (n_rois - 1) / 2`` features, ``n_rois * (n_rois + 1) / 2`` for the
            tangent space.
        """
        check_is_fitted(self)
        self._check_kind()
        tables = _scan_tables(self, X, reset=False)
        if self.kind == "correlation":
            return fisher_z(upper_triangle(_correlations(tables)))
        if self.kind == "partial correlation":
            from nilearn.connectome import ConnectivityMeasure

            measure = ConnectivityMeasure(kind="partial correlation", vectorize=True,
                                          discard_diagonal=True)
            return fisher_z(measure.fit_transform(tables))
        return np.asarray(self.measure_.transform(tables), dtype=np.float64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = self.kind == "tangent"
        return tags
