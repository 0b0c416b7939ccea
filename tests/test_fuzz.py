"""Property-based fuzzing of the folder importer and the store reader (hypothesis).

The importer takes a small valid folder, applies random corruptions (truncation, byte
flips, NaN/Inf, shape and dtype changes, header, cell and row edits of participants.tsv
and rois.tsv) and runs the real CLI. Whatever the corruption, the command exits 0 or 2
(never a traceback); on failure nothing is left at ``--out``, not even a hidden
temporary folder; on success the store opens, verifies, and holds exactly what numpy
and the table text say the corrupted input holds (no silent acceptance of changed data).

The reader corrupts one file of a valid store (byte flips, truncation, appended bytes,
deletion, swapped files, manifest edits) and reads everything back through the library
and ``bsym data info``/``validate``: a CohortError (exit 2), or data identical to the
original, nothing else.

Examples are bounded and derandomized, so CI runs the same cases every time
(``BSYM_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py`` explores new ones).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _builders import write_folder

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bsym.cli import main  # noqa: E402
from bsym.data import CohortError, open_cohort  # noqa: E402
from bsym.data.checks import MISSING_VALUES  # noqa: E402
from bsym.testing import write_toy_store  # noqa: E402

#: CI runs the same 60 examples per test; BSYM_FUZZ_EXAMPLES=2000 explores new ones.
EXAMPLES = int(os.environ.get("BSYM_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                derandomize="BSYM_FUZZ_EXAMPLES" not in os.environ, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
SUBJECTS = ("s01", "s02", "s03")
N_ROIS, N_TIME = 5, 30
ARRAYS = [f"{kind}/{s}.npy" for kind in ("func", "sc") for s in SUBJECTS]
TABLES = ["participants.tsv", "rois.tsv"]


# -- corruptions of the input folder ----------------------------------------------------
def _flip(path, edits):
    data = bytearray(path.read_bytes())
    if not data:
        return
    for where, value in edits:
        k = int(where * (len(data) - 1))
        data[k] = value if value != data[k] else (value + 1) % 256
    path.write_bytes(bytes(data))


def _flip_data(path, edits):
    """Byte flips in the data of a .npy file (after its header), which still loads."""
    size = path.stat().st_size
    try:
        start = size - np.load(path, mmap_mode="r", allow_pickle=False).nbytes
    except Exception:  # an earlier corruption broke the file: flip anywhere
        start = 0
    data = bytearray(path.read_bytes())
    if len(data) <= start:
        return
    for where, value in edits:
        k = start + int(where * (len(data) - start - 1))
        data[k] = value if value != data[k] else (value + 1) % 256
    path.write_bytes(bytes(data))


def _truncate(path, where):
    data = path.read_bytes()
    path.write_bytes(data[:int(where * len(data))])


def _npy(path, edit):
    """Apply ``edit`` to the array numpy loads from ``path`` (pickles allowed on save);
    nothing where an earlier corruption left no array the edit applies to."""
    try:
        array = edit(np.load(path, allow_pickle=False))
    except Exception:  # whatever numpy says about a file an earlier corruption broke
        return
    np.save(path, array, allow_pickle=True)


def _set(index, value):
    def edit(a):
        a = np.array(a, dtype=float)
        a[tuple(int(f * (n - 1)) for f, n in zip(index, a.shape))] = value
        return a
    return edit


SHAPES = {
    "transpose": lambda a: a.T,
    "drop row": lambda a: a[:-1],
    "drop column": lambda a: a[:, :-1],
    "extra axis": lambda a: a[None],
    "flatten": lambda a: a.ravel(),
    "empty": lambda a: a[:0],
    "one column": lambda a: a[:, :1],
    "repeat rows": lambda a: np.concatenate([a, a[:2]]),
}
DTYPES = ["int8", "uint8", "int64", "float16", "float32", "complex64", "bool", "U6", "S6",
          "object", "datetime64[s]"]


def _dtype(name):
    def edit(a):
        if name == "object":
            return a.astype(object)
        if name == "datetime64[s]":
            return (a * 1000).astype("int64").astype(name)
        return a.astype(name)
    return edit


def _lines(path):
    return path.read_text(encoding="utf-8").split("\n")


def _edit_table(path, op, a, b, text):
    """Text-level edits of a tab-separated table: header, cells, rows, separator."""
    try:
        lines = [line for line in _lines(path) if line]
    except (OSError, UnicodeDecodeError):
        return  # an earlier corruption left no text to edit
    if len(lines) < 2:
        return
    rows = [line.split("\t") for line in lines]
    width = len(rows[0])
    col, row = int(a * (width - 1)), 1 + int(b * (len(rows) - 2))
    if op == "rename column":
        rows[0][col] = text
    elif op == "duplicate column name":
        rows[0][col] = rows[0][(col + 1) % width]
    elif op == "drop column":
        rows = [r[:col] + r[col + 1:] for r in rows]
    elif op == "edit cell":
        rows[row][col] = text
    elif op == "delete row":
        del rows[row]
    elif op == "duplicate row":
        rows.insert(row, list(rows[row]))
    elif op == "swap rows":
        other = 1 + (row % (len(rows) - 1))
        rows[row], rows[other] = rows[other], rows[row]
    elif op == "extra cell":
        rows[row].append(text)
    elif op == "separator":
        return path.write_text("\n".join((text[:1] or ",").join(r) for r in rows) + "\n")
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n", encoding="utf-8")


fractions = st.floats(0, 1)
array_file = st.sampled_from(ARRAYS)
any_file = st.sampled_from(ARRAYS + TABLES)
cell_text = st.one_of(
    st.sampled_from(["", "n/a", "NA", "nan", "inf", "-1", "0", "1e400", "2.0", "30", "x",
                     "s01", "s02", "F", "f", " M ", "subject", "tr", "session", "site",
                     "family", "age", "index", "name", "network", "1,5", "\t", '"', "sub-01"]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6),
)
ARRAY_CORRUPTIONS = st.one_of(
    st.tuples(st.just("flip data"), array_file,
              st.lists(st.tuples(fractions, st.integers(0, 255)), min_size=1, max_size=4)),
    st.tuples(st.just("set value"), array_file, st.tuples(fractions, fractions),
              st.floats(allow_nan=False, allow_infinity=False)),
    st.tuples(st.just("truncate"), any_file, fractions),
    st.tuples(st.just("flip"), any_file,
              st.lists(st.tuples(fractions, st.integers(0, 255)), min_size=1, max_size=4)),
    st.tuples(st.just("non-finite"), array_file, st.tuples(fractions, fractions),
              st.sampled_from([np.nan, np.inf, -np.inf, 1e39, -1e300])),
    st.tuples(st.just("shape"), array_file, st.sampled_from(sorted(SHAPES))),
    st.tuples(st.just("dtype"), array_file, st.sampled_from(DTYPES)),
)
TABLE_CORRUPTIONS = st.tuples(
    st.just("table"), st.sampled_from(TABLES),
    st.sampled_from(["rename column", "duplicate column name", "drop column", "edit cell",
                     "delete row", "duplicate row", "swap rows", "extra cell", "separator"]),
    fractions, fractions, cell_text)


def _corrupt(folder, corruption):
    kind, name, *args = corruption
    path = folder / name
    if kind == "truncate":
        _truncate(path, *args)
    elif kind == "flip":
        _flip(path, *args)
    elif kind == "flip data":
        _flip_data(path, *args)
    elif kind in ("non-finite", "set value"):
        _npy(path, _set(*args))
    elif kind == "shape":
        _npy(path, SHAPES[args[0]])
    elif kind == "dtype":
        _npy(path, _dtype(args[0]))
    else:
        _edit_table(path, *args)


# -- what the corrupted input says ------------------------------------------------------
def _raw_table(path):
    """Header names and rows of cells, read as plainly as the format allows."""
    text = path.read_bytes().decode("utf-8-sig")
    lines = [line for line in text.splitlines() if line.strip()]
    rows = [next(csv.reader([line], delimiter="\t")) for line in lines]
    names = [name.strip() for name in rows[0]]
    return names, [dict(zip(names, (c.strip() for c in cells))) for cells in rows[1:]]


def _same_value(stored, raw):
    if stored is None or (isinstance(stored, float) and math.isnan(stored)):
        return raw.strip().lower() in MISSING_VALUES
    if isinstance(stored, (int, float, np.integer, np.floating)) and not isinstance(stored, bool):
        try:
            return float(raw) == float(stored)
        except ValueError:
            return False
    return str(stored) == raw.strip()


def _real_array(path):
    """What numpy loads from ``path``, as the float32 a store holds; only finite real
    numbers may have been imported (not NaN, bools, complex numbers, strings or dates)."""
    array = np.load(path, allow_pickle=False)
    assert array.dtype.kind in "iuf", f"{path} holds {array.dtype} values, yet was imported"
    array = array.astype(np.float32)
    assert np.isfinite(array).all(), f"{path} holds NaN/Inf (as float32), yet was imported"
    return array


def _assert_faithful(folder, out):
    """The store verifies and holds exactly what the (corrupted) input files hold."""
    cohort = open_cohort(out, verify=True)
    names, rows = _raw_table(folder / "participants.tsv")
    id_column = "subject" if "subject" in names else "participant_id"
    raw = {(r[id_column], r.get("session") or "1"): r for r in rows}
    table = cohort.subjects
    assert len(table) == len(rows)
    for record in table.to_dict("records"):
        cells = raw[(record["subject"], record["session"])]
        stem = record["subject"] + (f"_ses-{record['session']}" if cells.get("session") else "")
        bold = _real_array(folder / "func" / f"{stem}.npy")
        np.testing.assert_array_equal(np.asarray(cohort.bold(record["scan"])), bold)
        sc = _real_array(folder / "sc" / f"{record['subject']}.npy")
        np.testing.assert_array_equal(np.asarray(cohort.sc(record["subject"])), sc)
        assert float(cells["tr"]) == pytest.approx(record["tr"], rel=1e-12)
        for label in cohort.labels:
            assert _same_value(record[label], cells[label]), (label, record[label], cells)
    if (folder / "rois.tsv").is_file() and "index" not in _raw_table(folder / "rois.tsv")[0]:
        roi_names = [r["name"] for r in _raw_table(folder / "rois.tsv")[1]]
        assert cohort.rois["name"].tolist() == roi_names


def _import_corrupted(corruptions, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(Path(tmp) / "in", subjects=SUBJECTS, n_rois=N_ROIS,
                              n_time=N_TIME)
        for corruption in corruptions:
            _corrupt(folder, corruption)
        out = Path(tmp) / "stores" / "cohort"
        code = main(["data", "import", "folder", str(folder), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        event(f"exit {code}")
        assert code in (0, 2), err
        leftovers = [p.name for p in out.parent.iterdir() if p.name != "cohort"] \
            if out.parent.exists() else []
        assert not leftovers, f"temporary folders left behind: {leftovers}"
        if code == 2:
            assert err.startswith("bsym: error: ") and err.count("\n") == 1, err
            assert "Fix:" in err, err
            assert not out.exists(), "a store was written although the import failed"
        else:
            _assert_faithful(folder, out)


@FUZZ
@given(corruptions=st.lists(ARRAY_CORRUPTIONS, min_size=1, max_size=3))
def test_importing_corrupted_arrays_fails_cleanly_or_stores_them_faithfully(corruptions,
                                                                              capsys):
    _import_corrupted(corruptions, capsys)


@FUZZ
@given(corruptions=st.lists(TABLE_CORRUPTIONS, min_size=1, max_size=3))
def test_importing_corrupted_tables_fails_cleanly_or_stores_them_faithfully(corruptions,
                                                                              capsys):
    _import_corrupted(corruptions, capsys)


# -- corruptions of a store -------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A valid store (with sessions and confounds) and everything read from it."""
    path = tmp_path_factory.mktemp("fuzz") / "store"
    cohort = write_toy_store(path, n_subjects=3, n_rois=5, n_timepoints=30, sessions=2,
                             confounds=True)
    return path, _read_everything(cohort)


