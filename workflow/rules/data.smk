rule prepare_dataset:
    output:
        directory(f"{RESULTS}/data/{{dataset}}"),
    log:
        f"{RESULTS}/logs/prepare_dataset/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/prepare_dataset/{{dataset}}.tsv"
    conda:
        "../envs/bsym.yaml"
    resources:
        mem_mb=lambda wildcards: dataset_config(wildcards)["mem_mb"],
        runtime=lambda wildcards: dataset_config(wildcards)["runtime"],
    params:
        command=prepare_command,
    shell:
        "{params.command} > {log} 2>&1"


rule validate_dataset:
    input:
        f"{RESULTS}/data/{{dataset}}",
    output:
        f"{RESULTS}/data/{{dataset}}.summary.txt",
    log:
        f"{RESULTS}/logs/validate_dataset/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/validate_dataset/{{dataset}}.tsv"
    conda:
        "../envs/bsym.yaml"
    resources:
        mem_mb=lambda wildcards: dataset_config(wildcards)["mem_mb"],
        runtime=lambda wildcards: dataset_config(wildcards)["runtime"],
    params:
        bsym=BSYM,
    shell:
        "({params.bsym} data validate {input} --quiet && {params.bsym} data info {input}"
        " > {output}.tmp && mv {output}.tmp {output}) > {log} 2>&1"
