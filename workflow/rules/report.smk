# The report: statistics, figures and the HTML/Markdown report of each dataset's result
# table, also registered with `snakemake --report`.


rule report:
    input:
        table=f"{RESULTS}/tables/{{dataset}}.parquet",
        health=lambda wildcards: (
            [f"{RESULTS}/tables/{wildcards.dataset}_health.parquet"]
            if SSL_MODELS
            else []
        ),
        curves=lambda wildcards: expand(
            f"{RESULTS}/health/{wildcards.dataset}/{{model}}_loss.png",
            model=SSL_MODELS,
        ),
        netid=lambda wildcards: expand(
            f"{RESULTS}/netid/{wildcards.dataset}/{{model}}.png",
            model=PLAN.netid_models(wildcards.dataset),
        ),
        attention=attention_outputs,
    output:
        html=report(
            f"{RESULTS}/report/{{dataset}}/report.html",
            caption="../report/report.rst",
            category="Report",
        ),
        markdown=f"{RESULTS}/report/{{dataset}}/report.md",
        figures=report(
            directory(f"{RESULTS}/report/{{dataset}}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
        tables=directory(f"{RESULTS}/report/{{dataset}}/tables"),
    log:
        f"{RESULTS}/logs/report/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rules/report/{{dataset}}.tsv"
    conda:
        "../envs/bsym.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        bsym=BSYM,
        out=lambda wildcards, output: os.path.dirname(output.html),
        figures=lambda wildcards, input: " ".join(
            [
                *(f"--netid-figure {path}" for path in input.netid),
                *(f"--attention {path}" for path in input.attention),
                *(f"--health {path}" for path in input.health),
                *(f"--loss-figure {path}" for path in input.curves),
            ]
        ),
    shell:
        "{params.bsym} report --results {input.table} --out {params.out} {params.figures}"
        " --title 'bsym: {wildcards.dataset}' > {log} 2>&1"
