# Evaluation: embeddings of every scan (final weights and kept snapshots), training health
# of every pretraining run, task split files, linear probes (and the connectome baseline)
# per model x split seed (every task in one job) with their controls, fine-tuning of pretrained encoders,
# supervised baselines trained per fold, network identification (with its controls) and
# attention contrasts per model, and one long result table per dataset merged from the
# per-job tables.


wildcard_constraints:
    task=alternatives(list(config["tasks"])),
    features=alternatives(PLAN.features),
    seed=r"\d+",
    baseline=alternatives(BASELINES),


rule embed:
    input:
        store=f"{RESULTS}/data/{{dataset}}",
        run=f"{RESULTS}/pretrain/{{dataset}}/{{model}}",
        probed=f"{RESULTS}/splits/{{dataset}}/probe_subjects.txt",
    output:
        directory(f"{RESULTS}/embeddings/{{dataset}}/{{model}}"),
    log:
        f"{RESULTS}/logs/embed/{{dataset}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/embed/{{dataset}}/{{model}}.tsv"
    # heads of the longest chains (pretrain -> embed -> probes, health, netid -> report):
    # started as soon as ready, so the short jobs behind them fill the cores, not trail
    priority: 10
    conda:
        "../envs/bsym.yaml"
    threads: EMBED["threads"]
    resources:
        gpu=gpus(EMBED["device"]),
        mem_mb=EMBED["mem_mb"],
        runtime=EMBED["runtime"],
    params:
        bsym=BSYM,
        device=EMBED["device"],
        batch_size=EMBED["batch_size"],
    shell:
        "OMP_NUM_THREADS={threads} {params.bsym} embed --run {input.run}"
        " --data {input.store} --out {output} --device {params.device}"
        " --subjects-file {input.probed}"
        " --batch-size {params.batch_size} --quiet > {log} 2>&1"


rule health:
    input:
        store=f"{RESULTS}/data/{{dataset}}",
        run=f"{RESULTS}/pretrain/{{dataset}}/{{model}}",
        embeddings=f"{RESULTS}/embeddings/{{dataset}}/{{model}}",
        tracking=tracking_marker,
    output:
        table=f"{RESULTS}/health/{{dataset}}/{{model}}.parquet",
        figure=f"{RESULTS}/health/{{dataset}}/{{model}}_loss.png",
    log:
        f"{RESULTS}/logs/health/{{dataset}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/health/{{dataset}}/{{model}}.tsv"
    conda:
        "../envs/bsym.yaml"
    threads: 1
    resources:
        gpu=gpus(EMBED["device"]),
        mem_mb=2000,
        runtime=20,
    params:
        bsym=BSYM,
        max_windows=config["health"]["max_windows"],
        seed=config["health"]["seed"],
        device=EMBED["device"],
        tracking=tracking_args,
    shell:
        "OMP_NUM_THREADS={threads} {params.bsym} health --checkpoint {input.run}/final.pt"
        " --data {input.store} --embeddings {input.embeddings}/final.npz"
        " --out {output.table} --figure {output.figure} --max-windows {params.max_windows}"
        " --seed {params.seed} --device {params.device} {params.tracking} --quiet"
        " > {log} 2>&1"


rule health_table:
    input:
        health_tables,
    output:
        f"{RESULTS}/tables/{{dataset}}_health.parquet",
    log:
        f"{RESULTS}/logs/health_table/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/health_table/{{dataset}}.tsv"
    conda:
        "../envs/bsym.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        python=PYTHON,
        code=(
            "import sys, pandas as pd; "
            "t = pd.concat([pd.read_parquet(p) for p in sys.argv[2:]], ignore_index=True); "
            "t.to_parquet(sys.argv[1], index=False); "
            "print(len(t), 'rows from', len(sys.argv) - 2, 'tables')"
        ),
    shell:
        "({params.python} -c {params.code:q} {output}.tmp {input}"
        " && mv {output}.tmp {output}) > {log} 2>&1"


rule task_split:
    input:
        store=f"{RESULTS}/data/{{dataset}}",
        pretrain=f"{RESULTS}/splits/{{dataset}}/pretrain.json",
    output:
        f"{RESULTS}/splits/{{dataset}}/{{task}}/seed{{seed}}.json",
    log:
        f"{RESULTS}/logs/task_split/{{dataset}}/{{task}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/task_split/{{dataset}}/{{task}}/seed{{seed}}.tsv"
    # seconds long, and every probe, sweep and training job waits for it
    priority: 10
    conda:
        "../envs/bsym.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        bsym=BSYM,
        label=task_label,
        split=split_args,
    shell:
        "{params.bsym} splits --data {input.store} --task {params.label} {params.split}"
        " --pretrain-split {input.pretrain} --splits {output} > {log} 2>&1"


