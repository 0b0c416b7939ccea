"""The MLflow leaderboard: parent runs with mean, sd and CI, and one leaderboard run per
dataset (table, report, result table), checked through a real ``mlflow server``'s REST API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pandas as pd
import pytest

from bsym.cli import main
from bsym.errors import BsymError
from bsym.evaluate.results import ResultTable, log_evaluation, parent_run_name, summary_metrics

MODELS = {"linear_probe": [("brainlm", "default"), ("brainsymphony", "fmri"),
                           ("brainsymphony", "fusion")],
          "supervised": [("connectome-fc", "default")]}
METRICS = {"sex": ("auroc", "accuracy"), "age": ("pearson_r", "mae")}


def _rows(dataset="tiny"):
    """2 protocols, 4 models (BrainSymphony with 2 views), 2 tasks, 4 folds; network
    identification rows."""
    rng = np.random.default_rng(0)
    rows = []
    for protocol, models in MODELS.items():
        for m, (model, view) in enumerate(models):
            for task in METRICS:
                for fold in range(4):
                    base = 0.55 + 0.05 * m + rng.normal(0, 0.03)
                    row = dict(model=model, view=view, dataset=dataset, task=task,
                               protocol=protocol, seed=0, repeat=0, fold=fold, n_train=30,
                               n_test=10, runtime_s=1.0, git_sha="a" * 40, config_hash="c",
                               manifest_hash="m", split_hash="s")
                    if task == "sex":
                        row.update(auroc=base, accuracy=base - 0.05)
                    else:
                        row.update(pearson_r=base - 0.2, mae=0.9 - base / 2)
                    rows.append(row)
    for model, view in (("brainlm", "default"), ("fc_rows", "fc")):
        rows.append(dict(model=model, view=view, dataset=dataset, task="networks",
                         protocol="network_identification", seed=0, repeat=0, fold=0,
                         n_train=5, n_test=16, ari_kmeans=0.4, nmi_kmeans=0.5,
                         knn_accuracy=0.7))
    return rows


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A result table and its report, as the workflow's report rule writes them."""
    from bsym.report import build_report

    root = tmp_path_factory.mktemp("reported")
    table = root / "tables" / "tiny.parquet"
    ResultTable(table).append(_rows())
    build_report(table, root / "report" / "tiny", title="bsym: tiny")
    return table, root / "report" / "tiny"


# -- parent runs --------------------------------------------------------------------------
def test_parent_runs_are_named_protocol_model_view_task():
    tags = {"protocol": "linear_probe", "model": "brainsymphony", "view": "fusion",
            "task": "sex"}
    assert parent_run_name(tags) == "linear_probe / brainsymphony:fusion / sex"
    assert parent_run_name({**tags, "view": "default"}) == "linear_probe / brainsymphony / sex"
    assert parent_run_name({**tags, "control": "random_init", "checkpoint": "step10"}) == \
        "linear_probe / brainsymphony:fusion / sex [random_init] @ step10"
    assert parent_run_name({**tags, "control": "none", "checkpoint": "final"}) == \
        "linear_probe / brainsymphony:fusion / sex"


def test_parent_run_interval_is_the_reports_interval():
    from bsym.stats import summary

    rows = [r for r in _rows() if r["protocol"] == "linear_probe" and r["task"] == "sex"
            and r["model"] == "brainlm"]
    logged = summary_metrics(rows, ["auroc", "accuracy"])
    expected = summary(pd.DataFrame(rows), "auroc").iloc[0]
    for key in ("mean", "sd", "ci_low", "ci_high"):
        assert logged[f"auroc_{key}"] == pytest.approx(expected[key]), key
    assert logged["auroc_ci_low"] < logged["auroc_mean"] < logged["auroc_ci_high"]
    one = summary_metrics(rows[:1], ["auroc"])
    assert one == {"auroc_mean": rows[0]["auroc"], "auroc_sd": 0.0}  # no interval from n = 1


