"""Signal preprocessing applied when windows are read: cleaning, resampling, scaling.

Cleaning and resampling act on one scan at a time (ROIs x time); the robust scaler
is a scikit-learn transformer of (time x ROIs) tables fitted on training scans only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from bsym.data.quantiles import column_percentiles


@dataclass(frozen=True)
class SignalCleaning:
    """Options for :func:`nilearn.signal.clean`, applied per scan before windowing.

    Parameters
    ----------
    detrend : bool
        Remove a linear trend per ROI.
    high_pass, low_pass : float or None
        Butterworth band-pass cut-offs in Hz (e.g. 0.01 and 0.1).
    confounds : bool
        Regress out the scan's confounds stored in the cohort (if it has them).
    standardize : bool
        z-score each ROI over time (off by default: robust scaling is done separately).
    """

    detrend: bool = False
    high_pass: float | None = None
    low_pass: float | None = None
    confounds: bool = False
    standardize: bool = False

    @property
    def active(self) -> bool:
        return bool(self.detrend or self.high_pass or self.low_pass or self.confounds
                    or self.standardize)

    def apply(self, bold, tr, confounds=None):
        """Clean one scan (ROIs x time); returns a new float32 array."""
        if not self.active:
            return np.asarray(bold, dtype=np.float32)
        from nilearn.signal import clean

        if self.low_pass is not None and self.low_pass >= 0.5 / tr:
            raise ValueError(
                f"low_pass={self.low_pass} Hz is at or above the Nyquist frequency "
                f"{0.5 / tr:.3g} Hz of TR {tr} s; expected a lower cut-off or None"
            )
        cleaned = clean(
            np.asarray(bold, dtype=np.float64).T,
            detrend=self.detrend,
            standardize="zscore_sample" if self.standardize else None,
            confounds=np.asarray(confounds) if (self.confounds and confounds is not None) else None,
            low_pass=self.low_pass,
            high_pass=self.high_pass,
            t_r=tr,
        )
        return np.ascontiguousarray(cleaned.T, dtype=np.float32)

    def to_dict(self):
        return asdict(self)


def resample_ratio(tr, target_tr, max_denominator=100):
    """Up/down factors taking a series at ``tr`` to ``target_tr``."""
    ratio = Fraction(float(tr) / float(target_tr)).limit_denominator(max_denominator)
    return ratio.numerator, ratio.denominator


def resampled_length(n_timepoints, tr, target_tr):
    up, down = resample_ratio(tr, target_tr)
    return math.ceil(n_timepoints * up / down)


def resample_tr(bold, tr, target_tr):
    """Resample ROIs x time from ``tr`` to ``target_tr`` seconds.

    Uses polyphase filtering (:func:`scipy.signal.resample_poly`), whose FIR
    low-pass removes content above the new Nyquist frequency before decimation.
    """
    if math.isclose(tr, target_tr, rel_tol=1e-6):
        return np.asarray(bold, dtype=np.float32)
    up, down = resample_ratio(tr, target_tr)
    out = resample_poly(np.asarray(bold, dtype=np.float64), up, down, axis=1, padtype="line")
    return np.ascontiguousarray(out, dtype=np.float32)


class LazyScans(Sequence):
    """Scans made one at a time when read: the input of :meth:`RobustScaler.fit` for more
    scans than fit in memory together.

    Parameters
    ----------
    n_scans : int
    read : callable
        ``read(i)`` returns scan ``i`` as a (n_timepoints, n_rois) table.
    """

    def __init__(self, n_scans, read):
        self.n_scans, self.read = int(n_scans), read

    def __len__(self):
        return self.n_scans

    def __getitem__(self, i):
        if not -self.n_scans <= i < self.n_scans:
            raise IndexError(f"scan {i} of {self.n_scans}")
        return self.read(i % self.n_scans)


class RobustScaler(TransformerMixin, BaseEstimator):
    """Per-ROI robust scaling, ``(x - median) / IQR``, fitted on training scans.

    A scan is a table of time points (rows) by ROIs (columns), as in scikit-learn and
    nilearn, so on a plain 2-D array this is a per-column robust scaler; bsym's scans
    (ROIs x time) are passed transposed. The statistics pool every time point of every
    scan given to :meth:`fit`. Computed and returned in float32 (the dtype of bsym's
    windows). A ROI with no spread in the training scans is an error, not a division by
    zero.

    Parameters
    ----------
    quantile_range : tuple of float
        Percentiles defining the spread (default the inter-quartile range).

    Attributes
    ----------
    center_ : ndarray of shape (n_rois,)
    scale_ : ndarray of shape (n_rois,)
    n_scans_ : int
        Number of scans the statistics were computed from.
    n_features_in_ : int
        Number of ROIs.

    Examples
    --------
    >>> scans = [np.random.default_rng(s).normal(size=(100, 3)) for s in range(4)]
    >>> scaler = RobustScaler().fit(scans)            # four scans of 100 time points
    >>> scaler.transform(scans[0]).shape              # one scan
    (100, 3)
    """

    def __init__(self, quantile_range=(25.0, 75.0)):
        self.quantile_range = quantile_range

    def _tables(self, X, *, reset):
        """``(tables, form)``: validated float32 (time, ROIs) tables and the input's form
        (``"table"``, ``"stack"`` or ``"list"``)."""
        from bsym.data.features import scan_tables

        if not hasattr(X, "__len__") and not hasattr(X, "__array__"):
            X = list(X)                                  # e.g. a generator of scans
        tables, form = scan_tables(X)
        tables = [validate_data(self, t, reset=reset and i == 0, dtype=np.float32)
                  for i, t in enumerate(tables)]
        return tables, form

    def fit(self, X, y=None):
        """Compute the per-ROI median and spread of the training scans.

        The percentiles are exact (those of every time point pooled). Scans holding at
        most :data:`bsym.data.quantiles.POOL_LIMIT` values in all are pooled once; more
        are never pooled, so memory stops growing with their number: a
        :class:`LazyScans` is then read one scan at a time, in four passes (the first
        stops at the limit).

        Parameters
        ----------
        X : array-like (n_timepoints, n_rois), list of such arrays, array of shape
            (n_scans, n_timepoints, n_rois), or LazyScans
            The training scans only (their lengths may differ).
        y : None
            Ignored.

        Returns
        -------
        self
        """
        lo, hi = self.quantile_range
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"quantile_range must satisfy 0 <= lo < hi <= 100, got {self.quantile_range}")
        tables, n_scans = self._fit_tables(X)
        n_timepoints, q = column_percentiles(tables, [lo, 50.0, hi], self.n_features_in_)
        if n_timepoints < 2:
            raise ValueError("RobustScaler needs at least 2 time points to measure a spread; "
                             "received 1 sample")
        scale = q[2] - q[0]
        tiny = scale <= np.finfo(np.float32).eps * np.maximum(np.abs(q[1]), 1.0)
        if tiny.any():
            raise ValueError(
                f"ROI(s) {np.flatnonzero(tiny)[:5].tolist()} have zero inter-quantile range in "
                "the training scans; expected varying signals (validate the cohort)"
            )
        self.center_ = q[1].astype(np.float32)
        self.scale_ = scale.astype(np.float32)
        self.n_scans_ = n_scans
        return self

    def _fit_tables(self, X):
        """``(tables, n_scans)``: a callable giving the validated tables anew on each call
        (the percentiles read them three times), and how many there are."""
        if not isinstance(X, LazyScans):
            tables, _ = self._tables(X, reset=True)
            return (lambda: iter(tables)), len(tables)
        if not len(X):
            raise ValueError("received no scans; expected at least one (n_timepoints, n_rois) "
                             "table")
        validate_data(self, X[0], reset=True, dtype=np.float32)
        return (lambda: (validate_data(self, scan, reset=False, dtype=np.float32)
                         for scan in X)), len(X)

    def transform(self, X):
        """Scale scans; returns the input's form (a table, a stack or a list), float32.

        Parameters
        ----------
        X : array-like (n_timepoints, n_rois), list of such arrays, or array of shape
            (n_scans, n_timepoints, n_rois)
        """
        check_is_fitted(self)
        tables, form = self._tables(X, reset=False)
        scaled = [(t - self.center_) / self.scale_ for t in tables]
        if form == "list":
            return scaled
        return np.stack(scaled) if form == "stack" else scaled[0]

    def scale_windows(self, bold):
        """Scale arrays in bsym's layout, (..., n_rois, n_timepoints), to float32.

        The window reader's path: the same numbers as :meth:`transform` of the transposed
        scans, without scikit-learn's per-call input validation (about 0.1 ms a window).
        """
        check_is_fitted(self)
        bold = np.asarray(bold, dtype=np.float32)
        if bold.ndim < 2 or bold.shape[-2] != self.center_.shape[0]:
            raise ValueError(f"expected (..., {self.center_.shape[0]} ROIs, time points), "
                             f"received shape {bold.shape}")
        return (bold - self.center_[:, None]) / self.scale_[:, None]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def state_dict(self):
        return {"quantile_range": list(self.quantile_range), "center": self.center_.tolist(),
                "scale": self.scale_.tolist(), "n_scans": self.n_scans_}

    @classmethod
    def from_state_dict(cls, state):
        scaler = cls(tuple(state["quantile_range"]))
        scaler.center_ = np.asarray(state["center"], dtype=np.float32)
        scaler.scale_ = np.asarray(state["scale"], dtype=np.float32)
        scaler.n_scans_ = int(state["n_scans"])
        scaler.n_features_in_ = len(scaler.center_)
        return scaler
