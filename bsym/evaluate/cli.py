"""``bsym embed | probe | finetune | supervised | netid | attention | splits | health``:
evaluation commands.

Each command has a short parser builder (``_build_<command>``) and a function that runs it
(``_<command>``); the options several commands share are defined once in
:mod:`bsym.evaluate.cli_options`. Importing this module imports neither torch,
scikit-learn nor MLflow; they load when a command runs.
"""

from __future__ import annotations

from pathlib import Path

from bsym.errors import UsageError
from bsym.evaluate.cli_options import (
    add_baseline_options,
    add_embedding_source,
    add_fold_evaluation_options,
    add_label_options,
    add_output_options,
    add_pretrained_subjects_option,
    add_row_names,
    add_split_options,
    add_store_option,
    add_task_options,
    add_training_options,
    cohort_and_splits,
    comma_list,
    open_results,
    open_tracker,
    task_splits,
    training_fields,
)


# -- helpers of the commands ---------------------------------------------------------------
def _embeddings(args, cohort):
    from bsym.evaluate.embeddings import feature_embeddings, load_embeddings

    if args.features:
        return feature_embeddings(cohort, args.features)
    return load_embeddings(args.embeddings, cohort=cohort)


def _summary(frame, metrics):
    lines = []
    for metric in metrics:
        if metric in frame.columns:
            values = frame[metric].astype(float).dropna()
            if len(values):
                sd = values.std(ddof=1) if len(values) > 1 else 0.0
                lines.append(f"  {metric:<18} {values.mean():.3f} +/- {sd:.3f} "
                             f"(n={len(values)} folds)")
    return "\n".join(lines)


# -- commands ------------------------------------------------------------------------------
def _embed(args):
    from bsym.data import open_cohort
    from bsym.evaluate.embeddings import embed_checkpoint, embed_run
    from bsym.train.cli import read_subject_ids

    cohort = open_cohort(args.data)
    subjects = read_subject_ids(args.subjects_file, "--subjects-file") \
        if args.subjects_file else None
    options = {"stride": args.stride, "batch_size": args.batch_size, "device": args.device,
               "force": args.force, "keep_roi": not args.no_roi, "progress": not args.quiet,
               "subjects": subjects}
    if args.run:
        made = embed_run(args.run, cohort, args.out, **options)
        paths = {stem: Path(args.out) / f"{stem}.npz" for stem in made}
    else:
        made = {"": embed_checkpoint(args.checkpoint, cohort, args.out, **options)}
        paths = {"": Path(args.out)}
    for stem, out in made.items():
        state = "reused (checkpoint and data unchanged)" if out.meta.get("cached") else "written"
        views = ", ".join(f"{k} ({v['subject'].shape[1]}-d"
                          f"{', ROI' if v.get('roi') is not None else ''})"
                          for k, v in out.views.items())
        print(f"embeddings of {len(out.scans)} scans, views {views}: {paths[stem]} {state}")


def _probe(args):
    from bsym.data import open_cohort
    from bsym.evaluate.embeddings import embedding_files, feature_embeddings, load_embeddings
    from bsym.evaluate.probe import ProbeConfig, linear_probe

    cohort = open_cohort(args.data)
    cohort.require(labels=[args.task])  # a missing label fails before any work
    results = open_results(args)
    if args.features:
        sources = [feature_embeddings(cohort, args.features)]
    else:
        sources = [load_embeddings(f, cohort=cohort) for f in embedding_files(args.embeddings)]
    splits = task_splits(args, cohort, args.task)
    protocol = args.protocol or ("supervised" if args.features else "linear_probe")
    tracker = open_tracker(args)
    for embeddings in sources:
        views = sorted(embeddings.views) if args.view == "all" else [args.view]
        final = embeddings.checkpoint_label == "final"
        for view in views:
            frame = linear_probe(embeddings, cohort, splits, args.task, view=view,
                                 task=args.task_type, config=ProbeConfig(level=args.level),
                                 folds=args.fold, model=args.model, dataset=args.dataset,
                                 protocol=protocol, results=results,
                                 tracker=tracker if final else None, force=args.force,
                                 permutations=args.permutations if final else 0,
                                 allow_pretrained_subjects=args.allow_pretrained_subjects,
                                 progress=not args.quiet)
            _print_probe(frame, protocol, embeddings.checkpoint_label, args, splits)


