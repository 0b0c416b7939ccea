"""Checkpoints: atomic writes, safe (weights_only) loading, clear errors on bad files."""

from __future__ import annotations

import errno
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_models import make_model

from bsym.data.dataset import WindowDataset
from bsym.errors import BsymError
from bsym.io import checksum_path, file_sha256, write_checksum
from bsym.train import TrainConfig, train
from bsym.train.checkpoint import (
    CheckpointError,
    check_data,
    check_model,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_trained,
    prune_checkpoints,
    save_checkpoint,
    to_plain,
)
from bsym.train.devices import get_rng_state, set_rng_state
from bsym.train.engine import is_run_dir

torch.set_num_threads(1)

CONFIG = {"steps": 4, "batch_size": 4, "warmup_steps": 1, "progress": False,
          "checkpoint_every": 2}


@pytest.fixture
def run_dir(toy_store, tmp_path):
    """A finished 4-step run of the toy model on the shared toy store."""
    out = tmp_path / "run"
    ds = WindowDataset(toy_store, window=20)
    train(make_model(), ds, TrainConfig(**CONFIG), out)
    return out


def test_training_checkpoints_load_with_weights_only(run_dir):
    path = latest_checkpoint(run_dir)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # no extra globals needed
    assert ckpt["format"] == "bsym-checkpoint" and ckpt["step"] == 4
    assert ckpt["model"]["name"] == "toy-mae" and ckpt["model"]["preset"] == "tiny"
    assert ckpt["data"]["n_rois"] == 8 and ckpt["data"]["window"] == 20
    assert len(ckpt["data"]["manifest_hash"]) == 64
    assert set(ckpt["rng"][0]) >= {"torch", "numpy", "python", "generator"}
    assert ckpt["optimizer"]["state"] and ckpt["scheduler"]["step_count"] == 4
    assert ckpt["bsym_version"] and ckpt["config"]["batch_size"] == 4
    model, final = load_trained(run_dir / "final.pt")  # rebuilt through the registry
    assert final["kind"] == "final"
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][key])


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"format": "bsym-checkpoint", "format_version": 1, "x": torch.ones(3)}, path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(fd):  # where a full disk shows up on a delayed-allocation file system
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(BsymError, match="c.pt: could not write the checkpoint: the disk is full"):
        save_checkpoint({"format": "bsym-checkpoint", "x": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))  # the old file is intact
    # no temp file left; the file and its record unchanged
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert sorted(before) == ["c.pt", "c.pt.sha256"]


def test_truncated_and_garbage_files_give_clear_errors(run_dir, tmp_path):
    good = latest_checkpoint(run_dir).read_bytes()
    cut = tmp_path / "truncated.pt"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: cannot be read, the file is "
                       "truncated or corrupt"):
        load_checkpoint(cut)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="junk.pt: cannot be read"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")


class Opaque:
    pass


def test_unsafe_and_foreign_files_are_refused(tmp_path):
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "bsym-checkpoint", "obj": Opaque()}, unsafe)
    with pytest.raises(CheckpointError, match="unsafe.pt: refused by "
                       "torch.load\\(weights_only=True\\)"):
        load_checkpoint(unsafe)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a bsym checkpoint: expected a "
                       "dict with format='bsym-checkpoint', received format=None"):
        load_checkpoint(foreign)
    newer = tmp_path / "newer.pt"
    torch.save({"format": "bsym-checkpoint", "format_version": 99}, newer)
    with pytest.raises(CheckpointError, match="version 99 is newer"):
        load_checkpoint(newer)


def test_corrupt_latest_checkpoint_stops_resume(run_dir, toy_store):
    latest = latest_checkpoint(run_dir)
    (run_dir / "final.pt").unlink()
    latest.write_bytes(latest.read_bytes()[:100])
    ds = WindowDataset(toy_store, window=20)
    with pytest.raises(CheckpointError, match=f"{latest.name}: checksum mismatch: the file "
                       "changed since bsym wrote it.*Fix: restore it.*or move it and its "
                       ".sha256 file out of"):
        train(make_model(), ds, TrainConfig(**CONFIG), run_dir, resume=True)


def test_model_and_data_checks_name_expected_and_received(run_dir):
    path = latest_checkpoint(run_dir)
    ckpt = load_checkpoint(path)
    check_model(ckpt, make_model(), path)
    with pytest.raises(CheckpointError, match="mask_rois: checkpoint \\(absent\\), expected 3"):
        check_model(ckpt, make_model(mask_rois=3), path)
    other = make_model()
    other.name = "brainsymphony"
    with pytest.raises(CheckpointError, match="checkpoint is for model 'toy-mae' \\(preset "
                       "'tiny'\\); expected model 'brainsymphony'"):
        check_model(ckpt, other, path)
    with pytest.raises(CheckpointError, match="expects 8 ROIs \\(n_rois\\); the data gives 94"):
        check_data(ckpt, path, n_rois=94, window=20)
    with pytest.raises(CheckpointError, match="manifest"):
        check_data(ckpt, path, manifest_hash="0" * 64)
    altered = make_model()
    altered.decoder = torch.nn.Linear(16, 7)  # same name, preset and config; other shapes
    with pytest.raises(CheckpointError, match="final.pt: weights do not fit model 'toy-mae'"):
        load_trained(run_dir / "final.pt", altered)


def test_plain_data_only(tmp_path):
    plain = to_plain({"a": np.float32(1.5), "b": np.arange(3), "c": (1, [2, None]),
                      "d": tmp_path})
    assert plain["a"] == 1.5 and isinstance(plain["a"], float)
    assert torch.equal(plain["b"], torch.arange(3))
    assert plain["d"] == str(tmp_path)
    with pytest.raises(TypeError, match="checkpoint\\['x'\\]\\['y'\\] is a Opaque"):
        to_plain({"x": {"y": Opaque()}})
    with pytest.raises(TypeError, match="is a Opaque"):
        save_checkpoint({"format": "bsym-checkpoint", "o": Opaque()}, tmp_path / "o.pt")
    assert not list(tmp_path.glob("*.pt"))


