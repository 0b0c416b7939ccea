"""Signal preprocessing applied when windows are read: cleaning, resampling, scaling.

All three act on one scan at a time (ROIs x time) and are fitted, where they
need fitting, on training subjects only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly


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


class RobustScaler:
    """Per-ROI robust scaling, ``(x - median) / IQR``, fitted on training scans.

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
    """

    def __init__(self, quantile_range=(25.0, 75.0)):
        self.quantile_range = quantile_range

    def fit(self, series):
        """Fit on an iterable of ROIs x time arrays (the training scans only)."""
        lo, hi = self.quantile_range
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"quantile_range must satisfy 0 <= lo < hi <= 100, got {self.quantile_range}")
        series = list(series)
        if not series:
            raise ValueError("RobustScaler.fit needs at least one training scan, received none")
        n_rois = {s.shape[0] for s in series}
        if len(n_rois) != 1:
            raise ValueError(f"training scans have different ROI counts: {sorted(n_rois)}")
        stacked = np.concatenate([np.asarray(s, dtype=np.float32) for s in series], axis=1)
        q = np.percentile(stacked, [lo, 50.0, hi], axis=1)
        scale = q[2] - q[0]
        tiny = scale <= np.finfo(np.float32).eps * np.maximum(np.abs(q[1]), 1.0)
        if tiny.any():
            raise ValueError(
                f"ROI(s) {np.flatnonzero(tiny)[:5].tolist()} have zero inter-quantile range in "
                "the training scans; expected varying signals (validate the cohort)"
            )
        self.center_ = q[1].astype(np.float32)
        self.scale_ = scale.astype(np.float32)
        self.n_scans_ = len(series)
        return self

    def transform(self, bold):
        """Scale ROIs x time (or batch x ROIs x time)."""
        if not hasattr(self, "center_"):
            raise RuntimeError("RobustScaler is not fitted; call fit() on the training scans first")
        bold = np.asarray(bold, dtype=np.float32)
        if bold.shape[-2] != self.center_.shape[0]:
            raise ValueError(f"expected {self.center_.shape[0]} ROIs, received {bold.shape[-2]}")
        return (bold - self.center_[:, None]) / self.scale_[:, None]

    def state_dict(self):
        return {"quantile_range": list(self.quantile_range), "center": self.center_.tolist(),
                "scale": self.scale_.tolist(), "n_scans": self.n_scans_}

    @classmethod
    def from_state_dict(cls, state):
        scaler = cls(tuple(state["quantile_range"]))
        scaler.center_ = np.asarray(state["center"], dtype=np.float32)
        scaler.scale_ = np.asarray(state["scale"], dtype=np.float32)
        scaler.n_scans_ = int(state["n_scans"])
        return scaler
