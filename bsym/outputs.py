"""How the evaluation, statistics, report and sweep commands mark and write their outputs.

Every output carries a mark that says bsym wrote it, so a later command replaces only
its own artifacts and refuses anything else (see :func:`bsym.io.guard_output`):

* Parquet tables: the key-value metadata ``bsym.artifact`` (``result-table``,
  ``health-table``, ``attention-contrast``) and ``bsym.version``;
* figures: ``bsym-figure`` in the image metadata (PNG ``Software``, PDF/SVG/EPS
  ``Creator``);
* output folders (``bsym stats``, ``bsym report``, ``bsym attention``): the index
  :data:`FOLDER_INDEX`, which lists every file bsym wrote into the folder;
* JSON documents: a ``format`` field (split files, sweep results, tracking records).

Every file is written atomically (complete beside the old one, then renamed over it),
and a full disk or a permission problem is a :class:`~bsym.errors.BsymError` naming the
file.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import re
from pathlib import Path

from bsym import __version__
from bsym.errors import BsymError
from bsym.io import atomic_path, atomic_write_json, check_writable, guard_output

GENERATOR = f"bsym {__version__}"
FIGURE_MARK = "bsym-figure"
PARQUET_KEY = b"bsym.artifact"
FOLDER_INDEX = ".bsym-outputs.json"
FOLDER_FORMAT = "bsym-output-folder"
#: The metadata key matplotlib writes the mark under, per figure format.
_FIGURE_KEYS = {"png": "Software", "pdf": "Creator", "svg": "Creator", "eps": "Creator",
                "ps": "Creator"}
_ACTIVE = contextvars.ContextVar("bsym_output_folder", default=None)


def _no_space(err: OSError) -> OSError:
    """``err`` with ``errno.ENOSPC`` when a library reports a full disk only in its text
    (pyarrow does)."""
    if err.errno is None and ("No space left" in str(err) or "[Errno 28]" in str(err)):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), err.filename)
    return err


@contextlib.contextmanager
def atomic_output(path, *, what="the output"):
    """:func:`bsym.io.atomic_path` for an output, recorded in the active
    :class:`OutputFolder` when ``path`` lies inside it."""
    path = Path(path)
    folder = _ACTIVE.get()
    if folder is not None:
        folder.claim(path)
    with atomic_path(path, what=what) as tmp:
        try:
            yield tmp
        except OSError as err:
            raise _no_space(err) from err


# -- figures ------------------------------------------------------------------------------
def save_figure(fig, path, *, what="the figure", **kwargs) -> Path:
    """Save a matplotlib figure atomically, marked as bsym's (the format follows the
    suffix; PNG without one)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    key = _FIGURE_KEYS.get(fmt)
    metadata = {key: f"{GENERATOR} ({FIGURE_MARK})"} if key else None
    with atomic_output(path, what=what) as tmp:
        fig.savefig(tmp, format=fmt, metadata=metadata, **kwargs)
    return path


def figure_is_ours(path) -> bool:
    """Whether the image at ``path`` was saved by :func:`save_figure`."""
    try:
        path = Path(path)
        if not path.is_file() or path.stat().st_size > 64 << 20:
            return False
        return FIGURE_MARK.encode() in path.read_bytes()
    except OSError:
        return False


def guard_figure(path, flag):
    """Refuse a figure path that holds anything but a bsym figure (a bsym figure is
    replaced)."""
    guard_output(path, is_ours=figure_is_ours, what="figure", overwrite=True,
                 fix_other=f"choose another {flag} path, or move this file away yourself")


# -- tables -------------------------------------------------------------------------------
def parquet_columns_and_kind(path):
    """``(columns, kind)`` of a Parquet file from its footer alone (``kind`` is the
    ``bsym.artifact`` metadata or None); None when it is not a readable Parquet file."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception:  # noqa: BLE001 - pyarrow raises several types
        return None
    meta = schema.metadata or {}
    kind = meta.get(PARQUET_KEY)
    return list(schema.names), (kind.decode() if kind is not None else None)


def write_parquet(frame, path, kind, *, what="the table") -> Path:
    """Write ``frame`` to ``path`` atomically as Parquet marked ``bsym.artifact=kind``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta.update({PARQUET_KEY: kind.encode(), b"bsym.version": __version__.encode()})
    table = table.replace_schema_metadata(meta)
    with atomic_output(path, what=what) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def write_csv(frame, path, *, what="the table") -> Path:
    """Write ``frame`` to ``path`` atomically as CSV (no index)."""
    with atomic_output(path, what=what) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def csv_header(path):
    """The column names on the first line of a CSV file, or None."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline()
    except (OSError, UnicodeDecodeError):
        return None
    return [part.strip().strip('"') for part in first.rstrip("\r\n").split(",")]


def json_format(path):
    """The ``format`` field of a JSON document (None for anything else)."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return payload.get("format") if isinstance(payload, dict) else None


