"""``bsym pretrain``: self-supervised pretraining of a registered model on a cohort store.

The command parses its options and calls :func:`bsym.train.pretraining.pretrain`; the
defaults of the training loop are those of :class:`~bsym.train.config.TrainConfig`.
Importing this module imports neither torch nor MLflow; they load when the command runs.
"""

from __future__ import annotations

import argparse
import json

from bsym.errors import UsageError
from bsym.train.config import PRECISIONS, TrainConfig
from bsym.train.pretraining import DEFAULT_PRESET, DEFAULT_SAMPLING, read_subject_ids

__all__ = ["add_parser", "model_arg", "read_subject_ids"]


def _stage_steps(text):
    out = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected STAGE=STEPS pairs, got {part!r}")
        out[name.strip()] = int(value)
    return out


def _fractions(text):
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions, got {text!r}") \
            from None


def model_arg(text):
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    if not isinstance(parsed, (int, float, str, bool)) and parsed is not None:
        raise argparse.ArgumentTypeError(f"{key}: model arguments are plain values, got {value!r}")
    return key.strip(), parsed


def add_parser(subparsers):
    """Add ``pretrain`` to the ``bsym`` subcommands."""
    p = subparsers.add_parser(
        "pretrain", help="self-supervised pretraining of a model on a cohort store",
        description="Pretrain a registered model on a cohort store: fits the robust scaler on "
        "the pretraining scans, trains (staged where the model is), writes OUT/final.pt, "
        "OUT/run.json and periodic checkpoints under OUT/checkpoints/, and logs to MLflow. "
        "Run under `torchrun --nproc-per-node N -m bsym pretrain ...` for several GPUs.")
    p.add_argument("--model", required=True, help="registered model name (see `bsym models list`)")
    p.add_argument("--data", required=True, help="cohort store directory")
    p.add_argument("--out", required=True, help="run directory: new or empty, or a run "
                   "directory of bsym with --resume (any other folder is refused)")
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"model preset (default {DEFAULT_PRESET})")
    p.add_argument("--model-arg", type=model_arg, action="append", default=[],
                   metavar="KEY=VALUE", help="model constructor override (repeatable)")
    _add_data_options(p.add_argument_group("data"))
    _add_optimisation_options(p.add_argument_group("optimisation"))
    _add_run_options(p.add_argument_group("run"))
    p.set_defaults(func=_pretrain)
    return p


def _add_data_options(data):
    data.add_argument("--window", type=int, default=None,
                      help="window length in time points (default: the model's n_timepoints)")
    data.add_argument("--stride", type=int, default=None, help="step between windows "
                      "(default: the window, no overlap)")
    data.add_argument("--max-windows", type=int, default=None, help="at most this many windows "
                      "per scan and epoch")
    data.add_argument("--window-sampling", choices=("random", "grid"), default=DEFAULT_SAMPLING,
                      help="random (default): each window starts at a random point of its scan, "
                      "drawn anew every epoch, so all of a scan is reachable; grid: fixed starts "
                      "every --stride points")
    data.add_argument("--target-tr", type=float, default=None,
                      help="resample every scan to this TR (seconds) first")
    data.add_argument("--subjects-file", default=None,
                      help="text file of pretraining subject ids, one a line (default: all)")
    data.add_argument("--val-subjects-file", default=None,
                      help="subject ids for a validation loss (optional)")


def _add_optimisation_options(opt):
    opt.add_argument("--steps", type=int, default=TrainConfig.steps,
                     help="optimizer steps in total, split across the model's stages "
                     f"(default {TrainConfig.steps})")
    opt.add_argument("--stage-steps", type=_stage_steps, default=None, metavar="STAGE=N,...",
                     help="steps per stage instead of the even split")
    budget = opt.add_mutually_exclusive_group()
    budget.add_argument("--budget-timepoints", type=float, default=None, metavar="N",
                        help="instead of --steps: as many steps as it takes to see N window "
                        "time points (batch x window per step), to match models by data seen")
    budget.add_argument("--budget-flops", type=float, default=None, metavar="F",
                        help="instead of --steps: as many steps as F training FLOPs buy "
                        "(forward + backward, counted on one step per stage)")
    opt.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                     help=f"per process (default {TrainConfig.batch_size})")
    opt.add_argument("--accumulate", type=int, default=TrainConfig.accumulate,
                     help="micro-batches per step")
    opt.add_argument("--lr", type=float, default=TrainConfig.lr,
                     help=f"peak learning rate (default {TrainConfig.lr:g})")
    opt.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    opt.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps)
    opt.add_argument("--grad-clip", type=float, default=TrainConfig.grad_clip,
                     help="0 disables clipping")
    opt.add_argument("--seed", type=int, default=TrainConfig.seed,
                     help=f"random seed (default {TrainConfig.seed})")