def _print_probe(frame, protocol, checkpoint_label, args, splits):
    """The mean scores of one probed view, and the shuffled-labels control's p-value."""
    from bsym.evaluate.probe import CLASSIFICATION_METRICS, REGRESSION_METRICS

    real = frame[frame["control"] != "shuffled_labels"]
    print(f"{protocol} {real['model'].iloc[0]} ({real['view'].iloc[0]}, "
          f"{checkpoint_label}, control {real['control'].iloc[0]}) on "
          f"{args.task}, split {splits.sha256[:12]}; rows in {args.results}")
    print(_summary(real, CLASSIFICATION_METRICS + REGRESSION_METRICS))
    null = frame[frame["control"] == "shuffled_labels"]
    if len(null):
        print(_permutation_line(real, null))


def _permutation_line(real, null):
    from bsym.stats.controls import permutation_pvalue

    metric = "auroc" if "auroc" in real.columns and real["auroc"].notna().any() else \
        "pearson_r"
    p, observed, null_scores = permutation_pvalue(real, null, metric)
    return (f"  shuffled labels ({len(null_scores)} permutations): {metric} "
            f"{null_scores.mean():.3f} +/- {null_scores.std(ddof=1) if len(null_scores) > 1 else 0:.3f}"
            f" against {observed:.3f}; permutation p = {p:.3g}")


def _finetune(args):
    from bsym.evaluate.finetune import FineTuneConfig, fine_tune
    from bsym.evaluate.probe import CLASSIFICATION_METRICS, REGRESSION_METRICS

    cohort, splits = cohort_and_splits(args, checkpoint=args.checkpoint)
    results = open_results(args)
    config = FineTuneConfig(**training_fields(args), view=args.view,
                            freeze_encoder=args.freeze_encoder, max_windows=args.max_windows,
                            lp_init=not args.no_lp_init,
                            encoder_lr_scale=args.encoder_lr_scale,
                            class_balanced=not args.no_class_balance)
    frame = fine_tune(args.checkpoint, cohort, splits, args.task, config=config,
                      folds=args.fold, task=args.task_type, model=args.model,
                      dataset=args.dataset, results=results,
                      tracker=open_tracker(args), force=args.force,
                      allow_pretrained_subjects=args.allow_pretrained_subjects,
                      progress=not args.quiet)
    print(f"finetune {frame['model'].iloc[0]} on {args.task}, split {splits.sha256[:12]}; rows "
          f"in {args.results}")
    print(_summary(frame, CLASSIFICATION_METRICS + REGRESSION_METRICS))


def _supervised(args):
    from bsym.evaluate.foldtrain import TrainingConfig
    from bsym.evaluate.probe import CLASSIFICATION_METRICS, REGRESSION_METRICS
    from bsym.evaluate.supervised import train_supervised

    cohort, splits = cohort_and_splits(args)
    results = open_results(args)
    params = _read_fold_params(args.params, args, splits) if args.params else None
    frame = train_supervised(args.model, cohort, splits, args.task, preset=args.preset,
                             model_args=dict(args.model_arg),
                             config=TrainingConfig(**training_fields(args)), params=params,
                             window=args.window, target_tr=args.target_tr,
                             max_windows=args.max_windows, task=args.task_type,
                             dataset=args.dataset, folds=args.fold,
                             results=results, tracker=open_tracker(args),
                             force=args.force, progress=not args.quiet)
    print(f"supervised {args.model} on {args.task}, split {splits.sha256[:12]}; rows in "
          f"{args.results}")
    print(_summary(frame, CLASSIFICATION_METRICS + REGRESSION_METRICS))


