"""The bad-input catalogue of store outputs and damaged stores, through the real CLI.

Output cases put something at ``--out`` (a user's folder, a file, a symlink, a store,
a full or read-only disk) and run ``bsym data simulate`` and ``bsym data import folder``:
anything bsym did not write survives byte for byte, a store is replaced only with
``--overwrite`` and only whole, and no temporary folder is left behind.

Damage cases change one byte (or truncate, delete, edit) one file of a valid store and
run ``bsym data info`` and ``bsym data validate``: each exits 2 naming the file and the
fix, and changes nothing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from _builders import write_folder

import bsym.data.store as store_module
from bsym.cli import main
from bsym.data import open_cohort
from bsym.io import file_sha256

TINY = ["--subjects", "4", "--rois", "6", "--networks", "2", "--timepoints", "60",
        "--sessions", "1", "--quiet"]


def _snapshot(root) -> dict:
    """Every path under ``root`` (hidden ones too): file hashes, link targets, folders."""
    root = Path(root)
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_file():
            found[rel] = file_sha256(path)
        else:
            found[rel] = "folder"
    return found


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.fixture(params=["simulate", "import"])
def command(request, tmp_path):
    """``command(out, *extra)``: the argv that writes a store at ``out``."""
    folder = write_folder(tmp_path / "input", n_rois=6, n_time=40)

    def argv(out, *extra):
        if request.param == "simulate":
            return ["data", "simulate", *TINY, "--out", str(out), *extra]
        return ["data", "import", "folder", str(folder), "--quiet", "--out", str(out), *extra]

    argv.name = request.param
    return argv


def _user_folder(path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "scan.npy").write_bytes(b"\x93NUMPY user bytes")
    (path / "sub").mkdir()
    (path / "sub" / "table.csv").write_text("a,b\n1,2\n")
    return path


def _old_store(path, capsys):
    """A store written by another command, so that its content differs from any new one."""
    assert main(["data", "simulate", *TINY, "--seed", "7", "--out", str(path)]) == 0
    capsys.readouterr()
    return path


# -- what is at --out ---------------------------------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_a_users_folder_is_never_replaced(tmp_path, capsys, command, overwrite):
    work = tmp_path / "work"
    out = _user_folder(work / "out")
    before = _snapshot(work)
    code, err = _run(command(out, *(["--overwrite"] if overwrite else [])), capsys)
    assert code == 2, err
    assert f"{out}: this folder exists and is not a cohort store written by bsym" in err
    assert "with or without --overwrite" in err and "Fix: choose another --out path" in err
    assert _snapshot(work) == before


def test_a_file_at_out_is_never_replaced(tmp_path, capsys, command):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "results.csv"
    out.write_text("subject,score\ns1,3\n")
    before = _snapshot(work)
    code, err = _run(command(out, "--overwrite"), capsys)
    assert code == 2, err
    assert f"{out}: this file exists and is not a cohort store" in err and "Fix:" in err
    assert _snapshot(work) == before


def test_a_symlink_at_out_is_never_followed_or_replaced(tmp_path, capsys, command):
    work = tmp_path / "work"
    target = _user_folder(work / "elsewhere")
    (work / "out").symlink_to(target)
    before = _snapshot(work)
    code, err = _run(command(work / "out", "--overwrite"), capsys)
    assert code == 2, err
    assert "is not a cohort store written by bsym" in err and "Fix:" in err
    assert _snapshot(work) == before


def test_an_empty_folder_is_filled(tmp_path, capsys, command):
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    code, err = _run(command(work / "out"), capsys)
    assert code == 0, err
    open_cohort(work / "out", verify=True)
    assert [p.name for p in work.iterdir()] == ["out"]


def test_an_existing_store_needs_overwrite(tmp_path, capsys, command):
    work = tmp_path / "work"
    out = _old_store(work / "out", capsys)
    before = _snapshot(work)
    code, err = _run(command(out), capsys)
    assert code == 2, err
    assert f"{out}: a cohort store written by bsym already exists here" in err
    assert "Fix: pass --overwrite to replace it" in err
    assert _snapshot(work) == before


def test_overwrite_replaces_a_store_whole(tmp_path, capsys, command):
    work = tmp_path / "work"
    out = _old_store(work / "out", capsys)
    old_hash = open_cohort(out).manifest_hash
    code, err = _run(command(out, "--overwrite"), capsys)
    assert code == 0, err
    new = open_cohort(out, verify=True)
    assert new.manifest_hash != old_hash
    assert new.manifest["source"]["name"] == ("simulated" if command.name == "simulate"
                                              else "folder")
    if command.name == "import":  # the old store's lengths/ is gone with it
        assert not (out / "lengths").exists()
    assert [p.name for p in work.iterdir()] == ["out"]  # no hidden old or partial folder


def test_a_store_holding_user_files_is_never_replaced(tmp_path, capsys, command):
    work = tmp_path / "work"
    out = _old_store(work / "out", capsys)
    (out / "bold" / "my_notes.md").write_text("do not lose me\n")
    before = _snapshot(work)
    code, err = _run(command(out, "--overwrite"), capsys)
    assert code == 2, err
    assert f"{out}: this cohort store also holds bold/my_notes.md, which bsym did not" in err
    assert "Fix: move those files out of the store" in err
    assert _snapshot(work) == before


def test_a_parent_that_is_a_file_is_refused_before_work(tmp_path, capsys, command):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine\n")
    before = _snapshot(work)
    code, err = _run(command(work / "notes.txt" / "cohort"), capsys)
    assert code == 2, err
    assert "notes.txt is a file, not a folder" in err and "Fix:" in err
    assert _snapshot(work) == before


@pytest.fixture
def mount(tmp_path):
    """``mount(options) -> folder``: a tmpfs mounted for the test, or a skip."""
    mounted = []

    def make(options):
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not root'})")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def test_an_unwritable_parent_is_refused_before_work(tmp_path, capsys, command, mount):
    readonly = mount("ro,size=64k")
    code, err = _run(command(readonly / "cohort"), capsys)
    assert code == 2, err
    assert f"{readonly / 'cohort'}: cannot write here, {readonly} is not writable" in err
    assert "Fix:" in err
    assert list(readonly.iterdir()) == []


def _fill(folder, leave):
    """Fill the file system of ``folder`` up to ``leave`` free bytes with a ballast file."""
    free = shutil.disk_usage(folder).free
    (folder / "ballast.bin").write_bytes(b"\0" * max(free - leave, 0))


@pytest.mark.parametrize("previous", [False, True], ids=["new", "replacing"])
def test_a_full_disk_keeps_the_previous_state(tmp_path, capsys, command, mount, previous):
    disk = mount("size=512k")
    out = disk / "cohort"
    if previous:
        _old_store(out, capsys)
    _fill(disk, leave=8192)
    before = _snapshot(disk)
    code, err = _run(command(out, "--overwrite"), capsys)
    assert code == 2, err
    assert f"{out}: could not write the cohort store: the disk is full" in err
    assert "Fix: free space" in err
    assert _snapshot(disk) == before  # the old store as it was, no partial folder


@pytest.fixture(params=["array", "table"])
def full_disk(request, monkeypatch):
    """``full_disk()``: from now on the store writer hits ENOSPC on its third array file,
    or on its first table."""
    def arm():
        if request.param == "array":
            real_open, calls = open, []

            def open_(file, mode="r", *args, **kwargs):
                if "w" in mode and str(file).endswith(".npy"):
                    calls.append(file)
                    if len(calls) == 3:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
                return real_open(file, mode, *args, **kwargs)

            monkeypatch.setattr(store_module, "open", open_, raising=False)
        else:
            def to_parquet(*args, **kwargs):
                raise OSError(errno.ENOSPC, "Error writing bytes to file: No space left on device")

            monkeypatch.setattr("pandas.DataFrame.to_parquet", to_parquet)

    return arm


def test_an_injected_full_disk_keeps_the_previous_store(tmp_path, capsys, command, full_disk):
    work = tmp_path / "work"
    out = _old_store(work / "out", capsys)
    before = _snapshot(work)
    full_disk()
    code, err = _run(command(out, "--overwrite"), capsys)
    assert code == 2, err
    assert f"{out}: could not write the cohort store: the disk is full" in err
    assert _snapshot(work) == before
    open_cohort(out, verify=True)


def test_a_failed_final_rename_puts_the_old_store_back(tmp_path, capsys, command,
                                                        monkeypatch):
    work = tmp_path / "work"
    out = _old_store(work / "out", capsys)
    before = _snapshot(work)
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".out.partial-"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", replace)
    code, err = _run(command(out, "--overwrite"), capsys)
    assert code == 2, err
    assert f"{out}: could not write the cohort store" in err and "nothing was replaced" in err
    assert _snapshot(work) == before


def test_an_interrupted_replacement_says_where_the_old_store_is(tmp_path, capsys):
    work = tmp_path / "work"
    out = _old_store(work / "out", capsys)
    out.rename(work / ".out.old-1a2b3c4d")  # killed between the two renames
    code, err = _run(["data", "info", str(out)], capsys)
    assert code == 2, err
    assert ".out.old-1a2b3c4d" in err and f"Fix: rename {work / '.out.old-1a2b3c4d'} to {out}" in err


# -- damaged stores -----------------------------------------------------------------------
@pytest.fixture(scope="module", params=["simulate", "import"])
def pristine(request, tmp_path_factory):
    """A valid store written by each command (once per module): copy it, never edit it."""
    root = tmp_path_factory.mktemp(f"pristine-{request.param}")
    if request.param == "simulate":
        argv = ["data", "simulate", *TINY]
    else:
        argv = ["data", "import", "folder", str(write_folder(root / "input", n_rois=6, n_time=40)),
                "--quiet"]
    assert main([*argv, "--out", str(root / "store")]) == 0
    return root / "store"


def _flip(path, at=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_manifest(path):
    manifest = json.loads(path.read_text())
    manifest["n_subjects"] += 1  # valid JSON, plausible value
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _first(store, folder):
    return sorted((store / folder).iterdir())[0]


DAMAGE = {
    # name: (damage(store) -> the damaged file, what the message says)
    "flipped bold byte": (lambda s: _flip(_first(s, "bold"), 0.8) or _first(s, "bold"),
                          "checksum differs from the manifest"),
    "flipped SC byte": (lambda s: _flip(_first(s, "sc"), 0.8) or _first(s, "sc"),
                        "checksum differs from the manifest"),
    "flipped subjects-table byte": (lambda s: _flip(s / "subjects.parquet") or
                                    s / "subjects.parquet", "does not match its manifest checksum"),
    "flipped ROI-table byte": (lambda s: _flip(s / "rois.parquet") or s / "rois.parquet",
                               "does not match its manifest checksum"),
    "flipped manifest byte": (lambda s: _flip(s / "manifest.json", 0.3) or s / "manifest.json",
                              "manifest"),
    "edited manifest value": (lambda s: _edit_manifest(s / "manifest.json") or
                              s / "manifest.json", "does not match its content_sha256"),
    "truncated bold array": (lambda s: _truncate(_first(s, "bold")),
                             "truncated"),
    "deleted SC array": (lambda s: _first(s, "sc").unlink() or s / "sc" / "000000.npy",
                         "file is missing"),
}


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-7])
    return path


@pytest.mark.parametrize("reader", ["info", "validate"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_store_is_an_error_naming_the_file(tmp_path, capsys, pristine, damage,
                                                     reader):
    store = shutil.copytree(pristine, tmp_path / "store")
    damage_fn, problem = DAMAGE[damage]
    damaged = damage_fn(store)
    before = _snapshot(store)
    code, err = _run(["data", reader, str(store), *(["--quiet"] if reader == "validate" else [])],
                     capsys)
    assert code == 2, err
    assert err.startswith("bsym: error: ") and err.count("\n") == 1, err
    assert str(damaged) in err, err
    assert problem in err and "Fix:" in err, err
    assert "restore" in err or "re-create" in err, err
    assert _snapshot(store) == before
