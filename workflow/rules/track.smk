# The MLflow store and experiment, created once before tracked jobs run in parallel.


rule tracking_experiment:
    output:
        TRACKING_MARKER,
    log:
        f"{RESULTS}/logs/tracking_experiment.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/tracking_experiment.tsv"
    conda:
        "../envs/bsym.yaml"
    params:
        bsym=BSYM,
        uri=tracking_uri(),
        experiment=TRACKING.get("experiment", "bsym"),
    shell:
        "{params.bsym} tracking init --tracking-uri {params.uri}"
        " --experiment {params.experiment} --out {output} > {log} 2>&1"