def test_rng_states_round_trip_through_a_safe_load(tmp_path):
    gen = torch.Generator().manual_seed(7)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint({"format": "bsym-checkpoint", "format_version": 1,
                     "rng": get_rng_state(gen)}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=gen))
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"], gen)
    again = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=gen))
    assert expected[:2] == again[:2]
    assert torch.equal(expected[2], again[2]) and torch.equal(expected[3], again[3])


def test_prune_keeps_the_newest(tmp_path):
    for step in (1, 2, 10, 3):
        save_checkpoint({"format": "bsym-checkpoint", "step": step},
                        tmp_path / "checkpoints" / f"step-{step:08d}.pt")
    removed = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == ["step-00000001.pt", "step-00000002.pt"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 10]
    assert latest_checkpoint(tmp_path).name == "step-00000010.pt"


# -- recorded SHA-256 -------------------------------------------------------------------------
def _flip(path, n=64):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + n] = bytes(b ^ 0xFF for b in data[middle:middle + n])
    path.write_bytes(bytes(data))


def test_every_checkpoint_has_its_sha256_recorded_and_checked(run_dir):
    files = [run_dir / "final.pt"] + [p for _, p in list_checkpoints(run_dir)]
    for path in files:
        assert checksum_path(path).read_text() == f"{file_sha256(path)}  {path.name}\n"
    final = run_dir / "final.pt"
    _flip(final)
    with pytest.raises(CheckpointError, match="final.pt: checksum mismatch: the file changed "
                       "since bsym wrote it.*Fix: restore it"):
        load_checkpoint(final)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_trained(final)


def test_a_run_directory_copied_elsewhere_still_verifies_and_resumes(run_dir, toy_store,
                                                                    tmp_path):
    import shutil

    moved = shutil.copytree(run_dir, tmp_path / "elsewhere" / "run")
    (moved / "final.pt").unlink()  # resume from the newest periodic checkpoint
    checksum_path(moved / "final.pt").unlink()
    ds = WindowDataset(toy_store, window=20)
    result = train(make_model(), ds, TrainConfig(**CONFIG), moved, resume=True)
    assert result.resumed_from.name == "step-00000004.pt"
    assert load_checkpoint(moved / "final.pt")["step"] == 4


def test_a_checkpoint_without_its_record_is_refused_until_recorded(run_dir, tmp_path):
    import shutil
    import subprocess

    copy = Path(shutil.copy(run_dir / "final.pt", tmp_path / "model.pt"))
    with pytest.raises(CheckpointError, match="model.pt: no recorded SHA-256 \\(model.pt.sha256 "
                       "is missing.*Fix: restore model.pt.sha256.*`sha256sum model.pt > "
                       "model.pt.sha256`"):
        load_checkpoint(copy)
    if shutil.which("sha256sum"):  # the fix the message gives works as written
        with open(checksum_path(copy), "w") as handle:
            subprocess.run(["sha256sum", "model.pt"], cwd=tmp_path, stdout=handle, check=True)
    else:
        write_checksum(copy)
    assert load_checkpoint(copy)["kind"] == "final"


def test_prune_removes_the_records_too(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint({"format": "bsym-checkpoint", "step": step},
                        tmp_path / "checkpoints" / f"step-{step:08d}.pt")
    prune_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000003.pt", "step-00000003.pt.sha256"]


def test_what_counts_as_a_run_directory(run_dir, tmp_path):
    assert is_run_dir(run_dir)
    assert json.loads((run_dir / "run.json").read_text())["format"] == "bsym-run"
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    assert not is_run_dir(user) and not is_run_dir(tmp_path / "absent")
    older = tmp_path / "older"  # a run of an older bsym stopped before its summary
    (older / "checkpoints").mkdir(parents=True)
    (older / "checkpoints" / "step-00000002.pt").write_bytes(b"x")
    assert is_run_dir(older)
    (older / "notes.txt").write_text("mine")
    assert not is_run_dir(older)


def test_a_run_never_writes_into_a_users_folder(toy_store, tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    ds = WindowDataset(toy_store, window=20)
    for resume in (False, True):
        with pytest.raises(BsymError, match="user: this folder exists and is not a run "
                           "directory written by bsym.*Fix: choose a new or empty --out"):
            train(make_model(), ds, TrainConfig(**CONFIG), user, resume=resume)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    train(make_model(), ds, TrainConfig(**CONFIG), empty)
    assert is_run_dir(empty)


def test_a_checkpoint_of_a_model_not_installed_is_a_clear_error(tmp_path):
    path = tmp_path / "final.pt"
    save_checkpoint({"format": "bsym-checkpoint", "format_version": 1,
                     "model": {"name": "not-installed", "preset": "tiny", "config": {}},
                     "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="final.pt: cannot rebuild the checkpoint's model: "
                       "unknown model 'not-installed'.*Fix: install"):
        load_trained(path)
    save_checkpoint({"format": "bsym-checkpoint", "format_version": 1,
                     "model": {"name": "toy-mae", "preset": "tiny", "config": {"depth": 3}},
                     "state_dict": {}, "bsym_version": "9.9"}, path)
    with pytest.raises(CheckpointError, match="cannot rebuild model 'toy-mae' from the "
                       "checkpoint's config.*Fix: use the bsym version that wrote it \\(9.9\\)"):
        load_trained(path)