def _read_everything(cohort):
    data = {"subjects": cohort.subjects, "rois": cohort.rois, "labels": cohort.labels,
            "n_rois": cohort.n_rois, "matrices": cohort.matrices}
    for scan in cohort.scans:
        data[f"bold {scan}"] = np.array(cohort.bold(scan))
        data[f"confounds {scan}"] = np.array(cohort.confounds(scan))
        data[f"window {scan}"] = cohort.window(scan, 3, 10)
    for subject in cohort.subjects["subject"].unique():
        data[f"sc {subject}"] = np.array(cohort.sc(subject))
    return data


def _assert_same(read, original):
    assert read.keys() == original.keys()
    for key, value in original.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(read[key], value)
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(read[key], value)
            assert read[key].dtype == value.dtype
        else:
            assert read[key] == value, key


def _mutate_json(manifest, path, value):
    """Set (or delete, for ``value`` ``"<delete>"``) the item at ``path`` of the manifest."""
    node, keys = manifest, []
    for step in path:
        if isinstance(node, dict) and node:
            key = sorted(node)[step % len(node)]
        elif isinstance(node, list) and node:
            key = step % len(node)
        else:
            break
        keys.append(key)
        parent, node = node, node[key]
    if not keys:
        return
    if value == "<delete>":
        del parent[keys[-1]]
    else:
        parent[keys[-1]] = value


