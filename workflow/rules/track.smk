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
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        bsym=BSYM,
        uri=options.tracking_uri(config),
        experiment=TRACKING["experiment"],
    shell:
        "{params.bsym} tracking init --tracking-uri {params.uri}"
        " --experiment {params.experiment} --out {output} > {log} 2>&1"


# The leaderboard run of each reported dataset: its leaderboard table, report, figures and
# result table in one MLflow run (tag bsym.kind=leaderboard), replaced on every rerun.


rule tracking_leaderboard:
    input:
        marker=TRACKING_MARKER,
        table=f"{RESULTS}/tables/{{dataset}}.parquet",
        html=f"{RESULTS}/report/{{dataset}}/report.html",
        figures=f"{RESULTS}/report/{{dataset}}/figures",
        tables=f"{RESULTS}/report/{{dataset}}/tables",
    output:
        f"{RESULTS}/tracking/leaderboard/{{dataset}}.json",
    log:
        f"{RESULTS}/logs/tracking_leaderboard/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/tracking_leaderboard/{{dataset}}.tsv"
    conda:
        "../envs/bsym.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        bsym=BSYM,
        uri=options.tracking_uri(config),
        experiment=TRACKING["experiment"],
        report=lambda wildcards, input: os.path.dirname(input.html),
    shell:
        "{params.bsym} tracking leaderboard --results {input.table}"
        " --report-dir {params.report} --dataset {wildcards.dataset}"
        " --tracking-uri {params.uri} --experiment {params.experiment} --out {output}"
        " > {log} 2>&1"
