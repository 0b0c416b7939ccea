"""``bsym pretrain``: self-supervised pretraining of a registered model on a cohort store.

Importing this module imports neither torch nor MLflow; they load when the command runs.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

from bsym.errors import UsageError


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
    p.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    p.add_argument("--model-arg", type=model_arg, action="append", default=[],
                   metavar="KEY=VALUE", help="model constructor override (repeatable)")
    data = p.add_argument_group("data")
    data.add_argument("--window", type=int, default=None,
                      help="window length in time points (default: the model's n_timepoints)")
    data.add_argument("--stride", type=int, default=None, help="step between windows "
                      "(default: the window, no overlap)")
    data.add_argument("--max-windows", type=int, default=None, help="at most this many windows "
                      "per scan and epoch")
    data.add_argument("--window-sampling", choices=("random", "grid"), default="random",
                      help="random (default): each window starts at a random point of its scan, "
                      "drawn anew every epoch, so all of a scan is reachable; grid: fixed starts "
                      "every --stride points")
    data.add_argument("--target-tr", type=float, default=None,
                      help="resample every scan to this TR (seconds) first")
    data.add_argument("--subjects-file", default=None,
                      help="text file of pretraining subject ids, one a line (default: all)")
    data.add_argument("--val-subjects-file", default=None,
                      help="subject ids for a validation loss (optional)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int, default=1000,
                     help="optimizer steps in total, split across the model's stages "
                     "(default 1000)")
    opt.add_argument("--stage-steps", type=_stage_steps, default=None, metavar="STAGE=N,...",
                     help="steps per stage instead of the even split")
    budget = opt.add_mutually_exclusive_group()
    budget.add_argument("--budget-timepoints", type=float, default=None, metavar="N",
                        help="instead of --steps: as many steps as it takes to see N window "
                        "time points (batch x window per step), to match models by data seen")
    budget.add_argument("--budget-flops", type=float, default=None, metavar="F",
                        help="instead of --steps: as many steps as F training FLOPs buy "
                        "(forward + backward, counted on one step per stage)")
    opt.add_argument("--batch-size", type=int, default=16, help="per process (default 16)")
    opt.add_argument("--accumulate", type=int, default=1, help="micro-batches per step")
    opt.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    opt.add_argument("--weight-decay", type=float, default=0.05)
    opt.add_argument("--warmup-steps", type=int, default=100)
    opt.add_argument("--grad-clip", type=float, default=1.0, help="0 disables clipping")
    opt.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run = p.add_argument_group("run")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its newest checkpoint")
    run.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    run.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                     help="auto: bf16 autocast on CUDA, fp32 on CPU")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    run.add_argument("--checkpoint-every", type=int, default=500,
                     help="steps between checkpoints (default 500)")
    run.add_argument("--keep-checkpoints", type=int, default=3)
    run.add_argument("--snapshots", type=_fractions, default=(0.0,), metavar="F,F,...",
                     help="fractions of the run whose weights are kept in OUT/snapshots "
                     "(default 0: the initial weights, for the random-initialisation control; "
                     "e.g. 0,0.25,0.5 for the score-against-compute curve)")
    run.add_argument("--log-every", type=int, default=10)
    run.add_argument("--eval-every", type=int, default=0,
                     help="steps between validation losses with --val-subjects-file (default 0: "
                     "at the end of each stage)")
    run.add_argument("--tracking-uri", default=None,
                     help="MLflow tracking URI (default sqlite:///results/mlflow.db)")
    run.add_argument("--experiment", default="bsym", help="MLflow experiment (default bsym)")
    run.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_pretrain)
    return p


def read_subject_ids(path, what):
    """Subject ids of a text file (one a line, ``#`` comments); ``what`` names the option in
    errors."""
    from bsym.data import CohortError

    file = Path(path)
    if not file.is_file():
        raise CohortError(f"{what} file not found", file=file, fix="give a text file of "
                          "subject ids, one a line")
    ids = [line.split("#", 1)[0].strip() for line in file.read_text().splitlines()]
    ids = list(dict.fromkeys(i for i in ids if i))
    if not ids:
        raise CohortError(f"{what} file lists no subject", file=file,
                          fix="one subject id a line")
    return ids


def _scans_of(cohort, path, what):
    from bsym.data import CohortError

    if path is None:
        return None
    ids = read_subject_ids(path, what)
    table = cohort.subjects
    unknown = sorted(set(ids) - set(table["subject"].astype(str)))
    if unknown:
        raise CohortError(f"{len(unknown)} subject(s) of the {what} file are not in the store "
                          f"{cohort.path}: {', '.join(unknown[:5])}", file=path,
                          fix="list subject ids of this store")
    return table.loc[table["subject"].astype(str).isin(ids), "scan"].tolist()


def _model_overrides(spec, preset, n_rois, window):
    try:
        accepted = inspect.signature(spec.factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    overrides = {}
    for key, value in (("n_rois", n_rois), ("n_timepoints", window)):
        if key in accepted or key in preset or takes_any:
            overrides[key] = value
    return overrides


def _budget_request(args, model, train_set, window):
    """``{"unit", "amount", "steps"}`` of --budget-timepoints / --budget-flops, or None."""
    from bsym.train.budget import measure_step_flops, steps_for_budget

    if args.budget_timepoints is None and args.budget_flops is None:
        return None
    per_step = args.batch_size * args.accumulate
    stages = [str(s) for s in model.stages()]
    if args.budget_timepoints is not None:
        unit, amount, flops = "timepoints", args.budget_timepoints, None
    else:
        unit, amount = "flops", args.budget_flops
        flops = measure_step_flops(model, train_set, batch_size=per_step, stages=stages)
    steps = steps_for_budget(unit, amount, batch_size=per_step, window=window,
                             flops_per_step=flops, n_stages=len(stages))
    return {"unit": unit, "amount": float(amount), "steps": steps}


def _error(message):
    raise UsageError(message)


def _pretrain(args):
    from bsym.data import open_cohort
    from bsym.data.dataset import WindowDataset
    from bsym.data.preprocess import RobustScaler
    from bsym.models import build, get_spec
    from bsym.track import DEFAULT_URI, NullTracker, Tracker
    from bsym.train.checkpoint import CheckpointError, RunExistsError
    from bsym.train.devices import DeviceError, seed_everything
    from bsym.train.engine import TrainConfig, check_run_dir, train

    check_run_dir(args.out, resume=args.resume)  # before any work: never into a user's folder
    try:
        spec = get_spec(args.model)
    except KeyError as err:
        _error(err.args[0])
    if args.preset not in spec.presets:
        _error(f"model {args.model!r} has no preset {args.preset!r}; presets: "
               f"{', '.join(sorted(spec.presets))}")
    model_args = dict(args.model_arg)
    preset = {**spec.presets[args.preset], **model_args}
    window = args.window or preset.get("n_timepoints")
    if not window:
        _error(f"model {args.model!r} does not name a window length (n_timepoints); "
               "give --window")
    cohort = open_cohort(args.data)
    scans = _scans_of(cohort, args.subjects_file, "--subjects-file")
    val_scans = _scans_of(cohort, args.val_subjects_file, "--val-subjects-file")
    if val_scans and scans is not None and set(val_scans) & set(scans):
        _error("--val-subjects-file and --subjects-file share subjects; validation subjects "
               "must be held out")
    if val_scans and scans is None:
        scans = [s for s in cohort.scans if s not in set(val_scans)]
    window_args = {"stride": args.stride, "max_windows": args.max_windows,
                   "target_tr": args.target_tr}
    train_set = WindowDataset(cohort, window, scans=scans, sampling=args.window_sampling,
                              seed=args.seed, **window_args)
    scaler = train_set.fit_scaler(RobustScaler())
    val_set = None
    if val_scans:
        val_set = WindowDataset(cohort, window, scans=val_scans, scaler=scaler, **window_args)

    overrides = {**model_args, **_model_overrides(spec, preset, cohort.n_rois, int(window))}
    seed_everything(args.seed)  # the initial weights follow the seed
    try:
        config = TrainConfig(
            steps=args.steps, stage_steps=args.stage_steps, batch_size=args.batch_size,
            accumulate=args.accumulate, lr=args.lr, weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps, grad_clip=args.grad_clip or None, seed=args.seed,
            device=args.device, precision=args.precision, compile=args.compile,
            num_workers=args.num_workers, checkpoint_every=args.checkpoint_every,
            keep_checkpoints=args.keep_checkpoints, log_every=args.log_every,
            progress=not args.quiet, snapshots=args.snapshots, eval_every=args.eval_every)
        model = build(args.model, preset=args.preset, **overrides)
        budget = _budget_request(args, model, train_set, int(window))
        if budget is not None:
            config.steps, config.stage_steps = budget["steps"], None
    except (TypeError, ValueError) as err:
        _error(str(err))
    if args.no_tracking:
        tracker = NullTracker()
    else:
        tracker = Tracker(args.tracking_uri or DEFAULT_URI, args.experiment)
    extra = {"scaler": scaler.state_dict(), "data_path": str(Path(args.data).resolve()),
             "subjects_file": args.subjects_file, "val_subjects_file": args.val_subjects_file,
             "train_subjects": sorted(train_set.table["subject"].astype(str).unique()),
             "n_train_scans": len(train_set.table),
             "n_val_scans": len(val_set.table) if val_set is not None else 0,
             "budget_request": budget}
    try:
        result = train(model, train_set, config, args.out, val_dataset=val_set,
                       resume=args.resume, tracker=tracker, extra=extra,
                       run_name=f"pretrain-{args.model}-{args.preset}")
    except (CheckpointError, RunExistsError, DeviceError, FloatingPointError) as err:
        _error(str(err))
    loss = result.final_loss
    shown = f"{loss:.4f}" if loss is not None else "n/a"
    print(f"pretrained {args.model} ({args.preset}) for {result.steps} steps; final loss "
          f"{shown}; weights in {result.final_path}")
