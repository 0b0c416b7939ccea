"""Command-line options shared by the evaluation and sweep commands, and what they become.

Each ``add_*`` function adds one group of options to a command's parser, defined once for
every command that takes it. The readers (:func:`open_tracker`, :func:`open_results`,
:func:`task_splits`, :func:`cohort_and_splits`, :func:`training_fields`) turn the parsed
options into the objects a command works with, checking them before any work.

Importing this module imports neither torch, scikit-learn nor MLflow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_RESULTS = "results/results.parquet"
FEATURE_KINDS = ("fc", "sc", "fc+sc")
TASK_TYPES = ("classification", "regression")


# -- argument types ------------------------------------------------------------------------
def comma_list(text):
    """``"a, b,"`` -> ``("a", "b")``."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def comma_ints(text):
    """``"0,2"`` -> ``(0, 2)``; anything else is a usage error."""
    try:
        return tuple(int(part) for part in comma_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None


# -- data and task -------------------------------------------------------------------------
def add_store_option(parser, help="cohort store directory"):
    parser.add_argument("--data", required=True, help=help)


def add_label_options(parser, task_type_help=None):
    """``--task`` (the label to predict) and ``--task-type``."""
    parser.add_argument("--task", required=True, help="label column to predict")
    parser.add_argument("--task-type", choices=TASK_TYPES, default=None, help=task_type_help)


def add_row_names(parser, *, model_help=None, dataset_help=None):
    """``--model`` and ``--dataset``: the names written in the result rows."""
    parser.add_argument("--model", default=None, help=model_help)
    parser.add_argument("--dataset", default=None, help=dataset_help)


def add_task_options(parser):
    """Store, label and dataset name of a supervised training command."""
    add_store_option(parser)
    add_label_options(parser)
    parser.add_argument("--dataset", default=None, help="dataset name in the rows (default: "
                        "the store's folder name)")


def add_embedding_source(parser):
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--embeddings", help="embeddings file from `bsym embed`, or the folder of "
                     "`bsym embed --run` (probe: every file in it; netid: final.npz, with "
                     "step0.npz as the random-initialisation control)")
    src.add_argument("--features", choices=FEATURE_KINDS,
                     help="connectome features instead of a model (the classical baseline)")


def add_pretrained_subjects_option(parser):
    parser.add_argument("--allow-pretrained-subjects", action="store_true",
                        help="evaluate subjects the encoder was pretrained on (refused by "
                        "default: the split should come with --pretrain-split)")


# -- split file ----------------------------------------------------------------------------
def add_split_options(parser):
    g = parser.add_argument_group(
        "split", "The split file is made on first use and only read afterwards; options given "
        "for an existing file must match how it was made.")
    g.add_argument("--splits", required=True, help="split file (JSON), created if absent")
    g.add_argument("--n-folds", type=int, default=None, help="outer folds (default 5)")
    g.add_argument("--repeats", type=int, default=None, help="repetitions of K-fold (default 1)")
    g.add_argument("--inner-folds", type=int, default=None,
                   help="inner folds for hyper-parameters (default 3)")
    g.add_argument("--split-protocol", choices=("kfold", "site"), default=None,
                   help="stratified K-fold (default) or leave-one-site-out")
    g.add_argument("--group-by", choices=("subject", "family"), default=None,
                   help="what stays on one side (default subject)")
    g.add_argument("--seed", type=int, default=None, help="split seed (default 0)")
    g.add_argument("--pretrain-split", default=None,
                   help="pretraining-cohort file: probe only its held-out subjects")
    g.add_argument("--fold", type=comma_ints, default=None, metavar="I,J,...",
                   help="run only these fold indices (default all)")


def task_splits(args, cohort, label):
    """The split file of ``label`` (made on first use); one made for another store, label
    or task type is refused before any work."""
    from bsym.evaluate.splits import load_splits, make_splits

    options = {"n_splits": args.n_folds, "n_repeats": args.repeats,
               "inner_splits": args.inner_folds, "protocol": args.split_protocol,
               "group_by": args.group_by, "seed": args.seed, "pretrain": args.pretrain_split}
    given = {k: v for k, v in options.items() if v is not None}
    path = Path(args.splits)
    if (path.exists() or path.is_symlink()) and not given:
        splits = load_splits(path)
    else:
        splits = make_splits(cohort, path, label=label, **given)
    if label is not None:
        splits.check_task(label, getattr(args, "task_type", None), cohort=cohort)
    return splits.check_cohort(cohort)


