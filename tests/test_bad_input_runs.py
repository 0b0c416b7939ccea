"""The bad-input catalogue of pretraining runs, checkpoints and embedding caches, through
the real CLI.

One small pretraining run (BrainLM, tiny, 4 steps), its embeddings and three stores are
made once for the module and never written to. Each case copies what it damages into its
own folder, runs ``bsym pretrain | embed | probe | health | finetune`` and checks: exit
status 2, one ``bsym: error:`` line naming the file and the fix, and that nothing that
existed before changed (every file hashed before and after; no new file either).

Beside the catalogue: a full disk during a checkpoint or embeddings write (a small tmpfs
where mounting is permitted, and an injected ``ENOSPC`` that always runs) leaves the
previous file intact and loadable and no temporary file behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from bsym.cli import main
from bsym.evaluate.embeddings import load_embeddings
from bsym.io import checksum_path, file_sha256
from bsym.testing import write_toy_store
from bsym.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

torch.set_num_threads(1)

QUIET = ["--no-tracking", "--quiet", "--device", "cpu"]
PRETRAIN = ["pretrain", "--model", "brainlm", "--window", "20", "--steps", "4",
            "--batch-size", "4", "--warmup-steps", "0", "--checkpoint-every", "2", *QUIET]


def _snapshot(*roots) -> dict:
    """Every path under ``roots``: file hashes, link targets, folders."""
    found = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.is_symlink():
                found[str(path)] = ("link", os.readlink(path))
            elif path.is_file():
                found[str(path)] = file_sha256(path)
            else:
                found[str(path)] = "folder"
    return found


def _flip(path, n=64):
    """Invert ``n`` bytes in the middle of ``path``."""
    data = bytearray(Path(path).read_bytes())
    middle = len(data) // 2
    data[middle:middle + n] = bytes(b ^ 0xFF for b in data[middle:middle + n])
    Path(path).write_bytes(bytes(data))


def _copy_run(world, dest, *, finished=True):
    run = Path(shutil.copytree(world.run, dest))
    if not finished:  # an interrupted run: no final weights yet
        (run / "final.pt").unlink()
        checksum_path(run / "final.pt").unlink()
    return run


class World:
    """The module's stores, pretraining run and embeddings (read only)."""

    def __init__(self, root):
        self.root = root
        self.store = write_toy_store(root / "store8", n_subjects=6, n_rois=8).path
        self.store10 = write_toy_store(root / "store10", n_subjects=6, n_rois=10).path
        self.short = write_toy_store(root / "short", n_subjects=6, n_rois=8,
                                     n_timepoints=15).path
        self.run = root / "run"
        assert main([*PRETRAIN, "--data", str(self.store), "--out", str(self.run)]) == 0
        self.final = self.run / "final.pt"
        self.emb = root / "emb.npz"
        assert main(["embed", "--checkpoint", str(self.final), "--data", str(self.store),
                     "--out", str(self.emb), "--quiet"]) == 0
        self.emb_dir = root / "emb_run"
        assert main(["embed", "--run", str(self.run), "--data", str(self.store), "--out",
                     str(self.emb_dir), "--quiet"]) == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return World(tmp_path_factory.mktemp("runs_world"))


# -- the cases: (world, tmp) -> (argv, file named in the message, words of the fix) ------
def _flipped_checkpoint(w, tmp):
    run = _copy_run(w, tmp / "run")
    _flip(run / "final.pt")
    return (["embed", "--checkpoint", str(run / "final.pt"), "--data", str(w.store), "--out",
             str(tmp / "e.npz"), "--quiet"], run / "final.pt", "rerun `bsym pretrain`")


def _flipped_snapshot(w, tmp):
    run = _copy_run(w, tmp / "run")
    snapshot = run / "snapshots" / "step-00000000.pt"
    _flip(snapshot)
    return (["embed", "--run", str(run), "--data", str(w.store), "--out", str(tmp / "emb"),
             "--quiet"], snapshot, "rerun `bsym pretrain`")


def _flipped_resume_checkpoint(w, tmp):
    run = _copy_run(w, tmp / "run", finished=False)
    latest = latest_checkpoint(run)
    _flip(latest)
    return ([*PRETRAIN, "--data", str(w.store), "--out", str(run), "--resume"], latest,
            "move it and its .sha256 file out of")