def _read_fold_params(path, args=None, splits=None):
    """``{fold: params}`` from a `bsym sweep` result file; one swept for another split,
    task or model than ``args`` and ``splits`` ask for is refused."""
    import json

    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        folds = document["folds"]
        params = {int(k): dict(v["params"]) for k, v in folds.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError,
            AttributeError) as err:
        raise UsageError(f"--params {path}: expected a `bsym sweep` result file "
                         f'({{"folds": {{"0": {{"params": {{...}}}}}}}}); could not read it '
                         f"({type(err).__name__}: {err}). Fix: pass the --out file of "
                         "`bsym sweep`") from None
    asked = {} if args is None else {"model": args.model, "task": args.task}
    if splits is not None:
        asked["split_hash"] = splits.sha256
    made = {k: document.get(k) for k in asked if document.get(k) is not None}
    differ = {k: v for k, v in made.items() if str(v) != str(asked[k])}
    if differ:
        shown = "; ".join(f"{k}: swept {v!r}, asked {asked[k]!r}" for k, v in differ.items())
        raise UsageError(f"--params {path}: these hyper-parameters were chosen for another "
                         f"{' and '.join(differ)} ({shown}), on other inner folds. Fix: run "
                         "`bsym sweep` with this --model, --task and --splits "
                         f"({splits.path if splits is not None else 'the split file'}) and "
                         "pass its --out file as --params")
    return params


def _netid(args):
    from bsym.data import open_cohort
    from bsym.evaluate.embeddings import load_embeddings
    from bsym.evaluate.netid import METRICS, network_identification
    from bsym.outputs import guard_figure
    from bsym.stats.controls import netid_summary

    cohort = open_cohort(args.data)
    results = open_results(args)
    if args.figure:
        guard_figure(args.figure, "--figure")
    random_init = None
    if args.embeddings and Path(args.embeddings).is_dir():
        folder = Path(args.embeddings)
        embeddings = load_embeddings(folder / "final.npz", cohort=cohort)
        if (folder / "step0.npz").is_file():
            random_init = load_embeddings(folder / "step0.npz", cohort=cohort)
    else:
        embeddings = _embeddings(args, cohort)
    frame = network_identification(embeddings, cohort, view=args.view, seeds=args.seeds,
                                   n_neighbors=args.neighbors, permutations=args.permutations,
                                   random_init=random_init, model=args.model,
                                   dataset=args.dataset, results=results,
                                   figure=args.figure, tracker=open_tracker(args), force=args.force,
                                   progress=not args.quiet)
    summary = netid_summary(frame, metrics=("ari_kmeans", "knn_accuracy"))
    columns = ["model", "view", "control", "checkpoint", "n", "ari_kmeans_mean", "ari_kmeans_sd",
               "knn_accuracy_mean", "knn_accuracy_sd"]
    print(f"mean and sd over {args.seeds} clustering seeds ({args.permutations} label "
          f"permutations for permuted_networks); metrics in the table: {', '.join(METRICS)}")
    print(summary[columns].to_string(index=False, float_format="%.3f"))
    if args.figure:
        print(f"confusion matrices: {args.figure}")


def _attention(args):
    from bsym.data import open_cohort
    from bsym.evaluate.attention import (
        attention_checkpoint,
        contrast_attention,
        plot_network_contrast,
    )
    from bsym.outputs import OutputFolder, layout, write_csv, write_parquet

    cohort = open_cohort(args.data)
    cohort.require(labels=[args.factor])  # before any model is run
    folder = OutputFolder(args.out, "attention", legacy=layout(
        r"contrast\.(parquet|csv)", r"network_contrast_.+\.png")).check()
    maps = attention_checkpoint(args.checkpoint, cohort, maps=args.map or None,
                                batch_size=args.batch_size, device=args.device,
                                progress=not args.quiet)
    paired = {"paired": True, "unpaired": False, "auto": None}[args.design]
    result = contrast_attention(maps, cohort, factor=args.factor, levels=args.levels,
                                paired=paired, n_permutations=args.permutations,
                                alpha=args.alpha, seed=args.seed)
    out = Path(args.out)
    with folder:
        write_parquet(result.table, out / "contrast.parquet", "attention-contrast",
                      what="the attention contrast")
        write_csv(result.table, out / "contrast.csv", what="the attention contrast")
        for name in sorted(result.table["map"].unique()):
            plot_network_contrast(result, out / f"network_contrast_{name}.png", map=name)
    a, b = result.levels
    print(f"{'paired' if result.paired else 'unpaired'} contrast {b} - {a} of {args.factor} over "
          f"{len(result.subjects)} subjects; tables and figures in {out}")
    hits = result.significant()
    if len(hits):
        print(hits[["map", "family", "feature", "diff", "t", "q"]].to_string(
            index=False, float_format="%.3g"))
    else:
        print(f"no attention summary survives FDR at q < {args.alpha}")


