"""Optuna sweeps: search spaces, resumable parallel studies, MLflow logging.

:func:`run_sweep` optimises any ``objective(params, report) -> float`` over a
search space parsed from a plain dict, in an Optuna journal file shared by
worker processes, with a seeded TPE sampler and a median pruner; it logs a
parent MLflow run per study and a nested run per trial.

Examples
--------
>>> from bsym.sweep import run_sweep, write_summary                 # doctest: +SKIP
>>> def objective(params, report):                                  # doctest: +SKIP
...     for epoch in range(10):
...         loss = train_one_epoch(params)
...         report(loss, epoch)
...     return loss
>>> result = run_sweep(objective, {"lr": {"type": "float", "low": 1e-4, "high": 1e-2,
...                                       "log": True}},
...                    storage="results/sweeps/probe.journal", study_name="probe",
...                    n_trials=20, seed=0)                          # doctest: +SKIP
>>> write_summary(result, "results/sweeps/probe.json")              # doctest: +SKIP
"""

from bsym._lazy import lazy_exports

# Names resolve lazily (PEP 562): the command line imports bsym.sweep.cli without Optuna.
_EXPORTS = {
    "SweepError": "bsym.sweep.errors",
    "fail_stale_trials": "bsym.sweep.liveness",
    "SweepResult": "bsym.sweep.result",
    "summarize_study": "bsym.sweep.result",
    "write_summary": "bsym.sweep.result",
    "Report": "bsym.sweep.run",
    "load_study": "bsym.sweep.run",
    "run_sweep": "bsym.sweep.run",
    "SeededTPESampler": "bsym.sweep.sampling",
    "make_pruner": "bsym.sweep.sampling",
    "make_sampler": "bsym.sweep.sampling",
    "CategoricalParam": "bsym.sweep.space",
    "FloatParam": "bsym.sweep.space",
    "IntParam": "bsym.sweep.space",
    "SearchSpace": "bsym.sweep.space",
    "parse_space": "bsym.sweep.space",
    "suggest_params": "bsym.sweep.space",
    "journal_storage": "bsym.sweep.storage",
    "open_study": "bsym.sweep.storage",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
