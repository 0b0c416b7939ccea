"""Value checks for region time series, connectivity matrices and tables.

Each check raises :class:`~bsym.data.errors.CohortError` naming the file, the
subject and the fix. They are used when a store is written, when it is read and
by ``bsym data validate``.
"""

from __future__ import annotations

import math

import numpy as np

from bsym.data.errors import CohortError

#: Relative tolerance for declared-symmetric matrices.
SYMMETRY_RTOL = 1e-5


def _roi_list(indices, names=None, limit=5) -> str:
    indices = list(indices)
    shown = [str(names[i]) if names is not None else str(i) for i in indices[:limit]]
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return ", ".join(shown) + more


def check_bold(bold, *, file, subject, n_rois=None, roi_names=None, min_timepoints=2):
    """Check one fMRI region time series, shaped (ROIs, time).

    Returns the array as float32.
    """
    bold = np.asarray(bold)
    if bold.ndim != 2:
        raise CohortError(
            f"expected a 2-D array (ROIs x time), received shape {bold.shape}",
            file=file, subject=subject,
            fix="store one ROIs x time matrix per scan",
        )
    if not np.issubdtype(bold.dtype, np.number) or np.iscomplexobj(bold):
        raise CohortError(
            f"expected real numbers, received dtype {bold.dtype}",
            file=file, subject=subject, fix="save the time series as floats",
        )
    if n_rois is not None and bold.shape[0] != n_rois:
        hint = ""
        if bold.shape[1] == n_rois:
            hint = " (the array looks transposed: time x ROIs)"
        raise CohortError(
            f"expected {n_rois} ROIs, received {bold.shape[0]} rows{hint}",
            file=file, subject=subject,
            fix="use the same atlas for every scan and store ROIs x time"
            + (", or transpose the array" if hint else ""),
        )
    if bold.shape[1] < min_timepoints:
        raise CohortError(
            f"expected at least {min_timepoints} time points, received {bold.shape[1]}",
            file=file, subject=subject,
            fix="drop this scan or use a shorter window",
        )
    bold = bold.astype(np.float32, copy=False)
    finite = np.isfinite(bold)
    if not finite.all():
        bad_rois = np.flatnonzero(~finite.all(axis=1))
        kind = "NaN" if np.isnan(bold).any() else "Inf"
        raise CohortError(
            f"{int((~finite).sum())} non-finite values ({kind}) in ROI(s) "
            f"{_roi_list(bad_rois, roi_names)}",
            file=file, subject=subject,
            fix="mask or interpolate the bad samples, or exclude the ROI/scan",
        )
    spread = bold.max(axis=1) - bold.min(axis=1)
    scale = max(float(np.abs(bold).max()), 1.0)
    flat = np.flatnonzero(spread <= 1e-7 * scale)
    if flat.size:
        zero = [i for i in flat if not bold[i].any()]
        what = "all-zero" if len(zero) == flat.size else "constant"
        raise CohortError(
            f"{flat.size} {what} ROI(s): {_roi_list(flat, roi_names)}",
            file=file, subject=subject,
            fix="these ROIs carry no signal (often outside the field of view); "
            "drop them from the atlas for every subject",
        )
    return bold


def check_matrix(matrix, *, kind, file, subject, n_rois=None, symmetric=True,
                 nonnegative=True):
    """Check one ROIs x ROIs matrix (structural connectivity, fibre lengths, ...).

    Returns the array as float32.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise CohortError(
            f"expected a square {kind} matrix, received shape {matrix.shape}",
            file=file, subject=subject, fix=f"store one ROIs x ROIs {kind} matrix per subject",
        )
    if not np.issubdtype(matrix.dtype, np.number) or np.iscomplexobj(matrix):
        raise CohortError(
            f"expected real numbers, received dtype {matrix.dtype}",
            file=file, subject=subject, fix=f"save the {kind} matrix as floats",
        )
    if n_rois is not None and matrix.shape[0] != n_rois:
        raise CohortError(
            f"{kind} has {matrix.shape[0]} ROIs but the fMRI time series have {n_rois}",
            file=file, subject=subject,
            fix="use the same atlas (and ROI order) for fMRI and the connectome",
        )
    matrix = matrix.astype(np.float32, copy=False)
    if not np.isfinite(matrix).all():
        raise CohortError(
            f"{int((~np.isfinite(matrix)).sum())} non-finite entries (NaN/Inf) in {kind}",
            file=file, subject=subject, fix="replace missing connections by 0",
        )
    if nonnegative and (matrix < 0).any():
        i, j = np.unravel_index(int(np.argmin(matrix)), matrix.shape)
        raise CohortError(
            f"{kind} has {int((matrix < 0).sum())} negative entries "
            f"(e.g. [{i}, {j}] = {matrix[i, j]:.4g}); streamline counts and lengths "
            "cannot be negative",
            file=file, subject=subject,
            fix="store raw (non-negative) counts; bsym applies log scaling itself",
        )
    if symmetric:
        scale = max(float(np.abs(matrix).max()), 1e-12)
        diff = np.abs(matrix - matrix.T)
        if float(diff.max()) > SYMMETRY_RTOL * scale:
            i, j = np.unravel_index(int(np.argmax(diff)), diff.shape)
            raise CohortError(
                f"{kind} is declared symmetric but [{i}, {j}] = {matrix[i, j]:.6g} and "
                f"[{j}, {i}] = {matrix[j, i]:.6g}",
                file=file, subject=subject,
                fix="symmetrise it ((A + A.T) / 2) or declare the connectome directed "
                "(sc_symmetric: false)",
            )
    return matrix


def check_tr(tr, *, file, subject):
    """Check a repetition time in seconds; returns it as float."""
    try:
        value = float(tr)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0 or value > 30:
        raise CohortError(
            f"expected a repetition time in seconds (0 < TR <= 30), received {tr!r}",
            file=file, subject=subject,
            fix="give the TR in seconds (e.g. 0.72 for HCP, 2.0 for most older scanners)",
        )
    return value


def check_unique(values, *, what, file):
    """Raise if ``values`` holds duplicates."""
    seen, dup = set(), []
    for v in values:
        if v in seen:
            dup.append(v)
        seen.add(v)
    if dup:
        raise CohortError(
            f"duplicate {what}: {', '.join(map(str, sorted(set(map(str, dup)))[:5]))}",
            file=file, subject=dup[0],
            fix=f"give every row a unique {what} (add a session column for repeated scans)",
        )
