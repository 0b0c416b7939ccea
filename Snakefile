"""bsym: the benchmark as one DAG. Thin: configuration, validation, rule files, targets."""

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "workflow/config/default.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"


rule all:
    default_target: True
    input:
        expand(
            "{results}/data/{dataset}.summary.txt",
            results=config["results"],
            dataset=list(config["datasets"]),
        ),
