"""``bsym sweep``: nested hyper-parameter search for a supervised baseline, one study per
outer fold on that fold's inner folds only.

Importing this module imports neither torch, Optuna nor MLflow.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from bsym.errors import UsageError


def _space(text):
    """A search space from inline JSON or a JSON/YAML file."""
    path = Path(text)
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.exists():
        if not path.exists():
            raise UsageError(f"--space {text}: no such file")
        import yaml

        return yaml.safe_load(path.read_text())
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"--space: expected a JSON object or a JSON/YAML file, received "
                         f"{text!r} ({err})") from None


def study_name(dataset, model, task, seed, fold):
    return f"{dataset}-{model}-{task}-seed{seed}-fold{fold}"


def sweep_folds(args):
    """Run (or resume) one study per chosen outer fold; returns the result document."""
    from bsym.evaluate.cli_options import cohort_and_splits, open_tracker, training_fields
    from bsym.evaluate.foldtrain import TrainingConfig

    space_spec, space = _read_space(args.space)
    check_outputs(args)
    cohort, splits = cohort_and_splits(args)
    dataset = args.dataset or cohort.path.name
    config = TrainingConfig(**training_fields(args))
    tracker = open_tracker(args)
    folds = range(len(splits)) if args.fold is None else args.fold
    storage = args.storage if "://" in str(args.storage) else Path(args.storage)
    objective_hash = _objective_hash(args)
    names = [study_name(dataset, args.model, args.task, splits.seed, index) for index in folds]
    _check_existing_studies(storage, names, {
        "bsym.space": (space.to_dict(), "search space"),
        "bsym.seed": (args.sampler_seed, "seed"), "bsym.split": (splits.sha256, "split"),
        "bsym.objective": (objective_hash, "objective")})
    sweep = functools.partial(
        _sweep_fold, args, space_spec=space_spec, storage=str(storage), tracker=tracker,
        study_attrs={"split": splits.sha256, "objective": objective_hash})
    done = {}
    for index, name in zip(folds, names):
        objective = _fold_objective(args, cohort, splits, index, config)
        tags = {"model": args.model, "dataset": dataset, "task": args.task, "protocol": "sweep",
                "seed": str(splits.seed), "fold": str(index), "split_hash": splits.sha256}
        done[str(index)] = sweep(objective, index, name, tags)
    return {"model": args.model, "preset": args.preset, "dataset": dataset, "task": args.task,
            "space": space.to_dict(), "trials": args.trials, "sampler_seed": args.sampler_seed,
            "objective": "mean best validation loss over the outer fold's inner folds",
            "split_hash": splits.sha256, "storage": str(storage), "folds": done}


def _read_space(text):
    """The ``--space`` spec and its parsed search space, every name a training field or a
    ``model.<argument>``."""
    from bsym.evaluate.supervised import split_params
    from bsym.sweep import parse_space

    space_spec = _space(text)
    space = parse_space(space_spec)
    for name in space.names:
        split_params({name: None})  # raises on a name that is neither
    return space_spec, space


def _objective_hash(args):
    """What every study answers: resuming one made for another objective is refused."""
    from bsym.evaluate.cli_options import training_fields
    from bsym.io import json_sha256

    return json_sha256({
        "model": args.model, "preset": args.preset, "model_args": dict(args.model_arg),
        "training": {k: v for k, v in training_fields(args).items() if k != "device"},
        "window": args.window,
        "target_tr": args.target_tr, "max_windows": args.max_windows,
        "task_type": args.task_type})


def _check_existing_studies(storage, names, attrs):
    """Refuse, before any trial runs, a journal whose studies were made for another space,
    seed, split or objective (``attrs``: ``{attribute: (value, what)}``)."""
    if not (isinstance(storage, Path) and storage.exists()):
        return
    from bsym.sweep.storage import check_existing_study, journal_storage

    opened = journal_storage(storage)
    for name in names:
        check_existing_study(opened, name, attrs, where=storage)


def _fold_objective(args, cohort, splits, index, config):
    from bsym.evaluate.supervised import supervised_objective

    return supervised_objective(args.model, cohort, splits, args.task, index,
                                preset=args.preset, model_args=dict(args.model_arg),
                                config=config, window=args.window, target_tr=args.target_tr,
                                max_windows=args.max_windows, task=args.task_type)


def _sweep_fold(args, objective, index, name, tags, *, space_spec, storage, tracker,
                study_attrs):
    """Run (or resume) the study of outer fold ``index``; its entry of the result document."""
    from bsym.sweep import SweepError, run_sweep

    result = run_sweep(objective, space_spec, storage=storage, study_name=name,
                       n_trials=args.trials, seed=args.sampler_seed,
                       pruner_startup_trials=args.pruner_startup_trials,
                       pruner_warmup_steps=args.pruner_warmup_steps,
                       n_startup_trials=args.startup_trials, tracker=tracker, tags=tags,
                       progress=not args.quiet, study_attrs=study_attrs)
    if result.n_finished < args.trials or result.best_params is None:
        raise SweepError(f"study {name}: {result.n_finished} of {args.trials} trials "
                         f"finished ({result.n_running} still running elsewhere, "
                         f"{result.n_failed} failed); run the sweep again to finish it")
    if not args.quiet:
        print(f"fold {index}: best inner validation loss {result.best_value:.4f} with "
              f"{result.best_params} ({result.n_complete} complete, {result.n_pruned} "
              "pruned)")
    return {"params": result.best_params, "value": result.best_value,
            "best_trial": result.best_trial, "study": name,
            "n_complete": result.n_complete, "n_pruned": result.n_pruned,
            "n_failed": result.n_failed}


def check_outputs(args):
    """Refuse, before any work, a --out that is not a sweep result bsym wrote and a
    --storage file that is not an Optuna journal."""
    from bsym.io import check_writable, guard_output
    from bsym.sweep.result import summary_is_ours
    from bsym.sweep.storage import check_journal

    guard_output(args.out, is_ours=summary_is_ours, what="sweep result", overwrite=True,
                 fix_other="choose another --out path, or move this file away yourself")
    if "://" not in str(args.storage):
        check_writable(args.storage,
                       fix="choose a --storage path in a folder you can write to")
        check_journal(args.storage)


def _sweep(args):
    from bsym.sweep import write_summary

    document = sweep_folds(args)
    write_summary(document, args.out)
    print(f"sweep of {args.model} on {args.task}: {len(document['folds'])} fold studies in "
          f"{args.storage}; best parameters per fold in {args.out} (`bsym supervised "
          "--params`)")


def add_parser(subparsers):
    from bsym.evaluate.cli_options import (
        add_baseline_options,
        add_output_options,
        add_split_options,
        add_task_options,
        add_training_options,
    )

    p = subparsers.add_parser(
        "sweep", help="nested Optuna search of a supervised baseline's hyper-parameters",
        description="One Optuna study per outer fold, scored by the mean best validation loss "
        "over that fold's inner folds (its test subjects are never read): seeded TPE sampler, "
        "median pruning after each inner fold, journal-file storage shared by parallel "
        "workers, resumable after a kill; every trial is an MLflow run nested under its "
        "study's run. Writes each fold's best parameters for `bsym supervised --params`.")
    add_baseline_options(p)
    add_task_options(p)
    s = p.add_argument_group("search")
    s.add_argument("--space", required=True,
                   help="search space: inline JSON or a JSON/YAML file, e.g. "
                   '\'{"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": true}, '
                   '"model.dropout": {"type": "float", "low": 0, "high": 0.5}}\'')
    s.add_argument("--trials", type=int, default=20, help="finished trials per fold study")
    s.add_argument("--sampler-seed", type=int, default=0, help="TPE sampler seed")
    s.add_argument("--startup-trials", type=int, default=10,
                   help="random trials before TPE models the space")
    s.add_argument("--pruner-startup-trials", type=int, default=5,
                   help="trials before the median pruner may prune")
    s.add_argument("--pruner-warmup-steps", type=int, default=0,
                   help="inner folds before a trial may be pruned")
    s.add_argument("--storage", required=True,
                   help="Optuna journal file (or an SQLAlchemy URL) shared by workers")
    s.add_argument("--out", required=True, help="best parameters per fold (JSON)")
    add_training_options(p)
    add_split_options(p)
    add_output_options(p, results=False)
    p.set_defaults(func=_sweep)
    return p