def _add_run_options(run):
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its newest checkpoint")
    run.add_argument("--device", default=TrainConfig.device,
                     help="auto (CUDA if present), cpu, cuda, cuda:N")
    run.add_argument("--precision", choices=PRECISIONS, default=TrainConfig.precision,
                     help="auto: bf16 autocast on CUDA, fp32 on CPU")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--num-workers", type=int, default=TrainConfig.num_workers,
                     help="DataLoader workers")
    run.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every,
                     help=f"steps between checkpoints (default {TrainConfig.checkpoint_every})")
    run.add_argument("--keep-checkpoints", type=int, default=TrainConfig.keep_checkpoints)
    shown = ",".join(f"{f:g}" for f in TrainConfig.snapshots)
    run.add_argument("--snapshots", type=_fractions, default=TrainConfig.snapshots,
                     metavar="F,F,...",
                     help="fractions of the run whose weights are kept in OUT/snapshots "
                     f"(default {shown}: the initial weights, for the random-initialisation "
                     "control; e.g. 0,0.25,0.5 for the score-against-compute curve)")
    run.add_argument("--log-every", type=int, default=TrainConfig.log_every)
    run.add_argument("--eval-every", type=int, default=TrainConfig.eval_every,
                     help="steps between validation losses with --val-subjects-file (default "
                     f"{TrainConfig.eval_every}: at the end of each stage)")
    run.add_argument("--tracking-uri", default=None,
                     help="MLflow tracking URI (default sqlite:///results/mlflow.db)")
    run.add_argument("--experiment", default="bsym", help="MLflow experiment (default bsym)")
    run.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def _train_config(args):
    try:
        return TrainConfig(
            steps=args.steps, stage_steps=args.stage_steps, batch_size=args.batch_size,
            accumulate=args.accumulate, lr=args.lr, weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps, grad_clip=args.grad_clip or None, seed=args.seed,
            device=args.device, precision=args.precision, compile=args.compile,
            num_workers=args.num_workers, checkpoint_every=args.checkpoint_every,
            keep_checkpoints=args.keep_checkpoints, log_every=args.log_every,
            progress=not args.quiet, snapshots=args.snapshots, eval_every=args.eval_every)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None


def _budget(args):
    if args.budget_timepoints is not None:
        return "timepoints", args.budget_timepoints
    if args.budget_flops is not None:
        return "flops", args.budget_flops
    return None


def _pretrain(args):
    from bsym.track import DEFAULT_URI, Tracker
    from bsym.train.pretraining import pretrain

    config = _train_config(args)
    tracker = None if args.no_tracking else Tracker(args.tracking_uri or DEFAULT_URI,
                                                    args.experiment)
    try:
        result = pretrain(
            args.model, args.data, args.out, preset=args.preset,
            model_args=dict(args.model_arg), config=config, window=args.window,
            stride=args.stride, max_windows=args.max_windows,
            window_sampling=args.window_sampling, target_tr=args.target_tr,
            subjects_file=args.subjects_file, val_subjects_file=args.val_subjects_file,
            budget=_budget(args), resume=args.resume, tracker=tracker)
    except FloatingPointError as err:
        raise UsageError(str(err)) from None
    loss = result.final_loss
    shown = f"{loss:.4f}" if loss is not None else "n/a"
    print(f"pretrained {args.model} ({args.preset}) for {result.steps} steps; final loss "
          f"{shown}; weights in {result.final_path}")