def _flipped_embeddings(w, tmp):
    emb = Path(shutil.copy(w.emb, tmp / "emb.npz"))
    shutil.copy(checksum_path(w.emb), checksum_path(emb))
    _flip(emb, n=16)
    return (["probe", "--embeddings", str(emb), "--data", str(w.store), "--task", "age",
             "--splits", str(tmp / "splits.json"), "--results", str(tmp / "r.parquet"),
             "--allow-pretrained-subjects", "--no-tracking", "--quiet"], emb, "--force")


def _flipped_snapshot_embeddings(w, tmp):
    folder = Path(shutil.copytree(w.emb_dir, tmp / "emb"))
    _flip(folder / "step0.npz", n=16)
    return (["probe", "--embeddings", str(folder), "--data", str(w.store), "--task", "age",
             "--splits", str(tmp / "splits.json"), "--results", str(tmp / "r.parquet"),
             "--allow-pretrained-subjects", "--no-tracking", "--quiet"],
            folder / "step0.npz", "rerun `bsym embed`")


def _flipped_cache_without_force(w, tmp):
    emb = Path(shutil.copy(w.emb, tmp / "emb.npz"))
    shutil.copy(checksum_path(w.emb), checksum_path(emb))
    _flip(emb, n=16)
    return (["embed", "--checkpoint", str(w.final), "--data", str(w.store), "--out", str(emb),
             "--quiet"], emb, "pass --force to recompute and replace it")


def _flipped_health_embeddings(w, tmp):
    emb = Path(shutil.copy(w.emb, tmp / "emb.npz"))
    shutil.copy(checksum_path(w.emb), checksum_path(emb))
    _flip(emb, n=16)
    return (["health", "--checkpoint", str(w.final), "--data", str(w.store), "--embeddings",
             str(emb), "--out", str(tmp / "health.csv"), "--allow-pretrained-subjects",
             *QUIET], emb, "--force")


def _unrecorded_embeddings(w, tmp):
    emb = Path(shutil.copy(w.emb, tmp / "emb.npz"))  # without its .sha256
    return (["probe", "--embeddings", str(emb), "--data", str(w.store), "--task", "age",
             "--splits", str(tmp / "splits.json"), "--results", str(tmp / "r.parquet"),
             "--allow-pretrained-subjects", "--no-tracking", "--quiet"], emb,
            f"rerun `bsym embed` with --out {emb}")


def _unrecorded_checkpoint(w, tmp):
    ckpt = Path(shutil.copy(w.final, tmp / "model.pt"))  # without its .sha256
    return (["embed", "--checkpoint", str(ckpt), "--data", str(w.store), "--out",
             str(tmp / "e.npz"), "--quiet"], ckpt, "sha256sum model.pt > model.pt.sha256")


def _edited_record(w, tmp):
    run = _copy_run(w, tmp / "run")
    checksum_path(run / "final.pt").write_text("see my notes\n")
    return (["embed", "--checkpoint", str(run / "final.pt"), "--data", str(w.store), "--out",
             str(tmp / "e.npz"), "--quiet"], run / "final.pt.sha256",
            "restore it from where the file came from")


def _roi_mismatch_embed(w, tmp):
    return (["embed", "--checkpoint", str(w.final), "--data", str(w.store10), "--out",
             str(tmp / "e.npz"), "--quiet"], w.final, "8-ROI atlas")


def _roi_mismatch_health(w, tmp):
    return (["health", "--checkpoint", str(w.final), "--data", str(w.store10), "--out",
             str(tmp / "health.csv"), "--allow-pretrained-subjects", *QUIET], w.final,
            f"bsym pretrain --data {w.store10}")


def _roi_mismatch_finetune(w, tmp):
    return (["finetune", "--checkpoint", str(w.final), "--data", str(w.store10), "--task",
             "age", "--splits", str(tmp / "splits.json"), "--results", str(tmp / "r.parquet"),
             "--max-steps", "2", "--allow-pretrained-subjects", "--no-tracking", "--quiet"],
            w.final, "8-ROI atlas")


def _scans_shorter_than_the_window(w, tmp):
    return (["embed", "--checkpoint", str(w.final), "--data", str(w.short), "--out",
             str(tmp / "e.npz"), "--quiet"], w.short, "shorter --window")


