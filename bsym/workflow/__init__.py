"""The Snakemake workflow's decisions in plain Python, so that pytest covers them.

The rule files (``workflow/rules/*.smk``) only glue these functions to wildcards; the
configuration they read has been validated against ``workflow/schemas/config.schema.yaml``
with its defaults filled in, so every key is present and a default lives only there.
Importing this package imports nothing beyond the standard library.

Modules
-------
sources
    The data sources a workflow dataset can have, what each provides (network labels,
    pre and post sessions) and the ``bsym data`` command that prepares it.
plan
    Which jobs run on a dataset: its tasks, the models scored there, the per-job tables
    merged into its result table, the GPUs a job asks for, the datasets that share a task
    list (one job runs all its tasks).
options
    The command-line options of ``bsym pretrain | splits | probe | finetune | supervised |
    sweep`` and of MLflow tracking, built from configuration blocks, and the per-task
    ``probe`` and ``supervised`` command lines that one ``bsym batch`` job runs.
checks
    Checks across configuration keys that the schema cannot express (names that must
    refer to configured datasets, tasks or models).
"""
