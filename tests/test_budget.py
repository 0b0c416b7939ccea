"""Fair budgets: random windows over the whole scan, kept snapshots, what a run consumed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from toy_models import make_model

from bsym.data.dataset import WindowDataset
from bsym.data.preprocess import RobustScaler
from bsym.evaluate.embeddings import embed_run, load_embeddings
from bsym.testing import write_structured_store
from bsym.train import TrainConfig, train
from bsym.train.budget import Consumption, steps_for_budget
from bsym.train.checkpoint import list_snapshots, load_checkpoint

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_structured_store(tmp_path_factory.mktemp("budget") / "store", n_timepoints=70)


def _random_set(store, seed=0):
    ds = WindowDataset(store, window=20, sampling="random", seed=seed)
    ds.fit_scaler(RobustScaler())
    return ds


def test_random_windows_reach_the_whole_scan_and_are_reproducible(store):
    ds = _random_set(store)
    assert len(ds) == len(store.scans) * 3                 # as many items as grid windows
    starts = set()
    for epoch in range(40):
        ds.set_epoch(epoch)
        starts |= {ds[i]["start"] for i in range(len(ds))}
    assert min(starts) == 0 and max(starts) == 70 - 20      # the first and the last window
    assert len(starts) > 30                                 # not a fixed grid
    ds.set_epoch(3)
    first = [ds[i]["start"] for i in range(len(ds))]
    ds.set_epoch(4)
    assert first != [ds[i]["start"] for i in range(len(ds))]
    ds.set_epoch(3)
    assert first == [ds[i]["start"] for i in range(len(ds))]
    window = ds[0]
    np.testing.assert_allclose(window["bold"].numpy(), ds.scaler.transform(
        np.asarray(store.bold(window["scan"]))[:, window["start"]:window["start"] + 20].T).T,
        rtol=1e-5)


def test_grid_windows_can_tile_the_whole_scan(store):
    plain = WindowDataset(store, window=20)
    covered = WindowDataset(store, window=20, cover_end=True)
    scan = store.scans[0]
    assert [s for sc, s in plain.index if sc == scan] == [0, 20, 40]
    assert [s for sc, s in covered.index if sc == scan] == [0, 20, 40, 50]


def test_snapshots_and_budget_of_a_run(store, tmp_path):
    ds = _random_set(store)
    config = TrainConfig(steps=8, batch_size=4, lr=1e-2, warmup_steps=2, progress=False,
                         snapshots=(0.0, 0.5), device="cpu")
    result = train(make_model(), ds, config, tmp_path / "run",
                   extra={"scaler": ds.scaler.state_dict()})
    snaps = list_snapshots(tmp_path / "run")
    assert [step for step, _ in snaps] == [0, 4]
    budget = result.budget
    assert budget["steps"] == 8 and budget["samples"] == 32 and budget["timepoints"] == 32 * 20
    assert budget["flops"] > 0 and budget["flops"] == pytest.approx(8 * budget["flops_per_step"]["all"])
    half = load_checkpoint(snaps[1][1])
    assert half["kind"] == "snapshot" and half["budget"]["samples"] == 16
    initial = load_checkpoint(snaps[0][1])
    fresh = make_model()                                     # the same seed: the initial weights
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(initial["state_dict"][key], value)
    made = embed_run(tmp_path / "run", store, tmp_path / "emb", progress=False)
    assert sorted(made) == ["final", "step0", "step4"]
    init = load_embeddings(tmp_path / "emb" / "step0.npz")
    assert init.is_random_init and init.checkpoint_label == "step0"
    final = load_embeddings(tmp_path / "emb" / "final.npz")
    assert not final.is_random_init and final.pretrain["budget"]["samples"] == 32
    assert final.pretrain["fraction"] == 1.0


def test_a_resumed_run_continues_the_count(store, tmp_path):
    ds = _random_set(store)
    config = TrainConfig(steps=8, batch_size=4, lr=1e-2, warmup_steps=2, progress=False,
                         checkpoint_every=3, device="cpu")
    whole = train(make_model(), ds, config, tmp_path / "whole")

    class Stop(Exception):
        pass

    def stop_at_5(info):
        if info.step == 5:
            raise Stop

    with pytest.raises(Stop):
        train(make_model(), ds, config, tmp_path / "cut", callbacks=[stop_at_5])
    resumed = train(make_model(), ds, config, tmp_path / "cut", resume=True)
    assert resumed.budget["samples"] == whole.budget["samples"] == 32
    assert resumed.budget["flops"] == pytest.approx(whole.budget["flops"])
    assert resumed.history["loss"] == pytest.approx(whole.history["loss"])


def test_steps_for_a_budget():
    assert steps_for_budget("timepoints", 6400, batch_size=16, window=40) == 10
    assert steps_for_budget("timepoints", 6401, batch_size=16, window=40) == 11
    assert steps_for_budget("flops", 1e9, batch_size=16, window=40,
                            flops_per_step={"a": 1e8, "b": 3e8}) == 5
    assert steps_for_budget("steps", 2, batch_size=1, window=1, n_stages=3) == 3
    with pytest.raises(ValueError, match="unit must be one of"):
        steps_for_budget("epochs", 1, batch_size=1, window=1)
    with pytest.raises(ValueError, match="FLOPs of a step"):
        steps_for_budget("flops", 1e9, batch_size=1, window=1, flops_per_step={"a": None})


def test_consumption_survives_a_round_trip():
    c = Consumption(flops_per_step={"all": 10.0})
    c.add_step("all", 4, 20)
    back = Consumption.from_dict(c.to_dict())
    assert back == c and back.timepoints == 80 and back.flops == 10.0
    back.add_step("other", 4, 20)                            # uncounted stage: FLOPs unknown
    assert back.flops is None


def test_pretrain_command_matches_a_budget_in_time_points(store, tmp_path, capsys):
    from bsym.cli import main

    out = tmp_path / "run"
    assert main(["pretrain", "--model", "toy-mae", "--data", str(store.path), "--out", str(out),
                 "--budget-timepoints", "1000", "--batch-size", "4", "--window", "20",
                 "--snapshots", "0,0.5", "--no-tracking", "--quiet", "--device", "cpu"]) == 0
    summary = json.loads((out / "run.json").read_text())
    assert summary["steps"] == 13                         # ceil(1000 / (4 x 20))
    assert summary["extra"]["budget_request"] == {"unit": "timepoints", "amount": 1000.0,
                                                  "steps": 13}
    assert summary["budget"]["timepoints"] == 13 * 4 * 20
    assert summary["snapshots"] == ["snapshots/step-00000000.pt", "snapshots/step-00000006.pt"]
    assert summary["data"]["dataset"]["sampling"] == "random"
    assert main(["pretrain", "--model", "toy-mae", "--data", str(store.path), "--out",
                 str(tmp_path / "bad"), "--snapshots", "0,1.5", "--no-tracking"]) == 2
    assert "snapshots are fractions" in capsys.readouterr().err