def _health(args):
    from bsym.data import open_cohort
    from bsym.evaluate.health import (
        check_outputs,
        check_tracked_run,
        log_health,
        plot_loss_curves,
        pretraining_run_id,
        training_health,
        write_table,
    )
    from bsym.train.cli import read_subject_ids

    figure_path = args.figure or _figure_path(args.out)
    check_outputs(args.out, figure_path)
    cohort = open_cohort(args.data)
    subjects = read_subject_ids(args.subjects_file, "--subjects-file") \
        if args.subjects_file else None
    embeddings = _embeddings(args, cohort) if args.embeddings else None
    tracker, run_id = open_tracker(args), None
    if tracker.enabled:
        run_id = pretraining_run_id(args.checkpoint)
        if run_id is None:
            print("no MLflow run recorded beside the checkpoint (run.json); health not logged")
        else:
            check_tracked_run(tracker, run_id)
    table = training_health(args.checkpoint, cohort, subjects, embeddings=embeddings,
                            seed=args.seed, batch_size=args.batch_size,
                            max_windows=args.max_windows or None, device=args.device,
                            allow_pretrained_subjects=args.allow_pretrained_subjects,
                            progress=not args.quiet)
    out = write_table(table, args.out)
    figure = plot_loss_curves(args.checkpoint, figure_path)
    log_health(tracker, table, run_id, artifacts=(out, figure))
    shown = table[["view", "pretext_score", "trivial_score", "trivial_baseline",
                   "effective_rank", "learned"]]
    print(shown.to_string(index=False, float_format="%.3f"))
    for row in table.itertuples(index=False):
        print(f"{row.view}: {'learned' if row.learned else 'NOT learned'} ({row.reason})")
    print(f"table: {out}; loss curves: {figure}")


def _figure_path(out):
    out = Path(out)
    return out.with_name(f"{out.stem}_loss.png")


def _make_splits(args):
    from bsym.data import open_cohort

    _check_subject_lists(args)
    cohort = open_cohort(args.data)
    if args.pretrain_fraction is not None:
        _make_pretrain_split(args, cohort)
        return
    splits = task_splits(args, cohort, args.task)
    print(f"{splits!r}: {args.splits}")


def _check_subject_lists(args):
    """Refuse, before the split file is made, a subject list without --pretrain-fraction or
    at a path holding anything but a subject list bsym wrote."""
    from bsym.evaluate.splits import subject_list_is_ours
    from bsym.io import guard_output

    lists = [args.subjects_out, args.probe_subjects_out, args.val_subjects_out]
    if any(lists) and args.pretrain_fraction is None:
        raise UsageError("--subjects-out needs --pretrain-fraction (it lists pretraining "
                         "subjects)")
    for path in filter(None, lists):
        guard_output(path, is_ours=subject_list_is_ours, what="subject list", overwrite=True,
                     fix_other="choose another path for the subject list, or move this file "
                     "away yourself")


