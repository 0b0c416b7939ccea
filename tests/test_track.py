"""MLflow tracking against a real SQLite store (no mocks)."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys

import pytest

from bsym.track import NullTracker, Tracker, flatten


def uri_of(tmp_path):
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One store for the module: creating MLflow's tables takes seconds."""
    return uri_of(tmp_path_factory.mktemp("tracking"))


def client_for(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_flatten_nested_params():
    flat = flatten({"train": {"lr": 1e-3, "betas": (0.9, 0.99)}, "model": "x", "n": None})
    assert flat == {"train.lr": "0.001", "train.betas": "[0.9, 0.99]", "model": "x",
                    "n": "None"}
    assert len(flatten({"long": "x" * 7000})["long"]) == 6000


def test_runs_params_metrics_tags_and_artifacts_round_trip(uri, tmp_path):
    tracker = Tracker(uri, experiment="unit")
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with tracker.start_run("first", tags={"model": "toy"}) as run_id:
        assert tracker.run_id == run_id
        tracker.log_params({"train": {"lr": 0.01, "steps": 3}, "seed": 0})
        for step in range(3):
            tracker.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.01}, step=step)
        tracker.set_tags({"data.manifest_hash": "abc"})
        tracker.log_artifact(note)
        with tracker.start_run("child", nested=True) as child_id:
            tracker.log_metrics({"inner": 1.0})
        with pytest.raises(RuntimeError, match="nested=True"), tracker.start_run("second"):
            pass
    assert tracker.run_id is None

    client = client_for(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert run.data.params == {"train.lr": "0.01", "train.steps": "3", "seed": "0"}
    assert run.data.tags["model"] == "toy" and run.data.tags["data.manifest_hash"] == "abc"
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    assert [a.path for a in client.list_artifacts(run_id)] == ["note.txt"]
    assert "mlartifacts" in run.info.artifact_uri  # beside the database, not ./mlruns
    child = client.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == run_id
    experiment = client.get_experiment_by_name("unit")
    assert experiment.experiment_id == tracker.experiment_id
    # a second tracker on the same store finds the experiment instead of creating one
    assert Tracker(uri, experiment="unit").experiment_id == tracker.experiment_id


def test_failed_and_interrupted_runs_are_marked(uri):
    tracker = Tracker(uri, experiment="status")
    ids = []
    for error in (ValueError, KeyboardInterrupt):
        with pytest.raises(error), tracker.start_run("broken") as run_id:
            ids.append(run_id)
            raise error("boom")
    client = client_for(uri)
    assert [client.get_run(i).info.status for i in ids] == ["FAILED", "KILLED"]
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        tracker.log_metrics({"x": 1.0})
    with tracker.start_run(run_id=ids[0]) as again:  # re-open an existing run
        tracker.log_metrics({"x": 2.0}, step=1)
    assert again == ids[0] and client.get_run(ids[0]).info.status == "FINISHED"


def test_null_tracker_does_nothing():
    tracker = NullTracker()
    with tracker.start_run("x", tags={"a": 1}) as run_id:
        tracker.log_params({"a": {"b": 1}})
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.set_tags({"t": 1})
        tracker.log_artifact("/does/not/matter")
        tracker.log_table(None, "t.json")
        tracker.delete_run(run_id)
        assert tracker.run_id == run_id
    assert not tracker.enabled and tracker.run_id is None
    assert tracker.search_runs("tags.bsym.kind = 'leaderboard'") == []


def test_tables_search_and_deleted_runs(uri):
    import pandas as pd

    tracker = Tracker(uri, experiment="tables")
    ids = []
    for value in (1.0, 2.0):
        with tracker.start_run("board", tags={"bsym.kind": "leaderboard"}) as run_id:
            tracker.log_table(pd.DataFrame({"model": ["a", "b"], "mean": [value, 0.5]}),
                              "leaderboard.json")
            ids.append(run_id)
    client = client_for(uri)
    assert [a.path for a in client.list_artifacts(ids[0])] == ["leaderboard.json"]
    assert "leaderboard.json" in client.get_run(ids[0]).data.tags["mlflow.loggedArtifacts"]
    found = tracker.search_runs("tags.bsym.kind = 'leaderboard'")
    assert sorted(r.info.run_id for r in found) == sorted(ids)
    tracker.delete_run(ids[0])
    assert [r.info.run_id for r in tracker.search_runs("tags.bsym.kind = 'leaderboard'")] == \
        [ids[1]]


def test_track_imports_no_other_bsym_subpackage_nor_mlflow():
    # bsym.io (file helpers every layer shares) is the one other bsym module it may use
    code = ("import sys, bsym.track; "
            "print(sorted(m for m in sys.modules if m.startswith('bsym.') "
            "and not m.startswith('bsym.track') and m != 'bsym.io'), 'mlflow' in sys.modules, "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[] False False"


def _writer(uri, worker, barrier, n_runs):
    tracker = Tracker(uri, experiment="parallel")
    barrier.wait()  # every process creates the store and experiment at the same moment
    for i in range(n_runs):
        with tracker.start_run(f"w{worker}-r{i}", tags={"worker": worker}):
            tracker.log_params({"worker": worker, "run": i})
            for step in range(3):
                tracker.log_metrics({"loss": float(step)}, step=step)


@pytest.mark.slow
def test_parallel_writers_lose_no_run(tmp_path):
    uri = uri_of(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(uri, w, barrier, 3)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    client = client_for(uri)
    experiments = [e for e in client.search_experiments() if e.name == "parallel"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id], max_results=100)
    assert sorted(r.info.run_name for r in runs) == sorted(
        f"w{w}-r{i}" for w in range(4) for i in range(3))
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["worker"] == run.data.tags["worker"]
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 3


# -- the engine logs through the tracker --------------------------------------------------
def test_engine_logs_config_counts_losses_and_manifest(uri, toy_store, tmp_path):
    import torch
    from toy_models import make_model

    from bsym.data.dataset import WindowDataset
    from bsym.train import TrainConfig, train

    torch.set_num_threads(1)
    tracker = Tracker(uri, experiment="engine")
    ds = WindowDataset(toy_store, window=20)
    config = TrainConfig(steps=6, batch_size=4, warmup_steps=1, log_every=2, progress=False,
                         checkpoint_every=2)

    class Stop(Exception):
        pass

    def stop(info):
        if info.step == 3:
            raise Stop

    with pytest.raises(Stop):
        train(make_model(), ds, config, tmp_path / "run", val_dataset=ds, tracker=tracker,
              callbacks=[stop])
    result = train(make_model(), ds, config, tmp_path / "run", val_dataset=ds,
                   tracker=tracker, resume=True)

    client = client_for(uri)
    runs = client.search_runs([tracker.experiment_id])
    assert len(runs) == 1  # the resumed run continued the same MLflow run
    run = runs[0]
    assert run.info.run_id == result.run_id and run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["train.lr"] == "0.001" and params["train.batch_size"] == "4"
    assert params["model.width"] == "16" and params["model_name"] == "toy-mae"
    assert int(params["n_params.total"]) == sum(p.numel() for p in make_model().parameters())
    assert params["data.manifest_hash"] == toy_store.manifest_hash
    assert tags["bsym.data.manifest_hash"] == toy_store.manifest_hash
    assert tags["bsym.model"] == "toy-mae" and tags["bsym.mode"] == "pretrain"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert steps[-3:] == [2, 4, 6]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [6]
    for key in ("lr", "samples_per_s", "final_train_loss", "train_samples_per_s"):
        assert key in run.data.metrics, key
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["run.json"]
