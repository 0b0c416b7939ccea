# Optuna sweeps of supervised baselines: one study per outer fold, scored on that fold's
# inner folds only, in a journal file that is not a rule output, so a killed sweep resumes
# where it stopped and parallel workers (e.g. on a cluster) can share it.


rule sweep:
    input:
        store=f"{RESULTS}/data/{{dataset}}",
        splits=f"{RESULTS}/splits/{{dataset}}/{{task}}/seed{{seed}}.json",
        tracking=tracking_marker,
    output:
        f"{RESULTS}/sweeps/{{dataset}}/{{baseline}}/{{task}}/seed{{seed}}.json",
    log:
        f"{RESULTS}/logs/sweep/{{dataset}}/{{baseline}}/{{task}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/sweep/{{dataset}}/{{baseline}}/{{task}}/seed{{seed}}.tsv"
    # head of the chain sweep -> supervised -> result table: started as soon as ready
    priority: 10
    conda:
        "../envs/bsym.yaml"
    threads: SUPERVISED["threads"]
    resources:
        gpu=gpus(SUPERVISED["training"]["device"]),
        mem_mb=SUPERVISED["mem_mb"],
        runtime=2 * SUPERVISED["runtime"],
    params:
        bsym=BSYM,
        task=task_args,
        args=baseline_args,
        search=sweep_args,
        storage=lambda wildcards, output: f"{os.path.splitext(output[0])[0]}.journal",
        tracking=tracking_args,
    shell:
        "OMP_NUM_THREADS={threads} {params.bsym} sweep --model {wildcards.baseline}"
        " --data {input.store} {params.task} {params.args} {params.search}"
        " --dataset {wildcards.dataset} --splits {input.splits}"
        " --storage {params.storage} --out {output} {params.tracking} --quiet > {log} 2>&1"
