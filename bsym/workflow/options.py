"""Command-line options of the workflow's ``bsym`` commands, built from the configuration.

Every function reads a validated configuration (or one of its blocks), in which each key
is present; it returns the options as one string, or ``""`` where there are none.
:func:`command_line` and :func:`batch_options` join such strings into the command lines of
a ``bsym batch`` job.
"""

from __future__ import annotations

import json
import shlex

#: Keys of a ``training`` block passed as ``--<key>`` (``seed`` is ``--train-seed``).
TRAINING_KEYS = (
    "max_steps",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "eval_every",
    "patience",
    "device",
)


def task_label(name, task):
    """The label column a task predicts: its ``label``, else the task's name."""
    return name if task["label"] is None else task["label"]


def task_options(name, task):
    """``--task LABEL --task-type TYPE`` of a task."""
    return f"--task {task_label(name, task)} --task-type {task['type']}"


def probe_options(name, task):
    """`bsym probe` task options: the label, the probe type and the level of its rows."""
    return f"{task_options(name, task)} --level {task['level']}"


def max_windows_option(block):
    """``--max-windows N`` of a block with a ``max_windows`` limit (none if null)."""
    return f"--max-windows {block['max_windows']}" if block["max_windows"] else ""


def window_and_model_options(block, dataset, model):
    """The block's ``--max-windows``, the dataset's ``--target-tr``, the model's
    constructor overrides (``--model-arg key=<JSON value>``), as a list."""
    args = [max_windows_option(block)] if block["max_windows"] else []
    if dataset["target_tr"]:
        args.append(f"--target-tr {dataset['target_tr']}")
    for key, value in model["args"].items():
        args.append(f"--model-arg {shlex.quote(f'{key}={json.dumps(value)}')}")
    return args


def pretrain_options(config, dataset, model):
    """`bsym pretrain` options of a model on a dataset.

    The model's own ``steps`` and ``window`` come before those of the ``pretrain`` block;
    a compute budget applies to models without their own ``steps``.
    """
    pretrain, spec = config["pretrain"], config["models"][model]
    steps = pretrain["steps"] if spec["steps"] is None else spec["steps"]
    args = [
        f"--preset {spec['preset']}",
        f"--steps {steps}",
        f"--batch-size {pretrain['batch_size']}",
        f"--lr {pretrain['lr']}",
        f"--warmup-steps {pretrain['warmup_steps']}",
        f"--seed {pretrain['seed']}",
        f"--device {pretrain['device']}",
        f"--checkpoint-every {pretrain['checkpoint_every']}",
        f"--window-sampling {pretrain['window_sampling']}",
        f"--snapshots {','.join(str(f) for f in pretrain['snapshots'])}",
        f"--eval-every {pretrain['eval_every']}",
    ]
    budget = pretrain["budget"]
    if budget and spec["steps"] is None:
        args.append(f"--budget-{budget['unit']} {budget['amount']}")
    window = spec["window"] or pretrain["window"]
    if window:
        args.append(f"--window {window}")
    extra = window_and_model_options(pretrain, config["datasets"][dataset], spec)
    return " ".join([*args, *extra])


def pretrain_fraction(config, dataset):
    """The share of a dataset's subjects pretrained on: its own, else ``pretrain.fraction``."""
    own = config["datasets"][dataset]["pretrain_fraction"]
    return config["pretrain"]["fraction"] if own is None else own


def stratify_option(pretrain):
    """``--task LABEL`` stratifying the pretraining-cohort draw (none if not stratified)."""
    return f"--task {pretrain['stratify']}" if pretrain["stratify"] else ""


def split_options(splits, seed):
    """`bsym splits` options of a task's split file (they are hashed into it)."""
    return (
        f"--n-folds {splits['folds']} --repeats {splits['repeats']} "
        f"--inner-folds {splits['inner_folds']} "
        f"--split-protocol {splits['protocol']} "
        f"--group-by {splits['group_by']} --seed {seed}"
    )


def view_option(model):
    """``--view`` of the model's configured embedding view (none if null)."""
    return f"--view {model['view']}" if model["view"] else ""


