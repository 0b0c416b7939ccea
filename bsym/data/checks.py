"""Value checks for region time series, connectivity matrices and tables.

Each check raises :class:`~bsym.data.errors.CohortError` naming the file, the
subject and the fix. They are used when a store is written, when it is read and
by ``bsym data validate``.
"""

from __future__ import annotations

import math
import re

import numpy as np

from bsym.data.errors import CohortError

#: Relative tolerance for declared-symmetric matrices.
SYMMETRY_RTOL = 1e-5


def _roi_list(indices, names=None, limit=5) -> str:
    indices = list(indices)
    shown = [str(names[i]) if names is not None else str(i) for i in indices[:limit]]
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return ", ".join(shown) + more


def _as_float32(array, *, file, subject, what):
    """``array`` as float32; finite values beyond float32's range are an error, not Inf."""
    limit = float(np.finfo(np.float32).max)
    if array.dtype.itemsize > 4 or not np.issubdtype(array.dtype, np.floating):
        values = np.asarray(array, dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size and float(np.abs(finite).max()) > limit:
            raise CohortError(
                f"values up to {float(np.abs(finite).max()):.3g} in absolute value do not fit "
                f"float32 (largest {limit:.3g})", file=file, subject=subject,
                fix=f"rescale the {what} (e.g. z-score it) or check how it was exported",
            )
    return array.astype(np.float32, copy=False)


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
        if bold.shape[1] == n_rois:
            raise CohortError(
                f"expected {n_rois} ROIs x time, received {bold.shape[0]} x {bold.shape[1]}: "
                f"the array looks stored time x ROIs ({bold.shape[0]} x {bold.shape[1]})",
                file=file, subject=subject,
                fix="save it as ROIs x time: np.save(path, x.T)",
            )
        raise CohortError(
            f"expected {n_rois} ROIs, received {bold.shape[0]} rows",
            file=file, subject=subject,
            fix="use the same atlas for every scan and store ROIs x time",
        )
    if bold.shape[0] == 0:
        raise CohortError(
            f"expected at least one ROI, received shape {bold.shape}",
            file=file, subject=subject, fix="store one ROIs x time matrix per scan",
        )
    if bold.shape[1] < min_timepoints:
        raise CohortError(
            f"expected at least {min_timepoints} time points, received {bold.shape[1]}",
            file=file, subject=subject,
            fix="drop this scan or use a shorter window",
        )
    bold = _as_float32(bold, file=file, subject=subject, what="time series")
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
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
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
    matrix = _as_float32(matrix, file=file, subject=subject, what=f"{kind} matrix")
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
                fix="symmetrise it ((A + A.T) / 2)" + (
                    "; if the connectome is directed, import it with `bsym data import "
                    "folder --directed-sc` (sc_symmetric=False in Python)" if kind == "sc"
                    else ""),
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


#: Cells read as a missing value in tables (compared lower-case, without spaces).
MISSING_VALUES = ("", "n/a", "na", "nan")


def _as_number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _seen(values, limit=8) -> str:
    """``'M' (line 3), 'F' (lines 2, 4)`` for ``[(line, value), ...]``."""
    lines = {}
    for line, value in values:
        lines.setdefault(value, []).append(str(line))
    shown = [f"{value!r} (line{'s' if len(at) > 1 else ''} {', '.join(at[:3])}"
             f"{', ...' if len(at) > 3 else ''})" for value, at in list(lines.items())[:limit]]
    return ", ".join(shown) + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


def check_label_coding(column, cells, *, file):
    """Refuse a table column whose values could be read more than one way.

    Parameters
    ----------
    column : str
        The column name, for the message.
    cells : sequence of (int, str)
        ``(line number, cell text as written)`` for every line of the table.
    file : str or Path
        The table, for the message.

    Raises a :class:`CohortError` for: spaces around a word (``' M'``); numbers mixed
    with words (sex coded ``1``, ``M``, ``F``; an age column holding ``unknown``); a
    cell without letters or digits (``-``, ``?``: a missing-value marker?); a number
    that is not finite; one category spelled several ways (``F``, ``f``, ``female``;
    ``healthy control``, ``Healthy_Control``).
    """
    present = [(line, text) for line, text in cells
               if text.strip().lower() not in MISSING_VALUES]
    recode = (f"recode column {column!r} to one coding: all numbers or all words (one "
              "spelling per category), with missing values as n/a or an empty cell")
    words, numbers = [], []
    for line, text in present:
        value = text.strip()
        number = _as_number(value)
        if number is not None:
            if not math.isfinite(number):
                raise CohortError(f"column {column!r}, line {line}: {text!r} is not a finite "
                                  "number", file=file, fix=recode)
            numbers.append((line, value))
            continue
        if value != text:
            raise CohortError(
                f"column {column!r}, line {line}: {text!r} has stray spaces around it, so it "
                f"differs from {value!r}", file=file, fix=f"write {value!r} without the spaces",
            )
        if not re.search(r"\w", value):
            raise CohortError(
                f"column {column!r}, line {line}: {text!r} is neither a value nor a missing "
                "value (n/a)", file=file, fix=recode,
            )
        words.append((line, value))
    if numbers and words:
        raise CohortError(
            f"column {column!r} mixes numbers and words: {_seen(sorted(numbers + words))}",
            file=file, fix=recode,
        )
    spellings = {}
    for line, value in words:
        key = re.sub(r"(?<=\w)[\s_-]+(?=\w)", " ", value.casefold())
        spellings.setdefault(key, []).append((line, value))
    for group in spellings.values():
        if len({value for _, value in group}) > 1:
            raise CohortError(
                f"column {column!r} spells one value several ways: {_seen(group)}", file=file,
                fix=f"recode column {column!r} to one spelling per category (e.g. "
                f"{group[0][1]!r} on every line where it means this one)",
            )
    for key, group in spellings.items():
        longer = [k for k in spellings
                  if len(key) == 1 and len(k) > 2 and k.isalpha() and k[0] == key]
        if longer:
            both = sorted(group + spellings[longer[0]])
            raise CohortError(
                f"column {column!r} mixes an abbreviation and a word that it may stand for: "
                f"{_seen(both)}", file=file,
                fix=f"recode column {column!r} to one spelling per category (e.g. "
                f"{spellings[longer[0]][0][1]!r} wherever {group[0][1]!r} means it)",
            )


def check_id(value, *, what, file, line):
    """Refuse a subject/session id that cannot be used as written in a file name."""
    bad = re.search(r"[\s/\\:*?\"<>|]", value)
    if bad or value.startswith(".") or not value.isprintable():
        char = "a leading '.'" if value.startswith(".") else (
            repr(bad.group()) if bad else "a non-printable character")
        raise CohortError(
            f"line {line}: the {what} {value!r} contains {char}; ids are used as written in "
            "file names", file=file, subject=value,
            fix=f"use letters, digits, '-' and '_' in the {what} (and name the files the same)",
        )