# -- the leaderboard table and its inputs ---------------------------------------------------
def test_leaderboard_table_marks_primary_metrics_and_ranks(reported):
    from bsym.report.tracking import leaderboard_table

    table, _ = reported
    board = leaderboard_table(pd.read_parquet(table))
    assert set(board["dataset"]) == {"tiny"}
    primary = board[board["primary"]]
    assert set(zip(primary["task"], primary["metric"])) == {("sex", "auroc"), ("age", "pearson_r")}
    assert not board.iloc[:len(primary)]["primary"].eq(False).any()  # primary rows first
    sex = primary[(primary["protocol"] == "linear_probe") & (primary["task"] == "sex")]
    assert list(sex.sort_values("mean", ascending=False)["rank"]) == [1, 2, 3]
    assert sex.loc[sex["rank"] == 1, "model"].item() == "brainsymphony:fusion"
    mae = board[(board["metric"] == "mae") & (board["protocol"] == "linear_probe")]
    assert mae.loc[mae["rank"] == 1, "mean"].item() == mae["mean"].min()  # lower is better


def test_leaderboard_inputs_are_checked_before_anything_is_logged(reported, tmp_path):
    from bsym.report.tracking import log_leaderboard
    from bsym.track import NullTracker

    table, report = reported
    with pytest.raises(BsymError, match="no such folder.*Fix: pass the --out folder"):
        log_leaderboard(NullTracker(), table, tmp_path / "nowhere")
    stats = tmp_path / "stats"
    stats.mkdir()
    (stats / ".bsym-outputs.json").write_text(json.dumps(
        {"format": "bsym-output-folder", "kind": "stats", "files": []}))
    with pytest.raises(BsymError, match="stats outputs, not a report"):
        log_leaderboard(NullTracker(), table, stats)
    two = tmp_path / "two.parquet"
    ResultTable(two).append(_rows("tiny") + _rows("other"))
    with pytest.raises(BsymError, match="holds 2 datasets.*Fix: pass --dataset"):
        log_leaderboard(NullTracker(), two, report)
    with pytest.raises(BsymError, match="no row of dataset 'nope'"):
        log_leaderboard(NullTracker(), two, report, dataset="nope")
    mine = tmp_path / "mine.json"
    mine.write_text("{}")
    with pytest.raises(BsymError, match="not a leaderboard-run record written by bsym"):
        log_leaderboard(NullTracker(), table, report, out=mine)
    assert main(["tracking", "leaderboard", "--results", str(table), "--report-dir",
                 str(tmp_path / "nowhere"), "--tracking-uri",
                 f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was touched


# -- a real MLflow server -----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on 127.0.0.1 with an SQLite store and artifacts in tmp."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job workers
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("mlflow server did not start:\n" +
                                     (tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
        with contextlib.suppress(ProcessLookupError):  # a worker still running
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def _get(url, route, **query):
    with urllib.request.urlopen(f"{url}{route}?{urllib.parse.urlencode(query)}",
                                timeout=30) as response:
        return response.read()


def _post(url, route, payload):
    request = urllib.request.Request(f"{url}{route}", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _listing(url, run_id, path=""):
    payload = json.loads(_get(url, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path=path))
    return {f["path"]: f for f in payload.get("files", [])}


@pytest.mark.slow
def test_leaderboard_run_through_a_real_mlflow_server(mlflow_server, reported, tmp_path):
    from bsym.report import leaderboard
    from bsym.track import Tracker

    url = mlflow_server
    table, report = reported
    rows = pd.read_parquet(table)
    # the parent runs, as the probes and the supervised baselines log them
    tracker = Tracker(url, "bsym")
    for (protocol, model, view, task), group in rows[rows["protocol"] != "network_identification"] \
            .groupby(["protocol", "model", "view", "task"]):
        log_evaluation(tracker, group.to_dict("records"), metrics=METRICS[task],
                       tags={"protocol": protocol, "model": model, "view": view, "task": task,
                             "dataset": "tiny", "seed": 0})
    command = ["tracking", "leaderboard", "--results", str(table), "--report-dir", str(report),
               "--tracking-uri", url, "--experiment", "bsym", "--out",
               str(tmp_path / "leaderboard.json")]
    assert main(command) == 0
    first = json.loads((tmp_path / "leaderboard.json").read_text())
    assert main(command) == 0  # a rerun replaces the run: one leaderboard run per dataset
    record = json.loads((tmp_path / "leaderboard.json").read_text())
    assert record["replaced"] == [first["run_id"]]

    experiment = json.loads(_get(url, "/api/2.0/mlflow/experiments/get-by-name",
                                 experiment_name="bsym"))["experiment"]["experiment_id"]
    found = _post(url, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [experiment], "filter": "tags.bsym.kind = 'leaderboard'"})["runs"]
    assert [r["info"]["run_id"] for r in found] == [record["run_id"]]
    run = found[0]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert run["info"]["run_name"] == "leaderboard: tiny" and tags["dataset"] == "tiny"
    assert run["info"]["status"] == "FINISHED"
    assert "brainsymphony:fusion" in tags["mlflow.note.content"]
    assert {"path": "leaderboard.json", "type": "table"} in \
        json.loads(tags["mlflow.loggedArtifacts"])
    every = _post(url, "/ajax-api/2.0/mlflow/runs/search", {  # what the UI asks for
        "experiment_ids": [experiment], "filter": "tags.bsym.kind = 'leaderboard'",
        "run_view_type": "ALL"})["runs"]
    assert sorted(r["info"]["lifecycle_stage"] for r in every) == ["active", "deleted"]

    # the artifacts: listed, and downloaded as the UI downloads them
    run_id = record["run_id"]
    top = _listing(url, run_id)
    assert {"leaderboard.json", "network_identification.json", "report", "results"} <= set(top)
    assert top["report"]["is_dir"] and top["results"]["is_dir"]
    in_report = _listing(url, run_id, "report")
    assert {"report/report.html", "report/report.md", "report/figures",
            "report/tables"} <= set(in_report)
    figures = _listing(url, run_id, "report/figures")
    local = sorted(p.name for p in (report / "figures").glob("*.png"))
    assert local and sorted(p.rsplit("/", 1)[1] for p in figures) == local
    for name in ("report.html", f"figures/{local[0]}", "tables/leaderboard.csv"):
        body = _get(url, "/get-artifact", path=f"report/{name}", run_uuid=run_id)
        assert body == (report / name).read_bytes(), name
    assert set(_listing(url, run_id, "results")) == {"results/tiny.parquet", "results/tiny.csv"}
    assert _get(url, "/get-artifact", path="results/tiny.parquet", run_uuid=run_id) == \
        table.read_bytes()
    logged = json.loads(_get(url, "/get-artifact", path="leaderboard.json", run_uuid=run_id))
    board = pd.DataFrame(logged["data"], columns=logged["columns"])
    expected = leaderboard(rows)
    assert len(board) == len(expected)  # once: a rerun did not append to the table
    merged = board.merge(expected, on=["protocol", "task", "metric", "model"],
                         suffixes=("", "_report"))
    assert len(merged) == len(expected)
    for key in ("mean", "sd", "ci_low", "ci_high"):
        np.testing.assert_allclose(merged[key], merged[f"{key}_report"], atol=5e-5)  # 4 decimals

    # parent runs: protocol / model:view / task, sortable by a metric column
    parents = _post(url, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [experiment], "order_by": ["metrics.auroc_mean DESC"],
        "filter": "tags.bsym.kind = 'parent' and tags.dataset = 'tiny' "
                  "and tags.task = 'sex'"})["runs"]
    assert sorted(r["info"]["run_name"] for r in parents) == [
        "linear_probe / brainlm / sex", "linear_probe / brainsymphony:fmri / sex",
        "linear_probe / brainsymphony:fusion / sex", "supervised / connectome-fc / sex"]
    means = []
    for parent in parents:
        metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
        for metric in ("auroc", "accuracy"):
            assert metrics[f"{metric}_ci_low"] < metrics[f"{metric}_mean"] < \
                metrics[f"{metric}_ci_high"]
            assert metrics[f"{metric}_sd"] > 0
        means.append(metrics["auroc_mean"])
    assert means == sorted(means, reverse=True)  # the server sorted by the metric column
