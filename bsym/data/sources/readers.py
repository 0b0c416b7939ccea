"""Readers for raw input files shared by the importers.

Every reader raises :class:`~bsym.data.errors.CohortError` naming the file and
the subject when a file cannot be read, so the importers never let a bare
``ValueError`` from NumPy, SciPy or pandas reach the user.

Paths may be :class:`pathlib.Path` objects or :class:`zipfile.Path` objects
(files read straight from a wheel).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import struct
import tokenize
from pathlib import Path

import numpy as np
import pandas as pd

from bsym.data.checks import MISSING_VALUES, check_id, check_label_coding
from bsym.data.errors import CohortError

#: Array file formats the importers accept, in the order they are looked for.
ARRAY_SUFFIXES = (".npy", ".csv", ".tsv", ".mat")

#: Variable names tried, in order, when a .mat file holds several 2-D arrays.
MAT_NAMES = {
    "bold": ("tc", "bold", "timeseries", "time_series", "ts", "data"),
    "sc": ("sc", "connectome", "connectivity", "cm", "counts", "data"),
    "lengths": ("len", "lengths", "length", "fibre_lengths", "fiber_lengths", "data"),
}

#: participants.tsv columns that are not phenotype labels.
ID_COLUMNS = ("subject", "session", "site", "tr", "family")


def suffix(path) -> str:
    """Lower-case file suffix (``.npy``, ``.csv``, ...)."""
    return "." + str(path.name).rsplit(".", 1)[-1].lower() if "." in path.name else ""


def where(path):
    """A path for error messages (zipfile.Path objects are not os.PathLike)."""
    return path if isinstance(path, (str, Path)) else str(path)


# -- arrays ---------------------------------------------------------------------------
def _npy_from_bytes(data: bytes):
    """Parse ``.npy`` bytes; a header that disagrees with the data's size is an error
    (a damaged header must not make NumPy allocate or read something else)."""
    fh = io.BytesIO(data)
    version = np.lib.format.read_magic(fh)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is not None:
        shape, _, dtype = read_header(fh)
        expected, received = math.prod(shape) * dtype.itemsize, len(data) - fh.tell()
        if received != expected and not dtype.hasobject:  # (NumPy refuses pickles itself)
            raise ValueError(f"its header announces shape {shape} of {dtype} ({expected} bytes "
                             f"of data), the file holds {received} bytes of data")
        fh.seek(0)
    return np.load(fh, allow_pickle=False)


def load_npy(path, *, subject=None):
    """Read a ``.npy`` file (no pickles)."""
    try:
        return _npy_from_bytes(path.read_bytes())
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as err:
        raise CohortError(
            f"cannot read the .npy array ({err})", file=where(path), subject=subject,
            fix="the file is truncated, corrupt or holds Python objects; save it again "
            "with numpy.save",
        ) from None


def _mat_variables(path, subject):
    import scipy.io
    from scipy.io.matlab import MatReadError

    data = path.read_bytes()
    try:
        content = scipy.io.loadmat(io.BytesIO(data))
    except NotImplementedError:  # MATLAB v7.3 files are HDF5
        return _mat73_variables(path, data, subject)
    except (ValueError, TypeError, OSError, EOFError, struct.error, MatReadError) as err:
        raise CohortError(
            f"cannot read the .mat file ({type(err).__name__}: {err})", file=where(path),
            subject=subject, fix="check the file is a complete MATLAB .mat file",
        ) from None
    return {k: v for k, v in content.items() if not k.startswith("__")}


def _mat73_variables(path, data, subject):
    try:
        import h5py
    except ImportError:
        raise CohortError(
            "this is a MATLAB v7.3 (HDF5) .mat file, which needs h5py", file=where(path),
            subject=subject, fix="pip install h5py, or save it with save(..., '-v7')",
        ) from None
    out = {}
    with h5py.File(io.BytesIO(data), "r") as fh:
        for name, item in fh.items():
            if isinstance(item, h5py.Dataset) and item.ndim == 2:
                out[name] = np.asarray(item).T  # MATLAB writes column-major
    return out


def load_mat(path, *, subject=None, variable=None, prefer=()):
    """Read one 2-D numeric array from a ``.mat`` file.

    Parameters
    ----------
    path : Path or zipfile.Path
        The file.
    subject : str, optional
        For error messages.
    variable : str, optional
        Variable to read. By default the file's only 2-D numeric array, or
        the first name of ``prefer`` that is present.
    prefer : sequence of str
        Variable names to try when the file holds several arrays.
    """
    variables = _mat_variables(path, subject)
    if variable is not None:
        if variable not in variables:
            raise CohortError(
                f"expected a variable {variable!r}, the file holds "
                f"{', '.join(sorted(variables)) or 'none'}",
                file=where(path), subject=subject, fix="set the variable name (mat_variable)",
            )
        return np.asarray(variables[variable])
    arrays = {k: v for k, v in variables.items()
              if isinstance(v, np.ndarray) and v.ndim == 2
              and np.issubdtype(v.dtype, np.number)}
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    named = [name for name in prefer if name in arrays]
    key = next((k for k, names in MAT_NAMES.items() if tuple(prefer) == names), "func")
    key = "func" if key == "bold" else key
    if len(named) > 1:
        raise CohortError(
            f"expected one 2-D array to read, found several candidates: {', '.join(named)}",
            file=where(path), subject=subject,
            fix=f"name the variable to read (in dataset.json: \"mat_variable\": "
            f"{{\"{key}\": \"{named[0]}\"}}), or save one array per file",
        )
    if named:
        return arrays[named[0]]
    raise CohortError(
        f"expected one 2-D numeric array, found {len(arrays)} "
        f"({', '.join(sorted(arrays)) or 'none'}; all variables: "
        f"{', '.join(sorted(variables)) or 'none'})",
        file=where(path), subject=subject,
        fix="save one array per file or name the variable (mat_variable in dataset.json)",
    )


def _is_number(text) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _counting(cells) -> bool:
    """True for cells reading 0, 1, 2, ... or 1, 2, 3, ... (at least 3 of them)."""
    try:
        values = [float(c) for c in cells]
    except (TypeError, ValueError):
        return False
    n = len(values)
    return n >= 3 and values in (list(range(n)), list(range(1, n + 1)))


def load_text_matrix(path, *, subject=None):
    """Read a numeric matrix from a ``.csv`` or ``.tsv`` file.

    A first row that is not all numbers is taken as a header, a first column
    that is not all numbers as row names. Empty cells become NaN.
    """
    sep = "\t" if suffix(path) == ".tsv" else ","
    try:
        text = path.read_text()
        table = pd.read_csv(io.StringIO(text), sep=sep, header=None, dtype=str,
                            keep_default_na=False, skip_blank_lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            OSError) as err:
        raise CohortError(
            f"cannot read the table ({type(err).__name__}: {str(err).strip()})",
            file=where(path), subject=subject,
            fix=f"save a plain {'tab' if sep == chr(9) else 'comma'}-separated numeric "
            "matrix with the same number of values on every line",
        ) from None
    values = table.to_numpy()
    index_style = values.size > 0 and values[0, 0].strip() == "" and values.shape[1] > 1
    if values.size and (index_style or not all(_is_number(v) or not v.strip()
                                               for v in values[0])):
        values = values[1:]
    if values.size and (index_style or not all(_is_number(v) or not v.strip()
                                               for v in values[:, 0])):
        values = values[:, 1:]
    cells = pd.DataFrame(values).apply(lambda col: col.str.strip())
    numeric = cells.apply(pd.to_numeric, errors="coerce")
    bad = (numeric.isna() & (cells != "")
           & ~cells.apply(lambda col: col.str.lower().isin(["nan", "na", "n/a"]))).to_numpy()
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise CohortError(
            f"expected numbers, received {cells.iat[i, j]!r} at data row {i + 1}, "
            f"column {j + 1}",
            file=where(path), subject=subject,
            fix="keep only numbers (plus at most one header row and one name column)",
        )
    for first, what, numbers in ((values[0] if values.size else [], "row", "column numbers"),
                                 (values[:, 0] if values.size else [], "column", "row numbers")):
        if _counting(first):
            raise CohortError(
                f"the first {what} reads {', '.join(c.strip() for c in first[:3])}, ..., "
                f"{first[-1].strip()}: it may be {numbers} (as pandas writes them) or data, "
                "and bsym does not guess", file=where(path), subject=subject,
                fix=f"save the matrix without {numbers} (np.savetxt(path, x, delimiter=',')), "
                "or give rows and columns names that are not numbers",
            )
    return numeric.to_numpy(dtype=np.float64)


def read_array(path, *, subject=None, variable=None, kind="bold"):
    """Read a 2-D array from ``.npy``, ``.csv``, ``.tsv`` or ``.mat``."""
    ext = suffix(path)
    if ext == ".npy":
        array = load_npy(path, subject=subject)
    elif ext in (".csv", ".tsv"):
        array = load_text_matrix(path, subject=subject)
    elif ext == ".mat":
        array = load_mat(path, subject=subject, variable=variable,
                         prefer=MAT_NAMES.get(kind, ()))
    else:
        raise CohortError(
            f"expected one of {', '.join(ARRAY_SUFFIXES)}, received {ext or 'no suffix'}",
            file=where(path), subject=subject, fix="convert the file to .npy or .csv",
        )
    array = np.asarray(array)
    if array.ndim != 2:
        layout = "ROIs x time" if kind == "bold" else "ROIs x ROIs"
        raise CohortError(
            f"expected a 2-D array ({layout}), received shape {array.shape}", file=where(path),
            subject=subject, fix=f"store one {layout} matrix per file"
            + (" (a single ROI's series as x[None, :])" if kind == "bold" and array.ndim == 1
               else ""),
        )
    return array


def find_array_file(folder: Path, stem: str, *, subject=None):
    """Return ``folder/stem.<ext>`` for the one accepted suffix present, else None."""
    found = [folder / f"{stem}{ext}" for ext in ARRAY_SUFFIXES
             if (folder / f"{stem}{ext}").is_file()]
    if len(found) > 1:
        raise CohortError(
            f"several files for one scan: {', '.join(p.name for p in found)}",
            file=folder, subject=subject, fix="keep exactly one file per scan",
        )
    return found[0] if found else None


# -- tables ---------------------------------------------------------------------------
def read_json(path):
    """Read a JSON object from ``path``."""
    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CohortError(f"not valid JSON ({err})", file=where(path),
                          fix="fix the JSON syntax") from None
    if not isinstance(value, dict):
        raise CohortError(f"expected a JSON object, received {type(value).__name__}",
                          file=where(path), fix='write {"key": value, ...}')
    return value


SEPARATOR_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", " ": "space"}


def _separator_in(line):
    """The separator a table line seems to use, or None for a single cell."""
    for sep in ("\t", ",", ";"):
        if sep in line:
            return sep
    return " " if re.search(r"\S\s+\S", line.strip()) else None


def read_table(path, *, what="table"):
    """Read a delimited table with a header row, cells exactly as written.

    Tab-separated, or comma-separated for ``.csv`` files; UTF-8 (a byte-order
    mark and Windows line ends are fine); blank lines are skipped. Raises when
    the file uses another separator, a line has a different number of cells
    than the header, or two columns have the same name (also up to case and
    spaces), so that no column is renamed or dropped behind the user's back.

    Returns
    -------
    names : list of str
        The column names (spaces around them removed).
    lines : list of (int, list of str)
        Line number and cells (one per column) of each data line.
    """
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"no such {what} file", file=path, fix="check the path")
    sep = "," if suffix(path) == ".csv" else "\t"
    sep_name = SEPARATOR_NAMES[sep]
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CohortError(
            f"the {what} is not UTF-8 text (byte 0x{data[err.start]:02x} at position "
            f"{err.start})", file=path, fix="save it with UTF-8 encoding",
        ) from None
    numbered = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not numbered:
        raise CohortError(f"the {what} is empty", file=path,
                          fix=f"write a header row and one line per row, {sep_name}-separated")

    def cells(line):
        return next(csv.reader([line], delimiter=sep))

    header_line, header = numbered[0][1], cells(numbered[0][1])
    if len(header) == 1:
        found = _separator_in(header_line)
        if found is not None and found != sep:
            raise CohortError(
                f"expected a {sep_name}-separated {what}, but the header line "
                f"{header_line.strip()!r} is {SEPARATOR_NAMES[found]}-separated",
                file=path, fix=f"save it {sep_name}-separated (one {sep_name} between columns)",
            )
    names = [name.strip() for name in header]
    while len(names) > 1 and not names[-1]:
        names.pop()  # trailing separators after the last name
    unnamed = [k + 1 for k, name in enumerate(names) if not name]
    if unnamed:
        raise CohortError(f"column {unnamed[0]} of the header has no name", file=path,
                          fix="name every column, or delete the empty one")
    folded = {}
    for k, name in enumerate(names, start=1):
        key = re.sub(r"\s+", " ", name.casefold())
        if key in folded:
            first, j = folded[key]
            same = (f"duplicate column {name!r} (columns {j} and {k})" if first == name else
                    f"columns {first!r} (column {j}) and {name!r} (column {k}) differ only in "
                    "case or spacing")
            raise CohortError(
                same, file=path,
                fix="give every column a unique name: rename or delete one of them",
            )
        folded[key] = (name, k)
    rows = []
    for number, line in numbered[1:]:
        row = cells(line)
        if len(row) > len(names) and not any(c.strip() for c in row[len(names):]):
            row = row[:len(names)]
        if len(names) < len(row) <= len(header):
            raise CohortError(
                f"column {len(names) + 1} of the header has no name, but line {number} has "
                f"a value there", file=path, fix="name every column, or delete the empty one",
            )
        if len(row) != len(names):
            found = _separator_in(line)
            how = (f"; it looks {SEPARATOR_NAMES[found]}-separated"
                   if len(row) == 1 and found not in (None, sep) else "")
            raise CohortError(
                f"line {number} has {len(row)} cell(s) but the header has {len(names)} "
                f"columns{how}", file=path,
                fix=f"give every line one cell per column, {sep_name}-separated (an empty "
                "cell is a missing value)",
            )
        rows.append((number, row))
    return names, rows


def read_tsv(path, *, what="table", categories=()):
    """Read a tab-separated table with a header (``.csv`` files: comma-separated).

    Returns a DataFrame of strings with the spaces around cells removed; see
    :func:`read_table` for what is refused. Columns named in ``categories`` must
    code their values one way (:func:`bsym.data.checks.check_label_coding`).
    """
    names, rows = read_table(path, what=what)
    for column in categories:
        if column in names:
            k = names.index(column)
            check_label_coding(column, [(i, cells[k]) for i, cells in rows], file=path)
    table = pd.DataFrame([row for _, row in rows], columns=names, dtype=object)
    if not rows:
        table = pd.DataFrame({name: pd.Series(dtype=object) for name in names})
    return table.apply(lambda col: col.str.strip()).astype(object)


def _number_or_text(value):
    if value is None or value.strip().lower() in MISSING_VALUES:
        return None
    value = value.strip()
    if _is_number(value):
        number = float(value)
        return int(number) if number.is_integer() and "." not in value else number
    return value


#: participants.tsv columns whose values are categories (besides the labels).
CATEGORY_ID_COLUMNS = ("site",)


def read_participants(path):
    """Read a participants table into a list of rows (dicts).

    Accepts ``subject`` or the BIDS ``participant_id`` column; ``session``,
    ``site``, ``tr`` and ``family`` are optional; every other column is a
    label. Empty cells and ``n/a`` become None. Raises on duplicate
    subject/session pairs, ids that cannot be file names, and label (and
    ``site``) columns whose coding is ambiguous (see
    :func:`bsym.data.checks.check_label_coding`).
    """
    path = Path(path)
    names, lines = read_table(path, what="participants table")
    if "subject" in names and "participant_id" in names:
        raise CohortError("both a 'subject' and a 'participant_id' column", file=path,
                          fix="keep one subject id column")
    names = ["subject" if name == "participant_id" else name for name in names]
    if "subject" not in names:
        raise CohortError(
            f"expected a 'subject' column, received columns: {', '.join(names)}",
            file=path, fix="name the subject id column 'subject' (or 'participant_id')",
        )
    records = [(i, dict(zip(names, cells))) for i, cells in lines]
    for column in names:
        if column not in ID_COLUMNS or column in CATEGORY_ID_COLUMNS:
            check_label_coding(column, [(i, r[column]) for i, r in records], file=path)
    rows, seen = [], {}
    for i, record in records:
        subject = record["subject"].strip()
        if not subject:
            raise CohortError(f"line {i} has an empty subject id", file=path,
                              fix="fill the subject column or delete the line")
        check_id(subject, what="subject id", file=path, line=i)
        session = (record.get("session") or "").strip()
        if session:
            check_id(session, what="session", file=path, line=i)
        key = (subject, session)
        if key in seen:
            which = f" session {session}" if session else ""
            raise CohortError(
                f"duplicate subject id: {subject}{which} is on lines {seen[key]} and {i}",
                file=path, subject=subject,
                fix="give every scan one line (add a session column for repeated scans)",
            )
        seen[key] = i
        row = {k: (v.strip() if k in ("subject", "session", "site", "family")
                   else _number_or_text(v)) for k, v in record.items()}
        row["session"] = session
        row["_line"] = i
        rows.append(row)
    return rows


def read_rois(path):
    """Read an ROI table: ``name`` required; ``network``, ``x``, ``y``, ``z`` optional.

    Returns ``(names, networks or None, coords or None)``.
    """
    table = read_tsv(path, what="ROI table", categories=("network",))
    if "name" not in table.columns:
        raise CohortError(
            f"expected a 'name' column, received columns: {', '.join(table.columns)}",
            file=where(path), fix="give the ROI table a header with at least 'name'",
        )
    if "index" in table.columns:
        try:
            order = np.argsort(table["index"].astype(float).to_numpy(), kind="stable")
        except ValueError:
            raise CohortError("the 'index' column holds non-numbers", file=where(path),
                              fix="use integer label values in 'index'") from None
        repeated = sorted(set(table["index"][table["index"].duplicated()]))
        if repeated:
            raise CohortError(
                f"the 'index' column repeats {', '.join(repeated[:5])}, so the ROI order is "
                "ambiguous", file=where(path), fix="give every ROI its own index")
        table = table.iloc[order]
    names = table["name"].tolist()
    networks = table["network"].tolist() if "network" in table.columns else None
    coords = None
    xyz = [c for c in ("x", "y", "z") if c in table.columns]
    if xyz:
        if len(xyz) != 3:
            raise CohortError(f"coordinates need x, y and z; found only {', '.join(xyz)}",
                              file=where(path), fix="add the missing coordinate columns")
        coords = table[["x", "y", "z"]].apply(pd.to_numeric, errors="coerce").to_numpy()
        if np.isnan(coords).any():
            raise CohortError("non-numeric or empty ROI coordinates", file=where(path),
                              fix="give x, y, z in mm for every ROI (or drop the columns)")
    return names, networks, coords


def read_confounds(path, *, subject=None, columns=None, n_timepoints=None,
                   fill_leading_nan=False):
    """Read a confounds table (time x regressors, with a header).

    The separator (tab, comma or spaces) is taken from the header line, whatever
    the file suffix (nilearn's ADHD ``*_regressors.csv`` files are tab-separated).

    Parameters
    ----------
    columns : sequence of str, optional
        Columns to keep; all when None.
    n_timepoints : int, optional
        Expected number of rows.
    fill_leading_nan : bool
        Replace NaN in the first rows (derivatives such as framewise
        displacement) by 0; NaN elsewhere is an error.

    Returns
    -------
    values : ndarray, (time, regressors), float64
    names : list of str
    """
    try:
        with open(path) as fh:
            first = fh.readline()
        sep = "\t" if "\t" in first else ("," if "," in first else r"\s+")
        table = pd.read_csv(path, sep=sep)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            OSError) as err:
        raise CohortError(f"cannot read the confounds ({str(err).strip()})", file=where(path),
                          subject=subject, fix="save a tab-separated table with a header") from None
    header = [name.strip() for name in re.split(sep, first.lstrip("\ufeff").strip())]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise CohortError(f"duplicate confound column(s) {', '.join(repeated)}",
                          file=where(path), subject=subject,
                          fix="give every confound column a unique name (rename or delete one)")
    table.columns = [str(c).strip() for c in table.columns]
    if columns is not None:
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise CohortError(
                f"expected confound column(s) {', '.join(missing)}; the file has "
                f"{', '.join(table.columns[:12])}{' ...' if len(table.columns) > 12 else ''}",
                file=where(path), subject=subject,
                fix="choose confounds that exist in every confounds file",
            )
        table = table[list(columns)]
    values = np.array(table.apply(pd.to_numeric, errors="coerce"), dtype=np.float64)
    if n_timepoints is not None and values.shape[0] != n_timepoints:
        raise CohortError(
            f"expected {n_timepoints} confound rows (one per volume), received {values.shape[0]}",
            file=where(path), subject=subject, fix="use the confounds file made with this fMRI run",
        )
    bad = ~np.isfinite(values)
    if bad.any():
        if fill_leading_nan:
            first_good = np.argmax(~bad, axis=0)
            leading = np.arange(values.shape[0])[:, None] < first_good[None, :]
            values[leading & bad] = 0.0
            bad = ~np.isfinite(values)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise CohortError(
                f"{int(bad.sum())} missing or non-numeric confound values "
                f"(first: row {i + 1}, column {table.columns[j]!r})",
                file=where(path), subject=subject,
                fix="fill the first rows of derivative regressors with 0 and remove "
                "non-numeric cells",
            )
    return values, list(table.columns)


# -- small helpers --------------------------------------------------------------------
def orient(array, orientation, *, file, subject):
    """Return ROIs x time from an array stored as ``orientation``."""
    if orientation == "rois_x_time":
        return array
    if orientation == "time_x_rois":
        return array.T
    raise CohortError(
        f"expected orientation 'rois_x_time' or 'time_x_rois', received {orientation!r}",
        file=file, subject=subject, fix="fix 'orientation' in dataset.json",
    )


def valid_tr(value) -> bool:
    """True when ``value`` can be read as a positive finite number."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(value) and value > 0


def flat_rois(bold, rtol=1e-7):
    """Indices of ROIs (rows) of ``bold`` that are constant or not finite."""
    bold = np.asarray(bold, dtype=np.float64)
    finite = np.isfinite(bold).all(axis=1)
    spread = np.where(finite, np.nanmax(bold, axis=1) - np.nanmin(bold, axis=1), 0.0)
    scale = max(float(np.nanmax(np.abs(bold))) if np.isfinite(bold).any() else 1.0, 1.0)
    return np.flatnonzero(~finite | (spread <= rtol * scale))


def progress_bar(items, *, desc, progress, unit="scan"):
    """``tqdm`` over ``items`` (disabled when ``progress`` is False)."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not progress, unit=unit)