def _make_pretrain_split(args, cohort):
    """The pretraining-cohort file, and the subject lists asked for."""
    from bsym.evaluate.splits import make_pretrain_split

    split = make_pretrain_split(cohort, args.splits, fraction=args.pretrain_fraction,
                                seed=args.seed or 0, group_by=args.group_by or "subject",
                                stratify=args.task)
    print(f"{split!r}: {args.splits}")
    if args.subjects_out:
        split.write_subject_list(args.subjects_out, "pretrain")
        print(f"pretraining subjects (for `bsym pretrain --subjects-file`): "
              f"{args.subjects_out}")
    if args.probe_subjects_out:
        split.write_subject_list(args.probe_subjects_out, "probe")
        print(f"subjects never pretrained on (for `bsym embed --subjects-file`): "
              f"{args.probe_subjects_out}")
    if args.val_subjects_out:
        chosen = split.validation(args.val_subjects, seed=args.seed or 0)
        split.write_subject_list(args.val_subjects_out, "validation", chosen)
        print(f"{len(chosen)} held-out validation subjects (for `bsym pretrain "
              f"--val-subjects-file`): {args.val_subjects_out}")


# -- parsers -------------------------------------------------------------------------------
def _build_embed(subparsers):
    p = subparsers.add_parser(
        "embed", help="embed every scan of a store with a trained checkpoint",
        description="Embed every window of every scan (the checkpoint's window, "
        "non-overlapping and tiling the whole scan, scaled with its scaler), average per scan, "
        "and save all views, ROI embeddings and position-only ROI embeddings (the model's "
        "output for all-zero data) to an .npz file, with its SHA-256 in FILE.sha256 (checked "
        "by every command that reads it). An existing file made from the same checkpoint "
        "bytes and data manifest is reused; a changed checkpoint is re-embedded. Only a file "
        "bsym embed wrote is ever replaced.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="trained weights (final.pt)")
    source.add_argument("--run", help="a pretraining run directory: embed final.pt and every "
                        "kept snapshot (snapshots/step-N.pt) into --out as final.npz and "
                        "step<N>.npz")
    add_store_option(p)
    p.add_argument("--out", required=True, help="embeddings file (.npz), or a folder with --run")
    p.add_argument("--subjects-file", default=None,
                   help="embed only these subjects' scans (ids one a line; default every scan), "
                   "e.g. those never pretrained on: only they are probed")
    p.add_argument("--stride", type=int, default=None, help="window step (default: the window)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu",
                   help="auto (CUDA when present), cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--no-roi", action="store_true", help="do not keep ROI embeddings")
    p.add_argument("--force", action="store_true", help="recompute even if the file is current "
                   "(also replaces an embeddings file that changed since bsym wrote it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_embed)
    return p


def _build_probe(subparsers):
    p = subparsers.add_parser(
        "probe", help="linear probe of a label on frozen embeddings, fold by fold",
        description="StandardScaler + LogisticRegression / Ridge fitted on each outer training "
        "fold, regularisation chosen on the split file's inner folds; scores appended per fold "
        "to the long result table and logged to MLflow.")
    add_embedding_source(p)
    add_store_option(p, help="cohort store the embeddings come from")
    add_label_options(p, task_type_help="default: inferred from the label")
    p.add_argument("--view", default=None,
                   help="embedding view of a multi-view model, or 'all' (default: fusion or "
                   "the only view)")
    p.add_argument("--level", choices=("subject", "scan"), default="subject",
                   help="one row per subject (default) or per scan (within-subject labels)")
    p.add_argument("--protocol", choices=("linear_probe", "supervised"), default=None,
                   help="row protocol (default linear_probe; supervised with --features)")
    add_row_names(p, model_help="model name in the rows (default from the file)",
                  dataset_help="dataset name (default the store's folder)")
    p.add_argument("--permutations", type=int, default=0,
                   help="the shuffled-labels control: refit the probe this many times on labels "
                   "permuted within each training fold (final weights and features only; "
                   "default 0; the workflow asks for 20, a permutation p down to 1/21)")
    add_fold_evaluation_options(p, pretrained_encoder=True)
    p.set_defaults(func=_probe)
    return p


def _build_finetune(subparsers):
    p = subparsers.add_parser(
        "finetune", help="fine-tune a pretrained encoder with a linear head, fold by fold",
        description="Encoder + linear head trained on each outer training fold through the "
        "shared training loop, early-stopped on the first inner fold's validation subjects, "
        "tested once on the outer test fold (every window of its scans). LP-FT by default: "
        "the head starts as a class-balanced linear probe of the frozen encoder (the first "
        "early-stopping candidate), then encoder and head train together, the encoder at "
        "--encoder-lr-scale times --lr.")
    p.add_argument("--checkpoint", required=True, help="pretrained weights (final.pt)")
    add_store_option(p)
    add_label_options(p)
    p.add_argument("--view", default=None, help="embedding view of a multi-view model")
    add_row_names(p)
    _add_finetune_options(add_training_options(p))
    add_fold_evaluation_options(p, pretrained_encoder=True)
    p.set_defaults(func=_finetune)
    return p


def _add_finetune_options(opt):
    """Fine-tuning's own options, in the optimisation group ``opt``."""
    opt.add_argument("--freeze-encoder", action="store_true", help="train the head only")
    opt.add_argument("--max-windows", type=int, default=None,
                     help="training windows per scan at most (default all; the test uses "
                     "every window)")
    opt.add_argument("--encoder-lr-scale", type=float, default=0.1,
                     help="the encoder's learning rate as a fraction of --lr, the head's "
                     "(default 0.1)")
    opt.add_argument("--no-lp-init", action="store_true",
                     help="start from a random head instead of a linear probe (plain "
                     "fine-tuning, not LP-FT)")
    opt.add_argument("--no-class-balance", action="store_true",
                     help="weigh classes equally instead of inverse to their frequency")


def _build_supervised(subparsers):
    p = subparsers.add_parser(
        "supervised", help="train a supervised baseline from scratch, fold by fold",
        description="A fresh supervised baseline (BNT, BrainNetCNN, BrainGNN, transformer) "
        "trained on each outer training fold through the shared training loop, early-stopped "
        "on the first inner fold's validation subjects, tested once on the outer test fold "
        "(protocol supervised). --params takes per-fold hyper-parameters chosen by "
        "`bsym sweep` on inner folds.")
    add_baseline_options(p)
    add_task_options(p)
    p.add_argument("--params", default=None,
                   help="per-fold hyper-parameters (a `bsym sweep` result file)")
    add_training_options(p)
    add_fold_evaluation_options(p, pretrained_encoder=False)
    p.set_defaults(func=_supervised)
    return p


def _build_netid(subparsers):
    p = subparsers.add_parser(
        "netid", help="unsupervised network identification, beside FC rows",
        description="ROI embeddings averaged over subjects, clustered (k-means, spectral; "
        "k = number of atlas networks; one row per clustering seed) and scored by ARI and NMI, "
        "plus leave-one-ROI-out k-NN network accuracy. Beside them: group-mean FC rows and "
        "SC rows, the model's position-only ROI embeddings (all-zero data), its initial "
        "weights (step0.npz beside final.npz when --embeddings is a folder) and the chance "
        "level from permuted network labels.")
    add_embedding_source(p)
    add_store_option(p)
    p.add_argument("--view", default=None)
    p.add_argument("--seeds", type=int, default=10,
                   help="clustering seeds 0..N-1, one row each (default 10)")
    p.add_argument("--permutations", type=int, default=20,
                   help="network-label permutations for the chance level (default 20)")
    p.add_argument("--neighbors", type=int, default=5, help="k of the k-NN classifier")
    p.add_argument("--figure", default=None, help="confusion-matrix figure (.png/.pdf/.svg)")
    add_row_names(p)
    add_output_options(p)
    p.set_defaults(func=_netid)
    return p


def _build_attention(subparsers):
    p = subparsers.add_parser(
        "attention", help="attention per ROI and network, contrasted between conditions",
        description="Attention maps of a trained model averaged per scan, summarised per ROI "
        "and network (incoming / outgoing mass, network x network), contrasted between two "
        "levels of a factor (paired sign-flip or two-group permutation test, Benjamini-"
        "Hochberg FDR); writes contrast.parquet/.csv and network heatmaps to --out.")
    p.add_argument("--checkpoint", required=True, help="trained weights (final.pt)")
    add_store_option(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--factor", default="condition", help="column to contrast (default condition)")
    p.add_argument("--levels", type=comma_list, default=None, metavar="A,B",
                   help="the two levels, difference B - A (default pre,post when present)")
    p.add_argument("--design", choices=("auto", "paired", "unpaired"), default="auto",
                   help="paired when the factor varies within subjects (default auto)")
    p.add_argument("--map", action="append", default=[],
                   help="attention map to use (repeatable; default every ROI x ROI map)")
    p.add_argument("--permutations", type=int, default=10000)
    p.add_argument("--alpha", type=float, default=0.05, help="FDR level (default 0.05)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu",
                   help="auto (CUDA when present), cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_attention)
    return p


def _build_health(subparsers):
    p = subparsers.add_parser(
        "health", help="did a pretraining run learn? pretext task vs trivial baselines",
        description="On held-out subjects' windows (made as in training), the model's own "
        "pretext task (seeded masks) scored by R^2 over the hidden entries against trivial "
        "baselines that see the same visible entries; the effective rank and dead "
        "dimensions of the subject embeddings; a verdict per view (learned: R^2 strictly "
        "above the best baseline's for every objective, and no collapse). Writes the table "
        "(--out) and the loss curves (--figure), and logs the metrics into the pretraining "
        "MLflow run (run.json beside the checkpoint).")
    p.add_argument("--checkpoint", required=True, help="pretrained weights (RUN/final.pt)")
    add_store_option(p, help="cohort store of the held-out subjects")
    p.add_argument("--subjects-file", default=None,
                   help="held-out subject ids, one a line (default: every subject of the store "
                   "the run was not pretrained on)")
    p.add_argument("--embeddings", default=None,
                   help="embeddings of this checkpoint (`bsym embed`) for the embedding health "
                   "(default: subject means over the held-out windows)")
    p.add_argument("--out", required=True, help="health table (.parquet or .csv)")
    p.add_argument("--figure", default=None,
                   help="loss-curve figure (default: OUT's name with _loss.png)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pretext masks (default 0)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-windows", type=int, default=256,
                   help="held-out windows at most, evenly spread; 0 for all (default 256)")
    p.add_argument("--device", default="cpu",
                   help="auto (CUDA when present), cpu, cuda, cuda:N (default cpu)")
    add_pretrained_subjects_option(p)
    add_output_options(p, results=False)
    p.set_defaults(func=_health, features=None)
    return p


def _build_splits(subparsers):
    p = subparsers.add_parser(
        "splits", help="write a split file (or the pretraining-cohort file) once",
        description="Make the split file of a task (outer and inner folds, hashed), or with "
        "--pretrain-fraction the pretraining cohort: subjects never probed.")
    add_store_option(p)
    p.add_argument("--task", default=None, help="label to stratify on")
    p.add_argument("--pretrain-fraction", type=float, default=None,
                   help="write the pretraining-cohort file with this share of subjects")
    p.add_argument("--subjects-out", default=None,
                   help="with --pretrain-fraction: also write the pretraining subject list")
    p.add_argument("--probe-subjects-out", default=None,
                   help="with --pretrain-fraction: also write the list of subjects never "
                   "pretrained on (the ones that are probed)")
    p.add_argument("--val-subjects-out", default=None,
                   help="with --pretrain-fraction: also write --val-subjects subjects drawn "
                   "from those never pretrained on (a validation-loss set)")
    p.add_argument("--val-subjects", type=int, default=16,
                   help="size of the --val-subjects-out list (default 16)")
    add_split_options(p)
    p.set_defaults(func=_make_splits)
    return p


_BUILDERS = (_build_embed, _build_probe, _build_finetune, _build_supervised, _build_netid,
             _build_attention, _build_health, _build_splits)


def add_parser(subparsers):
    """Add ``embed``, ``probe``, ``finetune``, ``supervised``, ``netid``, ``attention``,
    ``health`` and ``splits``; return the last parser."""
    for build in _BUILDERS:
        parser = build(subparsers)
    return parser
