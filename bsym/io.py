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


def disk_error(err: OSError, path, *, what="the output"):
    """A :class:`~bsym.errors.BsymError` for an ``OSError`` raised while writing ``path``."""
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
    return BsymError(f"{path}: could not write {what}: {cause}; nothing was replaced. Fix: {fix}")


@contextlib.contextmanager
def atomic_path(path, *, what="the output"):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Write the whole artifact to the yielded path; it is fsynced and renamed over ``path``
    only when the block ends without an error, so ``path`` holds either the old complete
    artifact or the new complete one, never a partial one. An ``OSError`` (a full disk,
    a permission problem) becomes a :class:`~bsym.errors.BsymError` naming ``path``.
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
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        raise disk_error(err, path, what=what) from err
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path, data: bytes, *, what="the output") -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, what=what) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path, text: str, *, what="the output") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), what=what)


def atomic_write_json(path, payload, *, what="the output", indent=1) -> Path:
    """Write ``payload`` as JSON (sorted keys) to ``path`` atomically."""
    text = json.dumps(payload, indent=indent, sort_keys=True, default=str) + "\n"
    return atomic_write_text(path, text, what=what)