def _other_model_on_resume(w, tmp):
    run = _copy_run(w, tmp / "run", finished=False)
    argv = [*PRETRAIN, "--data", str(w.store), "--out", str(run), "--resume"]
    argv[argv.index("brainlm")] = "brainmass"
    return argv, latest_checkpoint(run), "--model brainlm --preset tiny"


def _other_window_on_resume(w, tmp):
    run = _copy_run(w, tmp / "run", finished=False)
    argv = [*PRETRAIN, "--data", str(w.store), "--out", str(run), "--resume"]
    argv[argv.index("20")] = "40"
    return argv, latest_checkpoint(run), "use the --window the checkpoint was made with"


def _random_bytes_as_checkpoint(w, tmp):
    path = tmp / "random.pt"
    path.write_bytes(os.urandom(4096))
    return (["embed", "--checkpoint", str(path), "--data", str(w.store), "--out",
             str(tmp / "e.npz"), "--quiet"], path, "give a checkpoint written by bsym")


def _text_as_checkpoint(w, tmp):
    path = tmp / "notes.pt"
    path.write_text("my notes, not weights\n")
    return (["embed", "--checkpoint", str(path), "--data", str(w.store), "--out",
             str(tmp / "e.npz"), "--quiet"], path, "give a checkpoint written by bsym")


def _empty_checkpoint(w, tmp):
    path = tmp / "empty.pt"
    path.write_bytes(b"")
    return (["finetune", "--checkpoint", str(path), "--data", str(w.store), "--task", "age",
             "--splits", str(tmp / "splits.json"), "--results", str(tmp / "r.parquet"),
             "--no-tracking", "--quiet"], path, "give a checkpoint written by bsym")


def _embeddings_as_checkpoint(w, tmp):
    return (["health", "--checkpoint", str(w.emb), "--data", str(w.store), "--out",
             str(tmp / "health.csv"), "--allow-pretrained-subjects", *QUIET], w.emb,
            "give a checkpoint written by bsym")


def _folder_without_final(w, tmp):
    run = _copy_run(w, tmp / "run", finished=False)
    return (["embed", "--checkpoint", str(run), "--data", str(w.store), "--out",
             str(tmp / "e.npz"), "--quiet"], run, "it holds no final.pt")


def _run_without_final(w, tmp):
    run = _copy_run(w, tmp / "run", finished=False)
    return (["embed", "--run", str(run), "--data", str(w.store), "--out", str(tmp / "emb"),
             "--quiet"], run, "--resume")


def _user_folder_as_run(w, tmp):
    folder = tmp / "thesis"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "notes.txt").write_text("chapter 3\n")
    (folder / "checkpoints" / "step-00000002.pt").write_bytes(b"my own file")
    return ([*PRETRAIN, "--data", str(w.store), "--out", str(folder), "--resume"], folder,
            "choose a new or empty --out folder")


def _user_file_as_run(w, tmp):
    path = tmp / "results.csv"
    path.write_text("a,b\n1,2\n")
    return ([*PRETRAIN, "--data", str(w.store), "--out", str(path)], path,
            "choose a new or empty --out folder")


def _run_under_a_file(w, tmp):
    path = tmp / "results.csv"
    path.write_text("a,b\n1,2\n")
    return ([*PRETRAIN, "--data", str(w.store), "--out", str(path / "run")], path,
            "folder you can write to")


def _user_file_as_embeddings(w, tmp):
    path = tmp / "features.npz"
    path.write_bytes(b"PK\x03\x04 not ours")
    return (["embed", "--checkpoint", str(w.final), "--data", str(w.store), "--out", str(path),
             "--force", "--quiet"], path, "choose another --out file")


def _user_folder_as_embeddings(w, tmp):
    folder = tmp / "analysis"
    folder.mkdir()
    (folder / "final.npz").write_bytes(b"my own final.npz")
    return (["embed", "--run", str(w.run), "--data", str(w.store), "--out", str(folder),
             "--force", "--quiet"], folder, "choose a new or empty --out folder")


CHECKSUM = "checksum mismatch: the file changed since bsym wrote it"
NOT_A_CHECKPOINT = "cannot be read, the file is truncated or corrupt"
ROIS = "the checkpoint was trained on 8 ROIs, but the store"
NOT_OURS = "exists and is not a"