def single_view_option(model):
    """The configured view, or the model's default one where every view is probed."""
    view = model["view"]
    return f"--view {view}" if view and view != "all" else ""


def training_options(training):
    """`bsym finetune | supervised | sweep` optimisation options of a ``training`` block."""
    args = [f"--{key.replace('_', '-')} {training[key]}" for key in TRAINING_KEYS]
    return " ".join([*args, f"--train-seed {training['seed']}"])


def freeze_option(finetune):
    """``--freeze-encoder`` where fine-tuning trains the head only."""
    return "--freeze-encoder" if finetune["freeze_encoder"] else ""


def baseline_options(config, dataset, baseline):
    """Model, window and training options of a supervised baseline (`bsym supervised |
    sweep`)."""
    supervised = config["supervised"]
    spec = supervised["models"][baseline]
    args = [
        f"--preset {spec['preset']}",
        f"--window {supervised['window']}",
        training_options(supervised["training"]),
    ]
    extra = window_and_model_options(supervised, config["datasets"][dataset], spec)
    return " ".join([*args, *extra])


def sweep_options(sweeps, baseline):
    """`bsym sweep` search options: budget, seeds, pruning and the space (inline JSON)."""
    space = sweeps["models"][baseline]["space"]
    return (
        f"--trials {sweeps['trials']} --sampler-seed {sweeps['sampler_seed']}"
        f" --startup-trials {sweeps['startup_trials']}"
        f" --pruner-startup-trials {sweeps['pruner_startup_trials']}"
        f" --pruner-warmup-steps {sweeps['pruner_warmup_steps']}"
        f" --space {shlex.quote(json.dumps(space, sort_keys=True))}"
    )


def tracking_uri(config):
    """The MLflow tracking URI: the configured one, else SQLite under the results."""
    return config["tracking"]["uri"] or f"sqlite:///{config['results']}/mlflow.db"


def tracking_options(config):
    """MLflow options of a tracked command: the URI and experiment, or ``--no-tracking``."""
    tracking = config["tracking"]
    if not tracking["enabled"]:
        return "--no-tracking"
    return f"--tracking-uri {tracking_uri(config)} --experiment {tracking['experiment']}"


def command_line(*parts):
    """One command line from its parts, leaving out the empty ones (options that a
    configuration does not ask for)."""
    return " ".join(str(part) for part in parts if part)


def batch_options(commands):
    """`bsym batch` options that run these command lines (without the leading ``bsym``) in
    order: one shell-quoted ``--command`` each."""
    return " ".join(f"--command {shlex.quote(command)}" for command in commands)


def embedding_source(name, model, embeddings):
    """`bsym probe` options naming a model's embeddings folder, its view and its name."""
    return command_line(f"--embeddings {shlex.quote(str(embeddings))}", view_option(model),
                        f"--model {name}")


def probe_command(config, dataset, task, source, store, splits, results):
    """`bsym probe` of one task of a dataset (without the leading ``bsym``).

    ``source`` names what is probed: :func:`embedding_source`, or ``--features F`` for a
    connectome baseline.
    """
    return command_line(
        "probe", source, f"--data {shlex.quote(str(store))}",
        probe_options(task, config["tasks"][task]),
        f"--dataset {dataset} --splits {shlex.quote(str(splits))}",
        f"--results {shlex.quote(str(results))}",
        f"--permutations {config['controls']['permutations']}",
        tracking_options(config), "--quiet",
    )


def supervised_command(config, dataset, baseline, task, store, splits, results, params=()):
    """`bsym supervised` of a baseline on one task of a dataset (without the leading
    ``bsym``); ``params``: the per-fold best parameters of the task's sweep, if swept."""
    return command_line(
        f"supervised --model {baseline} --data {shlex.quote(str(store))}",
        task_options(task, config["tasks"][task]),
        baseline_options(config, dataset, baseline),
        *(f"--params {shlex.quote(str(p))}" for p in params),
        f"--dataset {dataset} --splits {shlex.quote(str(splits))}",
        f"--results {shlex.quote(str(results))}",
        tracking_options(config), "--quiet",
    )
