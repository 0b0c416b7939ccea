# Glue between the rules and bsym.workflow, where the workflow's decisions live (which jobs
# run, with which options) and are tested. The config has been validated against the
# schema with its defaults filled in: every key is present.
import os
import re
import shlex
import sys

from snakemake.settings.types import DeploymentMethod

# the rules' helpers come from this checkout's bsym, imported without torch at DAG start
if workflow.basedir not in sys.path:
    sys.path.insert(0, workflow.basedir)

from bsym.workflow import options
from bsym.workflow.checks import check_config
from bsym.workflow.plan import JobPlan, gpus, rule_name
from bsym.workflow.sources import prepare_arguments

check_config(config)

RESULTS = config["results"]
# Rules run bsym from this checkout: with --use-conda in the rule's environment, otherwise
# in the interpreter running Snakemake (whether or not its environment is activated).
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
INTERPRETER = "python" if USE_CONDA else shlex.quote(sys.executable)
PYTHON = f'PYTHONPATH="{workflow.basedir}${{PYTHONPATH:+:$PYTHONPATH}}" {INTERPRETER}'
BSYM = f"{PYTHON} -m bsym"

PLAN = JobPlan(config)
SSL_MODELS = PLAN.ssl_models
BASELINES = PLAN.baselines
PRETRAIN = config["pretrain"]
SPLITS = config["splits"]
SUPERVISED = config["supervised"]
FINETUNE = config["finetune"]
ATTENTION = config["attention"]
EMBED = config["embed"]
TRACKING = config["tracking"]
TRACKING_MARKER = f"{RESULTS}/tracking/experiment.json"


def alternatives(names):
    """A wildcard pattern that matches exactly these names."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


# only configured names: tables/{dataset}.parquet must not match tables/<name>_health.parquet
wildcard_constraints:
    dataset=alternatives(list(config["datasets"])),


# -- input functions and parameters: wildcards -> bsym.workflow ----------------------------
def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def model_config(wildcards):
    return config["models"][wildcards.model]


def prepare_command(wildcards, output):
    return f"{BSYM} {prepare_arguments(dataset_config(wildcards), output, workflow.basedir)}"


def tracking_args(wildcards):
    return options.tracking_options(config)


def tracking_marker(wildcards):
    """The experiment, created once before tracked jobs run in parallel (none if off)."""
    return [TRACKING_MARKER] if TRACKING["enabled"] else []


def task_args(wildcards):
    return options.task_options(wildcards.task, config["tasks"][wildcards.task])


def task_label(wildcards):
    return options.task_label(wildcards.task, config["tasks"][wildcards.task])


def probe_args(wildcards):
    return options.probe_options(wildcards.task, config["tasks"][wildcards.task])


def pretrain_args(wildcards):
    return options.pretrain_options(config, wildcards.dataset, wildcards.model)


def pretrain_fraction(wildcards):
    return options.pretrain_fraction(config, wildcards.dataset)


def split_args(wildcards):
    return options.split_options(SPLITS, wildcards.seed)


def view_args(wildcards):
    return options.view_option(model_config(wildcards))


def single_view_args(wildcards):
    return options.single_view_option(model_config(wildcards))


def baseline_args(wildcards):
    return options.baseline_options(config, wildcards.dataset, wildcards.baseline)


def sweep_args(wildcards):
    return options.sweep_options(config["sweeps"], wildcards.baseline)


def sweep_result(wildcards):
    w = wildcards
    return PLAN.sweep_results(w.dataset, w.baseline, w.task, w.seed)


def result_tables(wildcards):
    return PLAN.result_tables(wildcards.dataset)


def health_tables(wildcards):
    return PLAN.health_tables(wildcards.dataset)


def attention_outputs(wildcards):
    return PLAN.attention_outputs(wildcards.dataset)


# -- jobs running every task of a dataset: one `bsym batch` with a command per task --------
def batch_commands(tasks, command):
    """A params function: the `bsym batch` options of a rule running ``tasks``, with
    ``command(wildcards, input, task, splits, results)`` per task."""

    def commands(wildcards, input, output):
        jobs = zip(tasks, input.splits, output)
        return options.batch_options(command(wildcards, input, *job) for job in jobs)

    return commands


def probe_embeddings_command(wildcards, input, task, splits, results):
    w = wildcards
    source = options.embedding_source(w.model, model_config(w), input.embeddings)
    return options.probe_command(
        config, w.dataset, task, source, input.store, splits, results
    )


def probe_connectome_command(wildcards, input, task, splits, results):
    source = f"--features {wildcards.features}"
    return options.probe_command(
        config, wildcards.dataset, task, source, input.store, splits, results
    )


def supervised_command(wildcards, input, task, splits, results):
    w = wildcards
    swept = PLAN.sweep_results(w.dataset, w.baseline, task, w.seed)
    return options.supervised_command(
        config, w.dataset, w.baseline, task, input.store, splits, results, swept
    )


def swept_results(tasks):
    """An input function: the sweep results a supervised job of ``tasks`` reads."""

    def sweeps(wildcards):
        w = wildcards
        return [
            p
            for t in tasks
            for p in PLAN.sweep_results(w.dataset, w.baseline, t, w.seed)
        ]

    return sweeps
