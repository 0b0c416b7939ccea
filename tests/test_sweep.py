"""Optuna sweeps: search-space parsing, seeded sampling, pruning, resume, parallel workers, MLflow."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from bsym.errors import BsymError, UsageError
from bsym.sweep import (
    CategoricalParam,
    FloatParam,
    IntParam,
    SweepError,
    journal_storage,
    load_study,
    parse_space,
    run_sweep,
    suggest_params,
    summarize_study,
    write_summary,
)
from bsym.sweep.liveness import HEARTBEAT_ATTR, WORKER_ATTR, host_id, is_stale, worker_record
from bsym.track import NullTracker

REPO = Path(__file__).resolve().parents[1]
SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "layers": {"type": "int", "low": 1, "high": 4},
    "readout": {"type": "categorical", "choices": ["mean", "concat"]},
}


def loss(params):
    """A smooth synthetic objective with its optimum at lr=1e-3, layers=2, readout=concat."""
    return (math.log10(params["lr"]) + 3) ** 2 + (params["layers"] - 2) ** 2 + (params["readout"] == "mean")


def quiet(**kwargs):
    return {"progress": False, **kwargs}


@pytest.fixture(autouse=True)
def _optuna_warnings_only():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(level)


# -- search space -------------------------------------------------------------------------
def test_valid_space_parses_round_trips_and_suggests():
    space = parse_space(SPACE)
    assert space.names == ["lr", "layers", "readout"]
    lr, layers, readout = space.params
    assert lr == FloatParam("lr", 1e-4, 1e-2, log=True)
    assert layers == IntParam("layers", 1, 4)
    assert readout == CategoricalParam("readout", ("mean", "concat"))
    assert parse_space(space.to_dict()) == space
    assert parse_space(space) is space
    grid = parse_space({"dropout": {"type": "float", "low": 0, "high": 0.5, "step": 0.1},
                        "width": {"type": "int", "low": 16, "high": 128, "step": 16},
                        "heads": {"type": "int", "low": 1, "high": 8, "log": True}})
    assert grid.params[0].step == 0.1 and grid.params[1].step == 16 and grid.params[2].log
    fixed = optuna.trial.FixedTrial({"lr": 1e-3, "layers": 3, "readout": "concat"})
    assert suggest_params(fixed, SPACE) == {"lr": 1e-3, "layers": 3, "readout": "concat"}


@pytest.mark.parametrize("name, entry, message", [
    ("lr", {"type": "double", "low": 0.0, "high": 1.0}, "type must be one of"),
    ("lr", {"type": "float", "low": 0.1, "high": 0.1}, "low must be below high"),
    ("lr", {"type": "float", "low": 0.5, "high": 0.1}, "low must be below high"),
    ("lr", {"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log scale needs low > 0"),
    ("layers", {"type": "int", "low": -1, "high": 4, "log": True}, "log scale needs low > 0"),
    ("readout", {"type": "categorical", "choices": []}, "must not be empty"),
    ("readout", {"type": "categorical"}, "needs 'choices'"),
    ("readout", {"type": "categorical", "choices": ["a", "a"]}, "distinct"),
    ("readout", {"type": "categorical", "choices": [[1, 2]]}, "each choice must be"),
    ("lr", {"type": "float", "low": 0.1, "high": 1.0, "scale": "log"}, r"unknown key\(s\) \['scale'\]"),
    ("readout", {"type": "categorical", "choices": ["a"], "low": 0}, r"unknown key\(s\) \['low'\]"),
    ("layers", {"type": "int", "low": 1.5, "high": 4}, "low must be an integer"),
    ("lr", {"type": "float", "low": "1e-4", "high": 1e-2}, "write 1.0e-4"),
    ("lr", {"type": "float", "high": 1.0}, "needs 'low'"),
    ("lr", {"type": "float", "low": 0.0, "high": float("inf")}, "must be finite"),
    ("lr", {"type": "float", "low": 0.1, "high": 1.0, "log": "yes"}, "log must be true or false"),
    ("lr", {"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1}, "cannot be combined"),
    ("layers", {"type": "int", "low": 0, "high": 5, "step": 2}, "multiple of step"),
    ("layers", {"type": "int", "low": 0, "high": 4, "step": 0}, "step must be positive"),
    ("layers", "int", "expected a mapping"),
])
def test_invalid_space_names_the_parameter(name, entry, message):
    with pytest.raises(SweepError, match=message) as info:
        parse_space({**SPACE, name: entry})
    assert f"parameter {name!r}" in str(info.value)
    assert isinstance(info.value, UsageError) and isinstance(info.value, BsymError)


@pytest.mark.parametrize("spec, message", [({}, "empty"), ([1, 2], "mapping"),
                                           ({"": {"type": "int", "low": 0, "high": 1}}, "non-empty")])
def test_invalid_space_shape(spec, message):
    with pytest.raises(SweepError, match=message):
        parse_space(spec)


# -- seeded sampling ----------------------------------------------------------------------
def params_sequence(path, seed):
    result = run_sweep(lambda params, report: loss(params), SPACE, storage=path, study_name="det",
                       n_trials=10, seed=seed, n_startup_trials=4, prune=False, **quiet())
    assert result.n_complete == 10
    return [row["params"] for row in result.trials]


def test_same_seed_same_params_different_seed_differs(tmp_path):
    first = params_sequence(tmp_path / "a.journal", seed=7)
    again = params_sequence(tmp_path / "b.journal", seed=7)
    other = params_sequence(tmp_path / "c.journal", seed=8)
    assert first == again
    assert first != other
    assert len({json.dumps(p, sort_keys=True) for p in first}) == 10  # no repeated draw


# -- pruning ------------------------------------------------------------------------------
def test_bad_trials_are_pruned_good_ones_are_not(tmp_path):
    def is_bad(number):
        return number >= 3 and number % 2 == 1

    def objective(params, report):
        level = 1.0 if is_bad(report.number) else 0.1
        for step in range(5):
            report(level + 0.001 * step, step)
        return level

    result = run_sweep(objective, SPACE, storage=tmp_path / "p.journal", study_name="prune",
                       n_trials=10, seed=0, pruner_startup_trials=3, pruner_warmup_steps=0, **quiet())
    pruned = {row["number"] for row in result.trials if row["state"] == "PRUNED"}
    assert pruned == {n for n in range(10) if is_bad(n)} == {3, 5, 7, 9}
    assert result.n_pruned == 4 and result.n_complete == 6 and result.n_failed == 0
    assert result.n_finished == result.n_trials == 10
    study = load_study(tmp_path / "p.journal", "prune")
    for trial in study.trials:
        steps = sorted(trial.intermediate_values)
        assert steps == ([0] if trial.number in pruned else [0, 1, 2, 3, 4])
    assert result.best_value == pytest.approx(0.1)


# -- failures -----------------------------------------------------------------------------
def test_failed_trials_do_not_count_and_errors_stop_the_sweep(tmp_path):
    journal = tmp_path / "f.journal"

    def objective(params, report):
        if report.number == 1:
            return float("nan")
        if report.number == 2:
            raise RuntimeError("out of memory")
        return loss(params)

    result = run_sweep(objective, SPACE, storage=journal, study_name="f", n_trials=4, seed=0,
                       catch=(RuntimeError,), **quiet())
    assert (result.n_complete, result.n_failed) == (4, 2)
    assert [row["state"] for row in result.trials[:3]] == ["COMPLETE", "FAIL", "FAIL"]
    reasons = [t.user_attrs.get("bsym.fail_reason") for t in load_study(journal, "f").trials[1:3]]
    assert reasons == ["objective returned nan", "RuntimeError: out of memory"]

    def broken(params, report):
        raise KeyError("no such column")

    with pytest.raises(KeyError, match="no such column"):
        run_sweep(broken, SPACE, storage=journal, study_name="f", n_trials=5, seed=0, **quiet())
    assert load_study(journal, "f").trials[-1].state == TrialState.FAIL
    with pytest.raises(SweepError, match="2 trials failed"):
        run_sweep(lambda p, r: math.inf, SPACE, storage=journal, study_name="f", n_trials=6, seed=0,
                  max_failures=2, **quiet())
    with pytest.raises(SweepError, match="must return a number, got None"):
        run_sweep(lambda p, r: None, SPACE, storage=journal, study_name="f", n_trials=6, seed=0, **quiet())

    class BrokenTracker(NullTracker):  # fails before the objective runs
        def start_run(self, name=None, tags=None, *, nested=False, run_id=None):
            if str(name).startswith("trial-"):
                raise ConnectionError("tracking server unreachable")
            return super().start_run(name, tags, nested=nested, run_id=run_id)

    with pytest.raises(ConnectionError):
        run_sweep(lambda p, r: loss(p), SPACE, storage=journal, study_name="f", n_trials=6, seed=0,
                  tracker=BrokenTracker(), **quiet())
    assert not load_study(journal, "f").get_trials(states=(TrialState.RUNNING,))  # none left RUNNING


def test_resuming_with_another_space_seed_or_direction_is_an_error(tmp_path):
    journal = tmp_path / "m.journal"
    run_sweep(lambda p, r: loss(p), SPACE, storage=journal, study_name="m", n_trials=1, seed=0, **quiet())
    changed = {**SPACE, "layers": {"type": "int", "low": 1, "high": 8}}
    with pytest.raises(SweepError, match="created with search space"):
        run_sweep(lambda p, r: loss(p), changed, storage=journal, study_name="m", n_trials=2, seed=0,
                  **quiet())
    with pytest.raises(SweepError, match="created with seed 0, got 1"):
        run_sweep(lambda p, r: loss(p), SPACE, storage=journal, study_name="m", n_trials=2, seed=1, **quiet())
    with pytest.raises(SweepError, match="direction 'minimize', got direction='maximize'"):
        run_sweep(lambda p, r: loss(p), SPACE, storage=journal, study_name="m", n_trials=2, seed=0,
                  direction="maximize", **quiet())
    with pytest.raises(SweepError, match="n_trials must be an integer >= 1"):
        run_sweep(lambda p, r: loss(p), SPACE, storage=journal, study_name="m", n_trials=0, seed=0)
    # a larger budget extends the study; the same budget again runs nothing
    assert run_sweep(lambda p, r: loss(p), SPACE, storage=journal, study_name="m", n_trials=3, seed=0,
                     **quiet()).n_complete == 3
    assert len(load_study(journal, "m").trials) == 3


# -- stale trials -------------------------------------------------------------------------
def test_stale_running_trials_are_recognised():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()

    def running(record, beat):
        return create_trial(state=TrialState.RUNNING, user_attrs={WORKER_ATTR: record, HEARTBEAT_ATTR: beat})

    me = worker_record(heartbeat_interval=10)
    assert me["host"] == host_id() and me["pid"] == os.getpid()
    assert not is_stale(running(me, now - 3600))  # alive on this host: never stale
    assert is_stale(running({**me, "pid": dead.pid, "start": None}, now))  # gone from this host
    elsewhere = {**me, "host": "another-node"}
    assert not is_stale(running(elsewhere, now - 20), now=now)  # heartbeat within 3 intervals
    assert is_stale(running(elsewhere, now - 31), now=now)
    assert not is_stale(create_trial(state=TrialState.COMPLETE, value=1.0))


def test_heartbeat_is_refreshed_while_a_trial_runs(tmp_path):
    journal = tmp_path / "h.journal"

    def objective(params, report):
        time.sleep(0.35)
        return loss(params)

    run_sweep(objective, SPACE, storage=journal, study_name="h", n_trials=1, seed=0,
              heartbeat_interval=0.1, **quiet())
    trial = load_study(journal, "h").trials[0]
    assert trial.user_attrs[WORKER_ATTR]["pid"] == os.getpid()
    started = trial.datetime_start.timestamp()
    assert trial.user_attrs[HEARTBEAT_ATTR] > started + 0.2  # beaten during the trial


def test_a_trial_failed_by_another_worker_ends_gracefully(tmp_path):
    journal = tmp_path / "o.journal"

    def objective(params, report):
        if report.number == 1:  # another worker wrongly took this trial for stale
            optuna.load_study(study_name="o", storage=journal_storage(journal)).tell(1, state=TrialState.FAIL)
            report(0.5, 0)
        return loss(params)

    result = run_sweep(objective, SPACE, storage=journal, study_name="o", n_trials=3, seed=0, **quiet())
    assert [row["state"] for row in result.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]


# -- resume and parallel workers (real processes) -----------------------------------------
WORKER = """
import json, math, sys, time
from pathlib import Path
from bsym.sweep import run_sweep, write_summary
from bsym.track import NullTracker, Tracker

