"""Small file helpers shared by every layer: content hashes, durable renames, file locks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path


def file_sha256(path, chunk=1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            h.update(block)
    return h.hexdigest()


def json_sha256(payload) -> str:
    """SHA-256 of the canonical JSON of ``payload`` (sorted keys, no spaces)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def fsync_dir(path) -> None:
    """Flush a directory entry (after a rename) where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path):
    """An exclusive advisory lock on the file ``path`` (created with its folder), held for
    the ``with`` block; a no-op where ``fcntl`` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- writing outputs without losing anything of the user's ------------------------------
def _first_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path, *, fix="choose an --out location in a folder you can write to"):
    """Raise :class:`~bsym.errors.BsymError` unless ``path`` can be created or replaced.

    Walks up to the nearest existing folder and checks that it is a folder the user may
    write to, so a permission problem is reported before any work starts.
    """
    from bsym.errors import BsymError

    path = Path(path)
    anchor = _first_existing(path.parent if path.name else path)
    if not anchor.is_dir():
        raise BsymError(f"{path}: cannot create it, {anchor} is a file, not a folder. Fix: {fix}")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise BsymError(f"{path}: cannot write here, {anchor} is not writable (permission "
                        f"denied). Fix: {fix}")


def guard_output(path, *, is_ours, what, overwrite, flag="--overwrite", fix_other=None):
    """Decide whether a command may write ``path``; raise a clear error where it may not.

    An absent path is fine. An existing path is replaced only when it is a bsym artifact
    of the expected kind (``is_ours(path)`` is true) and ``overwrite`` is set: bsym never
    deletes or replaces anything it did not write itself.

    Parameters
    ----------
    path : str or Path
        The file or folder the command will write.
    is_ours : callable
        ``is_ours(Path) -> bool``: whether the existing path is a bsym artifact of this kind.
    what : str
        The artifact, for messages (``"cohort store"``, ``"report"``).
    overwrite : bool
        Whether the user asked to replace an existing artifact.
    flag : str
        The option that asks for replacement, named in the message.
    """
    from bsym.errors import BsymError

    path = Path(path)
    check_writable(path)
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() or not is_ours(path):
        kind = "folder" if path.is_dir() else "file"
        raise BsymError(
            f"{path}: this {kind} exists and is not a {what} written by bsym; bsym never "
            f"deletes or replaces files it did not write, with or without {flag}. Fix: "
            + (fix_other or "choose another output path, or move this one away yourself"))
    if not overwrite:
        raise BsymError(f"{path}: a {what} written by bsym already exists here. Fix: pass "
                        f"{flag} to replace it (the new one is complete before the old one "
                        "is removed), or choose another output path")


def disk_error(err: OSError, path, *, what="the output", writing=True):
    """A :class:`~bsym.errors.BsymError` for an ``OSError`` raised on ``path`` (while writing
    it, unless ``writing`` is false)."""
    import errno

    from bsym.errors import BsymError

    if err.errno == errno.ENOSPC:
        cause, fix = "the disk is full", "free space (or choose an output on another disk) and rerun"
    elif err.errno == errno.EDQUOT:
        cause, fix = "the disk quota is exceeded", "free space within your quota and rerun"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause, fix = "permission denied", "choose an output location you can write to"
    else:
        cause, fix = err.strerror or str(err), "check the location and rerun"
    if not writing:  # read or write, unknown: the file's own access is the first suspect
        if err.errno in (errno.EACCES, errno.EPERM):
            fix = "check that you may read and write it, or choose another location"
        return BsymError(f"{path}: could not use {what}: {cause}. Fix: {fix}")
    return BsymError(f"{path}: could not write {what}: {cause}; nothing was replaced. Fix: {fix}")