# One job runs all the tasks of a dataset for one model (or baseline) and split seed, as one
# `bsym batch` process: torch, scikit-learn and MLflow start once, not once per task. Each
# task keeps its own table (a rerun resumes from the folds it holds). A rule lists its
# tasks as outputs, so it is defined once per distinct task list of the datasets.
for index, (datasets, tasks) in enumerate(PLAN.task_groups()):

    rule:
        name:
            rule_name("probe_embeddings", index)
        input:
            store=f"{RESULTS}/data/{{dataset}}",
            embeddings=f"{RESULTS}/embeddings/{{dataset}}/{{model}}",
            splits=[
                f"{RESULTS}/splits/{{dataset}}/{t}/seed{{seed}}.json" for t in tasks
            ],
            tracking=tracking_marker,
        output:
            [
                f"{RESULTS}/probe/{{dataset}}/{{model}}/{t}/seed{{seed}}.parquet"
                for t in tasks
            ],
        log:
            f"{RESULTS}/logs/probe/{{dataset}}/{{model}}/seed{{seed}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/rules/probe/{{dataset}}/{{model}}/seed{{seed}}.tsv"
        wildcard_constraints:
            dataset=alternatives(datasets),
        conda:
            "../envs/bsym.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=20 * len(tasks),
        params:
            bsym=BSYM,
            commands=batch_commands(tasks, probe_embeddings_command),
        shell:
            "OMP_NUM_THREADS={threads} {params.bsym} batch {params.commands} > {log} 2>&1"

    rule:
        name:
            rule_name("probe_connectome", index)
        input:
            store=f"{RESULTS}/data/{{dataset}}",
            splits=[
                f"{RESULTS}/splits/{{dataset}}/{t}/seed{{seed}}.json" for t in tasks
            ],
            tracking=tracking_marker,
        output:
            [
                f"{RESULTS}/probe/{{dataset}}/connectome-{{features}}/{t}/seed{{seed}}.parquet"
                for t in tasks
            ],
        log:
            f"{RESULTS}/logs/probe/{{dataset}}/connectome-{{features}}/seed{{seed}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/rules/probe/{{dataset}}/connectome-{{features}}/seed{{seed}}.tsv"
        wildcard_constraints:
            dataset=alternatives(datasets),
        conda:
            "../envs/bsym.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=20 * len(tasks),
        params:
            bsym=BSYM,
            commands=batch_commands(tasks, probe_connectome_command),
        shell:
            "OMP_NUM_THREADS={threads} {params.bsym} batch {params.commands} > {log} 2>&1"


rule finetune:
    input:
        store=f"{RESULTS}/data/{{dataset}}",
        run=f"{RESULTS}/pretrain/{{dataset}}/{{model}}",
        splits=f"{RESULTS}/splits/{{dataset}}/{{task}}/seed{{seed}}.json",
        tracking=tracking_marker,
    output:
        f"{RESULTS}/finetune/{{dataset}}/{{model}}/{{task}}/seed{{seed}}.parquet",
    log:
        f"{RESULTS}/logs/finetune/{{dataset}}/{{model}}/{{task}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/finetune/{{dataset}}/{{model}}/{{task}}/seed{{seed}}.tsv"
    # long jobs first, so that the short ones (probes, netid, health) fill the last minutes
    priority: 5
    conda:
        "../envs/bsym.yaml"
    threads: FINETUNE["threads"]
    resources:
        gpu=gpus(FINETUNE["training"]["device"]),
        mem_mb=FINETUNE["mem_mb"],
        runtime=FINETUNE["runtime"],
    params:
        bsym=BSYM,
        task=task_args,
        view=single_view_args,
        training=options.training_options(FINETUNE["training"]),
        freeze=options.freeze_option(FINETUNE),
        scale=f"--encoder-lr-scale {FINETUNE['encoder_lr_scale']}",
        windows=options.max_windows_option(FINETUNE),
        tracking=tracking_args,
    shell:
        "OMP_NUM_THREADS={threads} {params.bsym} finetune --checkpoint {input.run}/final.pt"
        " --data {input.store} {params.task} {params.view} {params.training} {params.freeze}"
        " {params.scale}"
        " {params.windows}"
        " --model {wildcards.model} --dataset {wildcards.dataset} --splits {input.splits}"
        " --results {output} {params.tracking} --quiet > {log} 2>&1"