cfg = json.loads(sys.argv[1])
space = json.loads(cfg["space"])
ran = []

def objective(params, report):
    ran.append(report.number)
    Path(cfg["ran"]).write_text(json.dumps(ran))
    if report.number == cfg.get("hang_at"):
        time.sleep(600)
    for step in range(3):
        report(1.0 / (step + 1), step)
        time.sleep(cfg.get("sleep", 0.0))
    return (math.log10(params["lr"]) + 3) ** 2 + (params["layers"] - 2) ** 2 + (params["readout"] == "mean")

tracker = Tracker(cfg["uri"], cfg["experiment"]) if cfg.get("uri") else NullTracker()
tracker.experiment_id if tracker.enabled else None  # create the store before the start signal
if cfg.get("go"):
    Path(cfg["ready"]).touch()
    while not Path(cfg["go"]).exists():
        time.sleep(0.02)
result = run_sweep(objective, space, storage=cfg["journal"], study_name="s", n_trials=cfg["n_trials"],
                   seed=0, prune=False, tracker=tracker, progress=False)
write_summary(result, cfg["out"])
"""


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One MLflow store for the module, made here once: creating its tables takes seconds."""
    from bsym.track import Tracker

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    assert Tracker(uri, "setup").experiment_id
    return uri


def start_worker(tmp_path, name, **cfg):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    cfg = {"space": json.dumps(SPACE), "journal": str(tmp_path / "s.journal"),
           "ran": str(tmp_path / f"{name}.ran.json"), "out": str(tmp_path / f"{name}.json"), **cfg}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(tmp_path / f"{name}.log", "w") as log:  # the child keeps its own handle
        return subprocess.Popen([sys.executable, str(script), json.dumps(cfg)], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def wait_for(condition, proc, what, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def snapshot(journal):
    try:
        study = load_study(journal, "s")
    except SweepError:
        return {}
    return {t.number: (t.state.name, t.value, t.params) for t in study.trials}


def test_killed_sweep_resumes_without_losing_or_rerunning_trials(tmp_path, mlflow_uri):
    from mlflow import MlflowClient

    from bsym.track import Tracker

    journal, uri = tmp_path / "s.journal", mlflow_uri
    proc = start_worker(tmp_path, "first", n_trials=6, hang_at=3, uri=uri, experiment="resume")
    try:
        def hung():
            ran = tmp_path / "first.ran.json"
            states = [s for s, _, _ in snapshot(journal).values()]
            return states == ["COMPLETE"] * 3 + ["RUNNING"] and ran.exists() and "3" in ran.read_text()
        wait_for(hung, proc, "3 complete trials and a 4th running: see first.log")
    finally:
        proc.kill()
        proc.wait()
    before = snapshot(journal)
    assert json.loads((tmp_path / "first.ran.json").read_text()) == [0, 1, 2, 3]

    ran = []

    def objective(params, report):
        ran.append(report.number)
        for step in range(3):
            report(1.0 / (step + 1), step)
        return loss(params)

    tracker = Tracker(uri, "resume")
    result = run_sweep(objective, SPACE, storage=journal, study_name="s", n_trials=6, seed=0, prune=False,
                       tracker=tracker, **quiet())
    after = snapshot(journal)
    assert ran == [4, 5, 6]  # the killed trial 3 is not re-run under its number; 0-2 are kept
    assert {n: after[n] for n in (0, 1, 2)} == {n: before[n] for n in (0, 1, 2)}
    assert after[3][0] == "FAIL"
    assert (result.n_complete, result.n_pruned, result.n_failed, result.n_running) == (6, 0, 1, 0)
    assert len({json.dumps(p, sort_keys=True) for _, _, p in after.values()}) == 7  # no replayed draws
    assert result.best_value == min(v for s, v, _ in after.values() if s == "COMPLETE")

    # MLflow: one parent for both processes, one nested run per trial
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([tracker.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("bsym.kind") == "study"]
    assert len(parents) == 1 and len(runs) == 1 + 7
    parent = parents[0]
    assert parent.info.run_id == result.parent_run_id
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == pytest.approx(result.best_value)
    assert parent.data.tags["best.readout"] == str(result.best_params["readout"])
    assert parent.data.params["space.lr.log"] == "True"
    trials = {int(r.data.tags["bsym.trial"]): r for r in runs if r.data.tags.get("bsym.kind") == "trial"}
    assert sorted(trials) == list(range(7))
    for number, run in trials.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        state, value, params = after[number]
        assert run.data.tags["bsym.state"] == state
        assert run.info.status == ("FAILED" if state == "FAIL" else "FINISHED")
        assert run.data.params["layers"] == str(params["layers"])
        if state == "COMPLETE":
            assert run.data.metrics["value"] == pytest.approx(value)
            history = client.get_metric_history(run.info.run_id, "intermediate_value")
            assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]


def test_parallel_workers_share_one_study_and_stop_at_the_budget(tmp_path, mlflow_uri):
    uri, go = mlflow_uri, tmp_path / "go"
    procs = [start_worker(tmp_path, f"w{i}", n_trials=8, sleep=0.05, uri=uri, experiment="parallel",
                          go=str(go), ready=str(tmp_path / f"w{i}.ready")) for i in range(2)]
    try:
        for i, proc in enumerate(procs):
            wait_for((tmp_path / f"w{i}.ready").exists, proc, f"worker {i} to start: see w{i}.log")
        go.touch()
        for proc in procs:
            proc.wait(timeout=120)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert [p.returncode for p in procs] == [0, 0], (tmp_path / "w0.log").read_text()
    ran = [json.loads((tmp_path / f"w{i}.ran.json").read_text()) for i in range(2)]
    assert all(ran) and not set(ran[0]) & set(ran[1])  # both worked, never on the same trial
    study = load_study(tmp_path / "s.journal", "s")
    numbers = [t.number for t in study.trials]
    assert sorted(ran[0] + ran[1]) == numbers == list(range(8))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 8
    summaries = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    assert {s["parent_run_id"] for s in summaries} == {study.user_attrs["bsym.mlflow_parent"]["run_id"]}

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("parallel")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("bsym.kind") == "study"]
    assert len(parents) == 1 and len(runs) == 1 + 8
    assert {r.data.tags.get("mlflow.parentRunId") for r in runs if r not in parents} == \
        {parents[0].info.run_id}


# -- summary ------------------------------------------------------------------------------
def test_summary_is_written_atomically_as_json(tmp_path, capsys):
    journal = tmp_path / "j.journal"
    result = run_sweep(lambda p, r: loss(p), SPACE, storage=journal, study_name="sum", n_trials=3, seed=0,
                       progress=True)
    assert "sweep sum" in capsys.readouterr().err  # the progress bar
    path = write_summary(result, tmp_path / "out" / "sum.json")
    data = json.loads(path.read_text())
    assert data.pop("format") == "bsym-sweep"  # its mark: a later sweep may replace it
    assert data == json.loads(json.dumps(result.to_dict()))
    assert data["n_complete"] == 3 and data["best_params"] == result.best_params
    assert [row["number"] for row in data["trials"]] == [0, 1, 2]
    assert os.listdir(path.parent) == ["sum.json"]  # no temporary file left
    assert summarize_study(load_study(journal, "sum")).to_dict() == result.to_dict()
    with pytest.raises(SweepError, match="no study 'nope'"):
        load_study(journal, "nope")