def _umask() -> int:
    """The process umask, read without changing it where the platform allows."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, *, what="the output", exclusive=False):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Write the whole artifact to the yielded path; it is fsynced and renamed over ``path``
    only when the block ends without an error, so ``path`` holds either the old complete
    artifact or the new complete one, never a partial one. An ``OSError`` (a full disk,
    a permission problem) becomes a :class:`~bsym.errors.BsymError` naming ``path``.
    With ``exclusive``, an existing ``path`` is never replaced: ``FileExistsError`` is
    raised when it exists at the end (made meanwhile by another process).
    """
    import tempfile

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise disk_error(err, path, what=what) from err
    os.close(fd)
    tmp = Path(tmp)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # as an ordinary file, not mkstemp's 0600
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        if exclusive and isinstance(err, FileExistsError):
            raise
        raise disk_error(err, path, what=what) from err
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path, data: bytes, *, what="the output", exclusive=False) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, what=what, exclusive=exclusive) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path, text: str, *, what="the output", exclusive=False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), what=what, exclusive=exclusive)


def atomic_write_json(path, payload, *, what="the output", indent=1, sort_keys=True,
                      exclusive=False) -> Path:
    """Write ``payload`` as JSON (keys sorted unless ``sort_keys`` is false) to ``path``
    atomically (see :func:`atomic_path`)."""
    text = json.dumps(payload, indent=indent, sort_keys=sort_keys, default=str) + "\n"
    return atomic_write_text(path, text, what=what, exclusive=exclusive)


# -- recorded checksums: <file>.sha256 beside each verified artifact ---------------------
CHECKSUM_SUFFIX = ".sha256"


def checksum_path(path) -> Path:
    """The sidecar ``<file>.sha256`` that records the SHA-256 of ``path``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checksum(path, digest=None, *, what="the output") -> str:
    """Record the SHA-256 of ``path`` (or ``digest``) in its sidecar, atomically.

    The sidecar is one ``sha256sum`` line (``<hex>  <name>``), so ``sha256sum -c`` in the
    file's folder checks it too, and it travels with the file when a folder is copied.
    """
    path = Path(path)
    digest = digest or file_sha256(path)
    atomic_write_text(checksum_path(path), f"{digest}  {path.name}\n",
                      what=f"the checksum of {what}")
    return digest


def recorded_checksum(path):
    """The SHA-256 recorded for ``path`` in its sidecar, or None when there is none."""
    from bsym.errors import BsymError

    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return None
    try:
        text = sidecar.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise BsymError(f"{sidecar}: cannot read the recorded checksum ({err.strerror or err}). "
                        "Fix: make the file readable") from None
    digest = (text.split() or [""])[0].lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise BsymError(f"{sidecar}: not a SHA-256 record: expected one `sha256sum` line "
                        f"(64 hex digits, two spaces, {Path(path).name}), received "
                        f"{text[:60]!r}. Fix: restore it from where the file came from")
    return digest


def read_verified(path, *, what, fix):
    """``(bytes, digest)`` of ``path`` read once, checked against its recorded SHA-256.

    Parsing the returned bytes (rather than reading the file again) means what is used is
    exactly what was checked. ``digest`` is None when no record exists. Raises
    :class:`~bsym.errors.BsymError` naming the file when a byte changed since the record was
    written; ``fix`` is the advice for that case.
    """
    from bsym.errors import BsymError

    expected = recorded_checksum(path)
    data = Path(path).read_bytes()
    if expected is None:
        return data, None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise BsymError(
            f"{path}: checksum mismatch: the file changed since bsym wrote it ({what}; "
            f"SHA-256 {actual[:12]}..., {checksum_path(path).name} records "
            f"{expected[:12]}...), so it is corrupt or was edited. Fix: {fix}")
    return data, actual


@contextlib.contextmanager
def atomic_checksummed_path(path, *, what="the output"):
    """:func:`atomic_path` that also records the new file's SHA-256 in ``<file>.sha256``.

    The sidecar is written (atomically) after the whole file and before the file is
    renamed into place; on any error neither the old file nor its old sidecar change.
    """
    path = Path(path)
    with atomic_path(path, what=what) as tmp:
        yield tmp
        with open(tmp, "rb+") as handle:  # on disk (a full disk said so) before its record
            os.fsync(handle.fileno())
        write_checksum(path, file_sha256(tmp), what=what)