# supervised baselines: one job per dataset x baseline x split seed, every subject-level task
for index, (datasets, tasks) in enumerate(PLAN.task_groups(subject_level=True)):

    rule:
        name:
            rule_name("supervised", index)
        input:
            store=f"{RESULTS}/data/{{dataset}}",
            splits=[
                f"{RESULTS}/splits/{{dataset}}/{t}/seed{{seed}}.json" for t in tasks
            ],
            sweep=swept_results(tasks),
            tracking=tracking_marker,
        output:
            [
                f"{RESULTS}/supervised/{{dataset}}/{{baseline}}/{t}/seed{{seed}}.parquet"
                for t in tasks
            ],
        log:
            f"{RESULTS}/logs/supervised/{{dataset}}/{{baseline}}/seed{{seed}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/rules/supervised/{{dataset}}/{{baseline}}/seed{{seed}}.tsv"
        wildcard_constraints:
            dataset=alternatives(datasets),
        # long jobs first, so that the short ones fill the last minutes
        priority: 5
        conda:
            "../envs/bsym.yaml"
        threads: SUPERVISED["threads"]
        resources:
            gpu=gpus(SUPERVISED["training"]["device"]),
            mem_mb=SUPERVISED["mem_mb"],
            runtime=SUPERVISED["runtime"] * len(tasks),
        params:
            bsym=BSYM,
            commands=batch_commands(tasks, supervised_command),
        shell:
            "OMP_NUM_THREADS={threads} {params.bsym} batch {params.commands} > {log} 2>&1"


rule attention:
    input:
        store=f"{RESULTS}/data/{{dataset}}",
        run=f"{RESULTS}/pretrain/{{dataset}}/{{model}}",
    output:
        directory(f"{RESULTS}/attention/{{dataset}}/{{model}}"),
    log:
        f"{RESULTS}/logs/attention/{{dataset}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/attention/{{dataset}}/{{model}}.tsv"
    conda:
        "../envs/bsym.yaml"
    threads: EMBED["threads"]
    resources:
        gpu=gpus(EMBED["device"]),
        mem_mb=EMBED["mem_mb"],
        runtime=EMBED["runtime"],
    params:
        bsym=BSYM,
        factor=ATTENTION["factor"],
        levels=",".join(ATTENTION["levels"]),
        permutations=ATTENTION["permutations"],
        alpha=ATTENTION["alpha"],
        device=EMBED["device"],
    shell:
        "OMP_NUM_THREADS={threads} {params.bsym} attention --checkpoint {input.run}/final.pt"
        " --data {input.store} --out {output} --factor {params.factor}"
        " --levels {params.levels} --permutations {params.permutations}"
        " --alpha {params.alpha} --device {params.device} --quiet > {log} 2>&1"


rule netid:
    input:
        store=f"{RESULTS}/data/{{dataset}}",
        embeddings=f"{RESULTS}/embeddings/{{dataset}}/{{model}}",
        tracking=tracking_marker,
    output:
        table=f"{RESULTS}/netid/{{dataset}}/{{model}}.parquet",
        figure=f"{RESULTS}/netid/{{dataset}}/{{model}}.png",
    log:
        f"{RESULTS}/logs/netid/{{dataset}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/netid/{{dataset}}/{{model}}.tsv"
    conda:
        "../envs/bsym.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        bsym=BSYM,
        view=single_view_args,
        seeds=config["netid"]["seeds"],
        permutations=config["netid"]["permutations"],
        neighbors=config["netid"]["neighbors"],
        tracking=tracking_args,
    shell:
        "OMP_NUM_THREADS={threads} {params.bsym} netid --embeddings {input.embeddings}"
        " --data {input.store} {params.view} --seeds {params.seeds}"
        " --permutations {params.permutations} --neighbors {params.neighbors}"
        " --model {wildcards.model}"
        " --dataset {wildcards.dataset} --results {output.table}"
        " --figure {output.figure} {params.tracking} --quiet > {log} 2>&1"


rule result_table:
    input:
        result_tables,
    output:
        f"{RESULTS}/tables/{{dataset}}.parquet",
    log:
        f"{RESULTS}/logs/result_table/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/result_table/{{dataset}}.tsv"
    conda:
        "../envs/bsym.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        python=PYTHON,
        # concatenation only: rows are made and keyed by bsym.evaluate.results; a row every
        # netid job repeats (the FC- and SC-row baselines) is kept once
        code=(
            "import sys, pandas as pd; "
            "from bsym.evaluate.results import KEY_COLUMNS, ResultTable; "
            "t = pd.concat([ResultTable(p).read() for p in sys.argv[2:]], ignore_index=True); "
            "t = t.drop_duplicates(subset=list(KEY_COLUMNS), keep='last'); "
            "t.to_parquet(sys.argv[1], index=False); "
            "print(len(t), 'rows from', len(sys.argv) - 2, 'tables')"
        ),
    shell:
        "({params.python} -c {params.code:q} {output}.tmp {input}"
        " && mv {output}.tmp {output}) > {log} 2>&1"