#: name -> (case, words of the cause in the message)
CASES = {
    "checkpoint with 64 flipped bytes": (_flipped_checkpoint, CHECKSUM),
    "snapshot with flipped bytes (embed --run)": (_flipped_snapshot, CHECKSUM),
    "resumed checkpoint with flipped bytes": (_flipped_resume_checkpoint, CHECKSUM),
    "embeddings with flipped bytes (probe)": (_flipped_embeddings, CHECKSUM),
    "snapshot embeddings with flipped bytes (probe folder)": (_flipped_snapshot_embeddings,
                                                              CHECKSUM),
    "embeddings cache with flipped bytes (embed)": (_flipped_cache_without_force, CHECKSUM),
    "embeddings with flipped bytes (health)": (_flipped_health_embeddings, CHECKSUM),
    "embeddings without recorded hash": (_unrecorded_embeddings, "no recorded SHA-256"),
    "checkpoint without recorded hash": (_unrecorded_checkpoint, "no recorded SHA-256"),
    "checkpoint record edited": (_edited_record, "not a SHA-256 record"),
    "8-ROI checkpoint on a 10-ROI store: embed": (_roi_mismatch_embed, ROIS),
    "8-ROI checkpoint on a 10-ROI store: health": (_roi_mismatch_health, ROIS),
    "8-ROI checkpoint on a 10-ROI store: finetune": (_roi_mismatch_finetune, ROIS),
    "scans shorter than the checkpoint's window": (_scans_shorter_than_the_window,
                                                   "the checkpoint takes 20-point windows"),
    "resume as another model": (_other_model_on_resume, "checkpoint is for model 'brainlm'"),
    "resume with another window": (_other_window_on_resume,
                                   "checkpoint expects 20 time points (window); the data gives 40"),
    "random bytes as checkpoint": (_random_bytes_as_checkpoint, NOT_A_CHECKPOINT),
    "text file as checkpoint": (_text_as_checkpoint, NOT_A_CHECKPOINT),
    "empty file as checkpoint": (_empty_checkpoint, NOT_A_CHECKPOINT),
    "embeddings .npz as checkpoint": (_embeddings_as_checkpoint, NOT_A_CHECKPOINT),
    "folder without final.pt as checkpoint": (_folder_without_final,
                                              "is a folder, expected a checkpoint file"),
    "run without final.pt (embed --run)": (_run_without_final, "no final.pt"),
    "user folder as run directory (--resume)": (_user_folder_as_run, NOT_OURS),
    "user file as run directory": (_user_file_as_run, NOT_OURS),
    "run directory under a file": (_run_under_a_file, "is a file, not a folder"),
    "user file as embeddings (--force)": (_user_file_as_embeddings, NOT_OURS),
    "user folder as embeddings folder (--force)": (_user_folder_as_embeddings, NOT_OURS),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_run_input_fails_cleanly(world, tmp_path, capsys, case):
    build, cause = CASES[case]
    argv, named, fix = build(world, tmp_path)
    capsys.readouterr()
    before = _snapshot(world.root, tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bsym: error: "), err
    assert "Traceback" not in err
    assert str(named) in err, f"{named} not named in {err!r}"
    assert cause in err.split("Fix:", 1)[0], err
    assert "Fix:" in err and fix in err.split("Fix:", 1)[1], err
    assert _snapshot(world.root, tmp_path) == before, "something that existed changed"


@pytest.mark.parametrize("change, fix", [
    (("--model", "transformer"), "bsym supervised"),
    (("--batch-size", "500"), "--batch-size) of at most"),
    (("--stage-steps", "encoder=2"), "--stage-steps"),
])
def test_impossible_pretraining_requests_are_usage_errors(world, tmp_path, capsys, change, fix):
    argv = [*PRETRAIN, "--data", str(world.store), "--out", str(tmp_path / "run")]
    option, value = change
    if option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv += [option, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bsym: error: ") and "Fix:" in err and fix in err, err
    assert not (tmp_path / "run").exists()


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 14


def test_the_world_is_valid(world, capsys):
    """The untouched run and embeddings verify and are used (the cases fail for their
    damage, not for the fixture's)."""
    load_checkpoint(world.final)
    for _, path in list_checkpoints(world.run):
        load_checkpoint(path)
    load_embeddings(world.emb)
    assert main(["embed", "--checkpoint", str(world.final), "--data", str(world.store),
                 "--out", str(world.emb), "--quiet"]) == 0
    assert "reused" in capsys.readouterr().out


# -- a full disk ------------------------------------------------------------------------------
def _fsync_fails_for(monkeypatch, marker):
    """Make ``os.fsync`` raise ENOSPC for files whose name contains ``marker`` (the disk
    fills exactly when that file is written)."""
    real = os.fsync

    def fsync(fd):
        if marker in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _no_temp_files(root):
    return [p for p in Path(root).rglob(".*.tmp")]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_injected_full_disk_during_a_checkpoint_keeps_the_previous_one(world, tmp_path,
                                                                      monkeypatch, capsys):
    out = tmp_path / "run"
    _fsync_fails_for(monkeypatch, ".step-00000004.pt.")
    argv = [*PRETRAIN, "--data", str(world.store), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "step-00000004.pt: could not write the checkpoint: the disk is full" in err
    assert "Fix:" in err and "step-00000002.pt is intact" in err and "--resume" in err
    assert [s for s, _ in list_checkpoints(out)] == [2]
    assert load_checkpoint(out / "checkpoints" / "step-00000002.pt")["step"] == 2
    assert not _no_temp_files(out) and not (out / "final.pt").exists()
    monkeypatch.undo()
    # space again: the run continues from step 2 and ends as an uninterrupted one
    assert main([*argv, "--resume"]) == 0
    _assert_same_weights(out / "final.pt", world.final)


def _assert_same_weights(a, b):
    first, second = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_injected_full_disk_during_an_embeddings_write_keeps_the_previous_file(
        world, tmp_path, monkeypatch, capsys):
    out = Path(shutil.copy(world.emb, tmp_path / "emb.npz"))
    shutil.copy(checksum_path(world.emb), checksum_path(out))
    before = _snapshot(tmp_path)
    _fsync_fails_for(monkeypatch, ".emb.npz.")
    assert main(["embed", "--checkpoint", str(world.final), "--data", str(world.store),
                 "--out", str(out), "--force", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{out}: could not write the embeddings file: the disk is full" in err
    assert "Fix:" in err
    assert _snapshot(tmp_path) == before  # the old file and its record, no temp file
    monkeypatch.undo()
    load_embeddings(out)


def _mount_tmpfs(path, size):
    path.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot mount a tmpfs here ({err}); the injected ENOSPC tests cover it")


def test_full_tmpfs_during_a_checkpoint(world, tmp_path, capsys):
    disk = tmp_path / "disk"
    # the initial snapshot and the step-2 checkpoint fit, the step-4 one does not
    sizes = [p.stat().st_size for p in (world.run / "snapshots" / "step-00000000.pt",
                                        latest_checkpoint(world.run))]
    _mount_tmpfs(disk, sizes[0] + int(1.5 * sizes[1]) + 64 * 1024)
    try:
        out = disk / "run"
        assert main([*PRETRAIN, "--data", str(world.store), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "could not write the checkpoint: the disk is full" in err, err
        assert "step-00000004.pt" in err and "Fix:" in err
        assert [s for s, _ in list_checkpoints(out)] == [2]
        assert load_checkpoint(out / "checkpoints" / "step-00000002.pt")["step"] == 2
        assert not _no_temp_files(disk)
        # the run directory moved to a disk with space resumes, verified
        moved = Path(shutil.copytree(out, tmp_path / "moved"))
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    assert main([*PRETRAIN, "--data", str(world.store), "--out", str(moved), "--resume"]) == 0
    _assert_same_weights(moved / "final.pt", world.final)


def test_full_tmpfs_during_an_embeddings_write(world, tmp_path, capsys):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, 48 * 1024)
    try:
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * (48 * 1024 - 2 * world.emb.stat().st_size // 3))
        out = disk / "emb.npz"
        assert main(["embed", "--checkpoint", str(world.final), "--data", str(world.store),
                     "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{out}: could not write the embeddings file: the disk is full" in err, err
        assert not out.exists() and not _no_temp_files(disk)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
