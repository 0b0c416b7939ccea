# Self-supervised pretraining: the pretraining cohort (subjects never probed), then one
# `bsym pretrain` run per configured model and dataset.


wildcard_constraints:
    model=alternatives(SSL_MODELS),


rule pretrain_split:
    input:
        store=f"{RESULTS}/data/{{dataset}}",
        validated=f"{RESULTS}/data/{{dataset}}.summary.txt",
    output:
        split=f"{RESULTS}/splits/{{dataset}}/pretrain.json",
        subjects=f"{RESULTS}/splits/{{dataset}}/pretrain_subjects.txt",
        validation=f"{RESULTS}/splits/{{dataset}}/pretrain_val_subjects.txt",
        probed=f"{RESULTS}/splits/{{dataset}}/probe_subjects.txt",
    log:
        f"{RESULTS}/logs/pretrain_split/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/pretrain_split/{{dataset}}.tsv"
    conda:
        "../envs/bsym.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        bsym=BSYM,
        fraction=pretrain_fraction,
        seed=PRETRAIN["split_seed"],
        group_by=SPLITS["group_by"],
        stratify=options.stratify_option(PRETRAIN),
        validation=PRETRAIN["val_subjects"],
    shell:
        "{params.bsym} splits --data {input.store} --pretrain-fraction {params.fraction}"
        " --seed {params.seed} --group-by {params.group_by} {params.stratify}"
        " --splits {output.split} --subjects-out {output.subjects}"
        " --val-subjects {params.validation} --val-subjects-out {output.validation}"
        " --probe-subjects-out {output.probed}"
        " > {log} 2>&1"


rule pretrain:
    input:
        store=f"{RESULTS}/data/{{dataset}}",
        subjects=f"{RESULTS}/splits/{{dataset}}/pretrain_subjects.txt",
        validation=f"{RESULTS}/splits/{{dataset}}/pretrain_val_subjects.txt",
        tracking=tracking_marker,
    output:
        directory(f"{RESULTS}/pretrain/{{dataset}}/{{model}}"),
    log:
        f"{RESULTS}/logs/pretrain/{{dataset}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/pretrain/{{dataset}}/{{model}}.tsv"
    # heads of the longest chains (pretrain -> embed -> probes, health, netid -> report):
    # started as soon as ready, so the short jobs behind them fill the cores, not trail
    priority: 10
    conda:
        "../envs/bsym.yaml"
    threads: PRETRAIN["threads"]
    resources:
        gpu=gpus(PRETRAIN["device"]),
        mem_mb=PRETRAIN["mem_mb"],
        runtime=PRETRAIN["runtime"],
    params:
        bsym=BSYM,
        args=pretrain_args,
        tracking=tracking_args,
        validation=lambda wildcards, input: (
            f"--val-subjects-file {input.validation}"
            if PRETRAIN["val_subjects"]
            else ""
        ),
    shell:
        "OMP_NUM_THREADS={threads} {params.bsym} pretrain --model {wildcards.model}"
        " --data {input.store} --out {output} --subjects-file {input.subjects}"
        " {params.validation} {params.args} {params.tracking} --quiet > {log} 2>&1"