json_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 10 ** 6),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                        st.just([]), st.just({}), st.just("<delete>"),
                        st.just("bsym-cohort"), st.just(2))
STORE_CORRUPTIONS = st.one_of(
    st.tuples(st.just("flip"), fractions,
              st.lists(st.tuples(fractions, st.integers(0, 255)), min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), fractions, fractions),
    st.tuples(st.just("append"), fractions, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), fractions),
    st.tuples(st.just("swap"), fractions, fractions),
    st.tuples(st.just("manifest"), st.lists(st.integers(0, 50), min_size=1, max_size=4),
              json_values),
)


def _corrupt_store(store, corruption):
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    kind, where, *args = corruption
    path = store / files[int(where * (len(files) - 1))] if kind != "manifest" else None
    if kind == "flip":
        _flip(path, args[0])
    elif kind == "truncate":
        _truncate(path, args[0] * 0.999)
    elif kind == "append":
        path.write_bytes(path.read_bytes() + args[0])
    elif kind == "delete":
        path.unlink()
    elif kind == "swap":
        other = store / files[int(args[0] * (len(files) - 1))]
        data = path.read_bytes()
        path.write_bytes(other.read_bytes())
        other.write_bytes(data)
    else:
        manifest = json.loads((store / "manifest.json").read_text())
        _mutate_json(manifest, where, args[0])
        (store / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


@FUZZ
@given(corruption=STORE_CORRUPTIONS)
def test_reading_a_corrupted_store_fails_cleanly_or_returns_the_original(corruption, pristine,
                                                                         capsys):
    source, original = pristine
    with tempfile.TemporaryDirectory() as tmp:
        store = shutil.copytree(source, Path(tmp) / "store")
        _corrupt_store(store, corruption)
        codes = [main(["data", "info", str(store)]),
                 main(["data", "validate", str(store), "--quiet"])]
        err = capsys.readouterr().err
        try:
            read = _read_everything(open_cohort(store))
        except CohortError as err_:
            event(f"refused: {str(err_).split(': ', 1)[-1][:40]}")
            assert codes == [2, 2], err
            assert err.count("bsym: error: ") == 2 and err.count("Fix:") == 2, err
        else:
            event("read back unchanged")
            assert codes == [0, 0], err
            _assert_same(read, original)
