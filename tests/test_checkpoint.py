"""Checkpoints: atomic writes, safe (weights_only) loading, clear errors on bad files."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from toy_models import make_model

from bsym.data.dataset import WindowDataset
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

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": "bsym-checkpoint", "x": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left


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
    with pytest.raises(CheckpointError, match=f"{latest.name}: cannot be read"):
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