def json_document(path):
    """A JSON object read from ``path`` (None when it is not one)."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


# -- folders ------------------------------------------------------------------------------
def _folder_entries(path: Path) -> list[str]:
    """Every file (and symlink) under ``path``, as POSIX paths relative to it."""
    out = []
    for root, dirs, files in os.walk(path):
        rel = Path(root).relative_to(path)
        out.extend((rel / name).as_posix() for name in files)
        out.extend((rel / name).as_posix() for name in dirs if (Path(root) / name).is_symlink())
    return sorted(out)


def _temp_of(entry: str, listed: set) -> bool:
    """Whether ``entry`` is a temporary file :func:`bsym.io.atomic_path` left beside a
    listed file (a killed process)."""
    parent, _, name = entry.rpartition("/")
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    return any(name.startswith(f".{Path(other).name}.") and other.rpartition("/")[0] == parent
               for other in listed | {FOLDER_INDEX})


class OutputFolder:
    """A folder a command writes its files into, with the index of what bsym wrote there.

    The folder is bsym's when it is absent, empty, or holds the index of this ``kind``
    and nothing the index does not list (or matches ``legacy``, the layout of an older
    bsym that wrote no index). Anything else is refused before any work: bsym never
    deletes or replaces a file it did not write. Within ``with folder:``, every file
    written through :func:`atomic_output` (:func:`save_figure`, :func:`write_csv`,
    :func:`write_parquet`) inside the folder is listed in the index before it is written
    (the index itself is written with the first file, so a command that fails before
    writing anything leaves nothing behind).

    Parameters
    ----------
    path : str or Path
    kind : str
        What the folder holds (``"report"``, ``"stats"``, ``"attention"``).
    flag : str
        The option that names the folder, for messages.
    legacy : callable, optional
        ``legacy(entries) -> bool``: whether an index-less folder is an older bsym output.
    """

    def __init__(self, path, kind, *, flag="--out", legacy=None):
        self.path = Path(path)
        self.kind = kind
        self.flag = flag
        self.legacy = legacy
        self.files: set[str] = set()
        self._token = None

    def __repr__(self):
        return f"OutputFolder({str(self.path)!r}, kind={self.kind!r})"

    @property
    def index(self) -> Path:
        return self.path / FOLDER_INDEX

    def _refuse(self, cause):
        raise BsymError(
            f"{self.path}: {cause}; bsym never deletes or replaces files it did not write. "
            f"Fix: choose a new or empty folder for {self.flag}, or move those files away "
            "yourself")

    def check(self) -> OutputFolder:
        """Raise :class:`~bsym.errors.BsymError` unless bsym may write into the folder."""
        path = self.path
        if path.is_symlink():
            self._refuse("this is a symbolic link, not a folder bsym made")
        if path.exists() and not path.is_dir():
            self._refuse(f"this is a file, not a folder; expected a folder for the {self.kind} "
                         "outputs")
        check_writable(path / FOLDER_INDEX,
                       fix=f"choose a {self.flag} folder in a location you can write to")
        if not path.exists():
            self.files = set()
            return self
        entries = [e for e in _folder_entries(path) if e != FOLDER_INDEX]
        if self.index.exists() or self.index.is_symlink():
            payload = json_document(self.index)
            if payload is None or payload.get("format") != FOLDER_FORMAT or \
                    not isinstance(payload.get("files"), list):
                self._refuse(f"its index {FOLDER_INDEX} is damaged or not bsym's")
            if payload.get("kind") != self.kind:
                self._refuse(f"this folder holds bsym {payload.get('kind')} outputs, not "
                             f"{self.kind} outputs")
            listed = {str(f) for f in payload["files"]}
        elif not entries:
            listed = set()
        elif self.legacy is not None and self.legacy(entries):
            listed = set(entries)
        else:
            listed = set()
        foreign = [e for e in entries if e not in listed and not _temp_of(e, listed)]
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            self._refuse(f"this folder holds {foreign[0]}{more}, which bsym did not write "
                         f"(no {self.kind} output of bsym lists it)")
        self.files = listed
        return self

    def _write_index(self):
        atomic_write_json(self.index, {"format": FOLDER_FORMAT, "kind": self.kind,
                                       "generator": GENERATOR, "files": sorted(self.files)},
                          what=f"the index of the {self.kind} folder")

    def claim(self, path) -> None:
        """List ``path`` (inside the folder) in the index before it is written."""
        path = Path(path)
        try:
            rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(self.path)).as_posix()
        except ValueError:
            return
        if rel not in self.files or not self.index.exists():
            self.files.add(rel)
            self._write_index()

    def __enter__(self):
        self.check()
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc):
        _ACTIVE.reset(self._token)
        self._token = None
        return False


def layout(*patterns):
    """A ``legacy`` test for :class:`OutputFolder`: every entry matches one of the regular
    expressions, and there is at least one."""
    compiled = [re.compile(p) for p in patterns]
    return lambda entries: bool(entries) and all(any(c.fullmatch(e) for c in compiled)
                                                 for e in entries)