def cohort_and_splits(args, checkpoint=None):
    """The store and the task's split file; a missing label (or a ``checkpoint`` that does
    not fit the store) fails before any work."""
    from bsym.data import open_cohort

    cohort = open_cohort(args.data)
    cohort.require(labels=[args.task])
    if checkpoint is not None:
        from bsym.train.checkpoint import check_fits_store, load_checkpoint

        check_fits_store(load_checkpoint(checkpoint), checkpoint, cohort)
    return cohort, task_splits(args, cohort, args.task)


# -- output --------------------------------------------------------------------------------
def add_output_options(parser, results=True):
    """The result table (with ``results``), MLflow tracking and progress bars."""
    g = parser.add_argument_group("output")
    if results:
        g.add_argument("--results", default=DEFAULT_RESULTS,
                       help=f"long result table, Parquet (default {DEFAULT_RESULTS})")
        g.add_argument("--force", action="store_true",
                       help="recompute folds already in the result table")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default sqlite:///results/mlflow.db)")
    g.add_argument("--experiment", default="bsym", help="MLflow experiment (default bsym)")
    g.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def add_fold_evaluation_options(parser, *, pretrained_encoder):
    """The split file and output options of a fold-by-fold evaluation, and (for one of a
    ``pretrained_encoder``) the option to evaluate the subjects it was pretrained on."""
    add_split_options(parser)
    add_output_options(parser)
    if pretrained_encoder:
        add_pretrained_subjects_option(parser)


def open_tracker(args):
    """The MLflow tracker of the output options (a no-op one with ``--no-tracking``)."""
    from bsym.track import DEFAULT_URI, NullTracker, Tracker

    if args.no_tracking:
        return NullTracker()
    return Tracker(args.tracking_uri or DEFAULT_URI, args.experiment).check_store()


def open_results(args):
    """The result table of ``--results``, checked before any work: bsym appends only to
    its own result tables, in a folder it can write to."""
    from bsym.evaluate.results import ResultTable

    return ResultTable(args.results).check_output()


# -- training ------------------------------------------------------------------------------
def add_training_options(parser):
    """Optimisation and early stopping of fold training; returns the group, for a command's
    own additions.

    The defaults are :class:`~bsym.evaluate.foldtrain.FoldTraining`'s: an option not given
    stays None here and :func:`training_fields` fills it in, so that building the parser
    imports no torch.
    """
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--max-steps", type=int, default=None)
    opt.add_argument("--batch-size", type=int, default=None)
    opt.add_argument("--lr", type=float, default=None)
    opt.add_argument("--weight-decay", type=float, default=None)
    opt.add_argument("--warmup-steps", type=int, default=None)
    opt.add_argument("--eval-every", type=int, default=None, help="steps between validations")
    opt.add_argument("--patience", type=int, default=None,
                     help="validations without improvement before stopping")
    opt.add_argument("--device", default=None)
    opt.add_argument("--train-seed", type=int, default=None)
    return opt


def training_fields(args):
    """The training options as keywords of :class:`~bsym.evaluate.foldtrain.FoldTraining`,
    with its default for every option not given."""
    from bsym.evaluate.config import FoldTraining

    given = {"max_steps": args.max_steps, "batch_size": args.batch_size, "lr": args.lr,
             "weight_decay": args.weight_decay, "warmup_steps": args.warmup_steps,
             "eval_every": args.eval_every, "patience": args.patience, "device": args.device,
             "seed": args.train_seed}
    defaults = FoldTraining()
    return {name: getattr(defaults, name) if value is None else value
            for name, value in given.items()}


def add_baseline_options(parser):
    """The supervised baseline (model, preset, model arguments) and its input windows."""
    from bsym.train.cli import model_arg

    parser.add_argument("--model", required=True,
                        help="supervised baseline (bnt, brainnetcnn, braingnn, transformer)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model-arg", type=model_arg, action="append", default=[],
                        metavar="KEY=VALUE", help="model argument over the preset (JSON value; "
                        "repeatable)")
    data = parser.add_argument_group("windows")
    data.add_argument("--window", type=int, default=200,
                      help="window length in time points at the target TR (default 200)")
    data.add_argument("--target-tr", type=float, default=None,
                      help="resample every scan to this TR (needed when TRs differ)")
    data.add_argument("--max-windows", type=int, default=None, help="windows per scan at most")
