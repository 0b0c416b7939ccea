"""Training health of a pretraining run: did the model learn anything?

Two checks per embedding view, read together:

* **Pretext task on held-out subjects.** Windows of subjects the model was not
  pretrained on are made as in training (the checkpoint's window, stride, TR,
  cleaning and robust scaler); the model draws its own pretraining masks (seeded) and
  predicts the hidden quantities (``pretext_predictions`` of each model, see
  :mod:`bsym.models.pretext`). Its R^2 over the hidden entries, pooled over all
  windows, is set against trivial baselines that see the same visible entries.
* **Embedding health** of the subject embeddings: effective rank (RankMe) of the
  embeddings centred per dimension, the spread of the per-dimension standard
  deviations and the dead dimensions.

Verdict (column ``learned``): a view has learned when, for every objective of the
view, the model's R^2 is strictly greater than the best baseline's R^2 and than 0 (the
best constant prediction), both finite, and its embeddings have not collapsed.
Embeddings have collapsed when they are not finite, when every dimension is dead, or
when the effective rank is below ``min(min_effective_rank, max_rank / 2)`` (default
``min_effective_rank`` 2; ``max_rank = min(n_subjects - 1, n_dims)``, the largest rank
centred embeddings can have). A dimension is dead when its standard deviation over
subjects is at most ``1e-3`` times the largest one.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bsym.evaluate import EvaluationError
from bsym.io import file_sha256
from bsym.outputs import save_figure

MIN_EFFECTIVE_RANK = 2.0
DEAD_TOLERANCE = 1e-3
RANK_EPS = 1e-7
DEFAULT_MAX_WINDOWS = 256
HEALTH_COLUMNS = ("model", "view", "dataset", "checkpoint_sha256", "stage", "pretext_task",
                  "pretext_score", "trivial_score", "trivial_baseline", "pretext_mse",
                  "trivial_mse", "n_hidden", "n_windows", "effective_rank", "n_dims",
                  "n_subjects", "collapse_threshold", "sd_min", "sd_median", "sd_max",
                  "dead_dims", "dead_fraction", "collapsed", "embedding_source", "learned",
                  "reason", "objectives", "seed")
BASELINE_LABELS = {"window_mean": "window mean", "roi_mean": "per-ROI mean",
                   "interpolation": "interpolation over time",
                   "mean_edge": "mean visible edge", "node_mean": "node mean of visible edges",
                   "context_mean": "context mean latent", "column_mean": "column mean",
                   "visible_mean": "visible mean",
                   "constant": "a constant"}


class HealthError(EvaluationError):
    """A training-health check that cannot run as asked."""


# -- embedding health ----------------------------------------------------------------------
def _matrix(x, what="embeddings"):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise HealthError(f"{what} must be a 2-D array (samples, dimensions), received shape "
                          f"{x.shape}")
    return x


def effective_rank(x, *, center=False, eps=RANK_EPS) -> float:
    """RankMe (Garrido et al. 2023): ``exp`` of the entropy of the normalised singular values.

    ``p_k = s_k / sum(s) + eps``; the rank of an identity matrix is its size, that of a
    rank-1 matrix about 1.

    Parameters
    ----------
    x : array-like (n_samples, n_dims)
    center : bool
        Subtract each dimension's mean first (what varies between samples).
    eps : float

    Returns
    -------
    float
    """
    x = _matrix(x)
    if center:
        x = x - x.mean(axis=0)
    s = np.linalg.svd(x, compute_uv=False)
    total = s.sum()
    p = (s / total if total > 0 else np.zeros_like(s)) + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def dimension_spread(x, *, tol=DEAD_TOLERANCE) -> dict:
    """Per-dimension standard deviations: min, median, max, and the dead dimensions.

    A dimension is dead when its SD is at most ``tol`` times the largest SD (every
    dimension is dead when all SDs are 0).

    Returns
    -------
    dict
        ``n_dims``, ``sd_min``, ``sd_median``, ``sd_max``, ``dead_dims``,
        ``dead_fraction``.
    """
    x = _matrix(x)
    sd = x.std(axis=0, ddof=1) if x.shape[0] > 1 else np.zeros(x.shape[1])
    dead = int((sd <= tol * sd.max()).sum())
    return {"n_dims": int(x.shape[1]), "sd_min": float(sd.min()),
            "sd_median": float(np.median(sd)), "sd_max": float(sd.max()), "dead_dims": dead,
            "dead_fraction": dead / x.shape[1]}


def collapse_threshold(n_samples, n_dims, min_effective_rank=MIN_EFFECTIVE_RANK) -> float:
    """Effective rank below which centred embeddings count as collapsed.

    ``min(min_effective_rank, max_rank / 2)`` with ``max_rank = min(n_samples - 1,
    n_dims)``, so that a handful of subjects can still pass.
    """
    return min(float(min_effective_rank), 0.5 * max(min(n_samples - 1, n_dims), 0))


def embedding_health(x, *, min_effective_rank=MIN_EFFECTIVE_RANK, tol=DEAD_TOLERANCE) -> dict:
    """Effective rank, SD spread, dead dimensions and the collapse flag of embeddings.

    Parameters
    ----------
    x : array-like (n_subjects, n_dims)
        One embedding per subject (or scan); at least 2 rows.
    min_effective_rank : float
        See :func:`collapse_threshold`.
    tol : float
        See :func:`dimension_spread`.

    Returns
    -------
    dict
        ``n_subjects``, ``effective_rank`` (of the centred embeddings),
        ``collapse_threshold``, :func:`dimension_spread`'s keys, ``collapsed``.
    """
    x = _matrix(x)
    if x.shape[0] < 2:
        raise HealthError(f"embedding health needs at least 2 subjects, received {x.shape[0]}")
    threshold = collapse_threshold(x.shape[0], x.shape[1], min_effective_rank)
    out = {"n_subjects": int(x.shape[0]), "collapse_threshold": threshold}
    if not np.isfinite(x).all():
        nan = float("nan")
        return {**out, "effective_rank": nan, "n_dims": int(x.shape[1]), "sd_min": nan,
                "sd_median": nan, "sd_max": nan, "dead_dims": int(x.shape[1]),
                "dead_fraction": 1.0, "collapsed": True}
    spread = dimension_spread(x, tol=tol)
    rank = effective_rank(x, center=True)
    collapsed = rank < threshold or spread["dead_dims"] == spread["n_dims"]
    return {**out, "effective_rank": rank, **spread, "collapsed": bool(collapsed)}


# -- the held-out windows ------------------------------------------------------------------
def _stage(ckpt):
    """The last stage the run trained (a positive budget), or None."""
    trained = [str(stage) for stage, steps in ckpt.get("stages") or [] if int(steps) > 0]
    return trained[-1] if trained else None


def held_out_subjects(ckpt, cohort, subjects=None, *, allow_pretrained_subjects=False) -> list:
    """The subjects to test: ``subjects``, or every subject not pretrained on.

    Pretraining subjects (``extra["train_subjects"]`` of a checkpoint trained on this
    store) are refused unless ``allow_pretrained_subjects``.
    """
    known = sorted(set(cohort.subjects["subject"].astype(str)))
    same_store = (ckpt.get("data") or {}).get("manifest_hash") == cohort.manifest_hash
    trained = set((ckpt.get("extra") or {}).get("train_subjects") or []) if same_store else set()
    if subjects is None:
        if same_store and not trained and not allow_pretrained_subjects:
            raise HealthError("the checkpoint does not record its pretraining subjects; "
                              "expected the held-out subjects (subjects= / --subjects-file)")
        subjects = [s for s in known if s not in trained or allow_pretrained_subjects]
    subjects = list(dict.fromkeys(str(s) for s in subjects))
    unknown = sorted(set(subjects) - set(known))
    if unknown:
        raise HealthError(f"subject(s) not in the store {cohort.path}: {', '.join(unknown[:5])}; "
                          "expected subject ids of this store")
    overlap = sorted(set(subjects) & trained)
    if overlap and not allow_pretrained_subjects:
        raise HealthError(f"{len(overlap)} of the {len(subjects)} subjects were pretrained on "
                          f"({', '.join(overlap[:3])}); expected held-out subjects (or "
                          "allow_pretrained_subjects / --allow-pretrained-subjects)")
    if len(subjects) < 2:
        raise HealthError(f"expected at least 2 held-out subjects, received {len(subjects)}")
    return subjects


def held_out_windows(ckpt, cohort, subjects, *, max_windows=DEFAULT_MAX_WINDOWS):
    """Windows of ``subjects`` made as in training, at most ``max_windows`` evenly spread.

    Window length, stride, TR, cleaning, SC transform and robust scaler come from the
    checkpoint (see :func:`bsym.evaluate.embeddings.embed_checkpoint`).
    """
    from torch.utils.data import Subset

    from bsym.data.dataset import WindowDataset
    from bsym.data.preprocess import RobustScaler, SignalCleaning
    from bsym.evaluate.embeddings import _checkpoint_settings

    settings = _checkpoint_settings(ckpt)
    stride = ((ckpt.get("data") or {}).get("dataset") or {}).get("stride")
    state = (ckpt.get("extra") or {}).get("scaler")
    if not state:
        warnings.warn("the checkpoint has no fitted scaler; testing on unscaled series",
                      RuntimeWarning, stacklevel=2)
    scans = cohort.subjects.loc[cohort.subjects["subject"].astype(str).isin(subjects), "scan"]
    dataset = WindowDataset(cohort, settings["window"], scans=scans.tolist(), stride=stride,
                            scaler=RobustScaler.from_state_dict(state) if state else None,
                            target_tr=settings["target_tr"],
                            cleaning=SignalCleaning(**settings["cleaning"]),
                            sc_transform=settings["sc_transform"])
    if max_windows is not None and len(dataset) > int(max_windows):
        pick = np.unique(np.linspace(0, len(dataset) - 1, int(max_windows)).round().astype(int))
        return Subset(dataset, pick.tolist())
    return dataset


# -- pretext scores ------------------------------------------------------------------------
def _append(store, prediction):
    parts = store.setdefault(prediction.task, {"target": [], "model": [],
                                               **{k: [] for k in prediction.baselines}})
    parts["target"].append(prediction.target)
    parts["model"].append(prediction.prediction)
    for name, value in prediction.baselines.items():
        parts[name].append(value)


def _numpy(values):
    import torch

    return torch.cat([v.detach().float().reshape(-1).cpu() for v in values]).numpy()


def _add_subject_means(sums, model, inputs, subjects):
    from bsym.evaluate.embeddings import _views

    for view, emb in _views(model.embed(inputs)).items():
        vectors = emb.subject.detach().double().cpu().numpy()
        for subject, vector in zip(subjects, vectors, strict=True):
            total, count = sums.setdefault(view, {}).get(subject, (0.0, 0))
            sums[view][subject] = (total + vector, count + 1)


def _pretext_batch(model, inputs, generator, stage):
    try:
        return model.pretext_predictions(inputs, generator=generator, stage=stage)
    except ValueError as err:
        raise HealthError(f"model {model.name or type(model).__name__!r} cannot run its "
                          f"pretext task on these windows: {err}") from None


def collect_pretext(model, dataset, *, seed=0, batch_size=16, device="cpu", stage=None,
                    embed=True, progress=False):
    """Run the model's pretext task over ``dataset`` with seeded masks.

    Returns
    -------
    views : dict
        View -> tuple of task names (in the model's order).
    arrays : dict
        Task -> ``{"target", "model", <baseline>...}`` flat float arrays (all windows).
    subject_means : dict
        View -> ``{subject: mean subject embedding}`` over the windows (empty unless
        ``embed``).
    n_windows : int
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from bsym.train.devices import select_device
    from bsym.train.engine import to_device

    device = select_device(device)
    model.eval().to(device)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    views, parts, sums, n_windows = {}, {}, {}, 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.no_grad():
        for batch in tqdm(loader, desc="pretext", unit="batch", disable=not progress):
            inputs = to_device({k: batch[k] for k in ("bold", "sc") if k in batch}, device)
            done = set()
            for view, predictions in _pretext_batch(model, inputs, generator, stage).items():
                views[view] = tuple(p.task for p in predictions)
                for p in (p for p in predictions if p.task not in done):
                    done.add(p.task)
                    _append(parts, p)
            if embed:
                _add_subject_means(sums, model, inputs, [str(s) for s in batch["subject"]])
            n_windows += int(inputs["bold"].shape[0])
    arrays = {task: {k: _numpy(v) for k, v in p.items()} for task, p in parts.items()}
    means = {view: {s: total / count for s, (total, count) in by.items()}
             for view, by in sums.items()}
    return views, arrays, means, n_windows


def score_objective(task, arrays) -> dict:
    """R^2 and MSE of the model and of each baseline; the best baseline by R^2.

    Besides the model's baselines, ``constant`` is the best constant prediction (the
    pooled mean of the hidden values): R^2 0 by definition, MSE their variance.

    Returns
    -------
    dict
        ``task``, ``pretext_score``, ``pretext_mse``, ``trivial_baseline``,
        ``trivial_score``, ``trivial_mse``, ``n_hidden``, ``baselines``
        (name -> ``{"r2", "mse"}``).
    """
    from bsym.models.pretext import regression_scores

    target = arrays["target"]
    scores = {k: regression_scores(target, v) for k, v in arrays.items() if k != "target"}
    scores["constant"] = {"r2": 0.0, "mse": float(np.var(target, dtype=np.float64))}
    model = scores.pop("model")
    ranked = sorted(scores, key=lambda k: -scores[k]["r2"] if math.isfinite(scores[k]["r2"])
                    else math.inf)
    best = ranked[0] if ranked else None
    return {"task": task, "pretext_score": model["r2"], "pretext_mse": model["mse"],
            "trivial_baseline": best,
            "trivial_score": scores[best]["r2"] if best else float("nan"),
            "trivial_mse": scores[best]["mse"] if best else float("nan"),
            "n_hidden": int(target.size),
            "baselines": {k: {"r2": v["r2"], "mse": v["mse"]} for k, v in scores.items()}}


# -- verdict -------------------------------------------------------------------------------
def _objective_passes(score):
    model, trivial = score["pretext_score"], score["trivial_score"]
    label = BASELINE_LABELS.get(score["trivial_baseline"], score["trivial_baseline"])
    shown = f"R^2 {model:.3g} vs {trivial:.3g}"
    if not (math.isfinite(model) and math.isfinite(trivial)):
        return False, f"{score['task']}: R^2 undefined ({shown} against {label})"
    if model > trivial:
        return True, f"{score['task']}: beat {label}: {shown}"
    return False, f"{score['task']}: did not beat {label}: {shown}"


def verdict(scores, health) -> tuple:
    """``(learned, reason)`` of one view from its objectives' scores and embedding health.

    Learned: every objective's R^2 strictly above its best baseline's (``constant``,
    R^2 0, included; both finite) and the embeddings not collapsed (see the module
    docstring).
    """
    checks = [_objective_passes(s) for s in scores]
    failed = [text for ok, text in checks if not ok]
    rank = f"effective rank {health['effective_rank']:.3g} of {health['n_dims']}"
    if health["collapsed"]:
        dead = health["dead_dims"] == health["n_dims"]
        failed.append(f"collapsed: all {health['n_dims']} dimensions dead" if dead
                      else f"collapsed: {rank}")
    if failed:
        return False, "; ".join(failed)
    return True, "; ".join([text for _, text in checks] + [rank])


def _headline(scores):
    """The objective with the smallest margin over its baseline (NaN margins first)."""
    def margin(s):
        value = s["pretext_score"] - s["trivial_score"]
        return value if math.isfinite(value) else -math.inf

    return min(scores, key=margin)


# -- the check -----------------------------------------------------------------------------
def _load_model(checkpoint):
    from bsym.train.checkpoint import load_trained

    model, ckpt = load_trained(checkpoint)
    if not hasattr(model, "pretext_predictions"):
        raise HealthError(f"{checkpoint}: model {ckpt['model']['name']!r} has no pretext task "
                          "(pretext_predictions); expected a self-supervised model such as "
                          "brainsymphony, brainlm, brainjepa or brainmass. Fix: give the "
                          "final.pt of a `bsym pretrain` run of one of them")
    return model, ckpt


def _check_embeddings(embeddings, sha, cohort):
    embeddings.check_cohort(cohort)
    made_by = embeddings.meta.get("checkpoint_sha256")
    if made_by != sha:
        raise HealthError(f"embeddings {embeddings.meta.get('path') or ''} were made by "
                          f"checkpoint {str(made_by)[:12]}..., expected the checkpoint given "
                          f"({sha[:12]}...); re-run `bsym embed` with it")


def _subject_matrix(view, subjects, embeddings, window_means):
    if embeddings is not None:
        return embeddings.subject_features(view, subjects)[0], "embeddings file"
    by_subject = window_means.get(view) or {}
    if not by_subject:
        raise HealthError(f"the model gave no {view!r} embedding to check")
    return np.stack([by_subject[s] for s in sorted(by_subject)]), "held-out windows"


def training_health(checkpoint, cohort, subjects=None, *, embeddings=None, seed=0,
                    batch_size=16, max_windows=DEFAULT_MAX_WINDOWS, device="cpu",
                    allow_pretrained_subjects=False, min_effective_rank=MIN_EFFECTIVE_RANK,
                    progress=False) -> pd.DataFrame:
    """Pretext task against trivial baselines, embedding health and a verdict, per view.

    Parameters
    ----------
    checkpoint : str or Path
        ``final.pt`` of a pretraining run.
    cohort : Cohort
        Store of the held-out subjects.
    subjects : sequence of str, optional
        Held-out subjects; default every subject of the store the run was not
        pretrained on.
    embeddings : EmbeddingSet, optional
        Embeddings of this checkpoint (``bsym embed``): embedding health uses their
        subject embeddings; without them, each subject's mean over the held-out windows.
    seed : int
        Seed of the pretext masks.
    batch_size : int
    max_windows : int or None
        Held-out windows at most (evenly spread); None for all.
    device : str
    allow_pretrained_subjects : bool
        Accept subjects the run was pretrained on.
    min_effective_rank : float
        See :func:`collapse_threshold`.
    progress : bool

    Returns
    -------
    DataFrame
        One row per view with the columns of ``HEALTH_COLUMNS``; ``objectives`` holds
        every objective's scores (JSON); a multi-objective view (``fusion``) shows the
        objective with the smallest margin over its baseline.
    """
    from bsym.train.checkpoint import check_fits_store

    checkpoint = Path(checkpoint)
    model, ckpt = _load_model(checkpoint)
    check_fits_store(ckpt, checkpoint, cohort, subjects=())  # the atlas, before any work
    held = held_out_subjects(ckpt, cohort, subjects,
                             allow_pretrained_subjects=allow_pretrained_subjects)
    check_fits_store(ckpt, checkpoint, cohort, subjects=held)
    sha = file_sha256(checkpoint)
    if embeddings is not None:
        _check_embeddings(embeddings, sha, cohort)
    dataset = held_out_windows(ckpt, cohort, held, max_windows=max_windows)
    stage = _stage(ckpt)
    views, arrays, means, n_windows = collect_pretext(
        model, dataset, seed=seed, batch_size=batch_size, device=device, stage=stage,
        embed=embeddings is None, progress=progress)
    scores = {task: score_objective(task, parts) for task, parts in arrays.items()}
    base = {"model": ckpt["model"]["name"], "dataset": cohort.path.name,
            "checkpoint_sha256": sha, "stage": stage, "n_windows": n_windows, "seed": int(seed)}
    rows = []
    for view, tasks in views.items():
        x, source = _subject_matrix(view, held, embeddings, means)
        health = embedding_health(x, min_effective_rank=min_effective_rank)
        rows.append(_row(base, view, [scores[t] for t in tasks], health, source))
    return pd.DataFrame(rows, columns=list(HEALTH_COLUMNS))


def _row(base, view, scores, health, source):
    learned, reason = verdict(scores, health)
    head = _headline(scores)
    return {**base, "view": view, "pretext_task": "+".join(s["task"] for s in scores),
            **{k: head[k] for k in ("pretext_score", "trivial_score", "trivial_baseline",
                                    "pretext_mse", "trivial_mse", "n_hidden")},
            **health, "embedding_source": source, "learned": learned, "reason": reason,
            "objectives": json.dumps(scores, default=float)}


# -- outputs -------------------------------------------------------------------------------
HEALTH_KIND = "health-table"


def health_table_is_ours(path) -> bool:
    """Whether ``path`` is a health table bsym wrote: Parquet marked ``health-table`` (or,
    from an older bsym, with exactly the health columns), or CSV with exactly them."""
    from bsym.outputs import csv_header, parquet_columns_and_kind

    if Path(path).suffix.lower() == ".csv":
        return csv_header(path) == list(HEALTH_COLUMNS)
    found = parquet_columns_and_kind(path)
    if found is None:
        return False
    columns, kind = found
    return kind == HEALTH_KIND or (kind is None and columns == list(HEALTH_COLUMNS))


def check_outputs(out, figure):
    """Refuse, before any work, a health table or loss figure path that holds anything
    bsym did not write (its own earlier outputs are replaced)."""
    from bsym.io import guard_output
    from bsym.outputs import guard_figure

    guard_output(out, is_ours=health_table_is_ours, what="health table", overwrite=True,
                 fix_other="choose another --out path, or move this file away yourself")
    guard_figure(figure, "--figure")


def write_table(table, path) -> Path:
    """Write the health table atomically: Parquet (marked as bsym's), or CSV for a
    ``.csv`` path."""
    from bsym.outputs import write_csv, write_parquet

    if Path(path).suffix.lower() == ".csv":
        return write_csv(table, path, what="the health table")
    return write_parquet(table, path, HEALTH_KIND, what="the health table")


def plot_loss_curves(checkpoint, path) -> Path:
    """Training and validation loss per stage against step, one figure per run (atomic).

    Parameters
    ----------
    checkpoint : str, Path or dict
        A checkpoint file (``final.pt``) or a loaded checkpoint, with ``history`` and
        ``val_history``.
    path : str or Path
        Image file; the format follows the suffix (``.png``, ``.pdf``, ``.svg``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ckpt = checkpoint if isinstance(checkpoint, dict) else _read_checkpoint(checkpoint)
    history, val = ckpt.get("history") or {}, list(ckpt.get("val_history") or [])
    fig, ax = plt.subplots(figsize=(7, 4))
    _draw_losses(ax, history, val)
    identity = ckpt.get("model") or {}
    ax.set(xlabel="optimizer step", ylabel="loss",
           title=f"{identity.get('name')} ({identity.get('preset')}): "
                 f"{len(history.get('step') or [])} logged steps")
    fig.tight_layout()
    try:
        return save_figure(fig, path, what="the loss-curve figure", dpi=120)
    finally:
        plt.close(fig)


def _read_checkpoint(path):
    from bsym.train.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _draw_losses(ax, history, val):
    stage_of = list(history.get("stage") or [])
    stages = list(dict.fromkeys(stage_of + [str(v["stage"]) for v in val]))
    losses = []
    for k, stage in enumerate(stages):
        train = [(s, loss) for s, st, loss in zip(history.get("step") or [], stage_of,
                                                  history.get("loss") or [], strict=False)
                 if st == stage]
        valid = [(v["step"], v["loss"]) for v in val if str(v["stage"]) == stage]
        for points, style, what in ((train, "-", "train"), (valid, "--", "validation")):
            if points:
                steps, values = zip(*points, strict=True)
                marker = "o" if what == "validation" or len(points) < 30 else None
                ax.plot(steps, values, style, marker=marker, markersize=3, color=f"C{k}",
                        label=f"{what} ({stage})")
                losses.extend(values)
    if not losses:
        ax.text(0.5, 0.5, "no loss recorded", ha="center", va="center",
                transform=ax.transAxes)
        return
    finite = [v for v in losses if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


# -- MLflow --------------------------------------------------------------------------------
def pretraining_run_id(checkpoint):
    """The MLflow run id of the pretraining (``run.json`` beside the checkpoint), or None."""
    summary = Path(checkpoint).parent / "run.json"
    if not summary.is_file():
        return None
    try:
        return json.loads(summary.read_text()).get("mlflow_run_id")
    except (OSError, ValueError, AttributeError) as err:
        raise HealthError(f"{summary}: cannot read the run summary ({err}); expected the "
                          "run.json written by `bsym pretrain`") from None


def check_tracked_run(tracker, run_id):
    """Raise :class:`HealthError` unless ``run_id`` exists in the tracker's store."""
    try:
        tracker.client.get_run(run_id)
    except Exception as err:  # noqa: BLE001 - MlflowException for a missing run
        raise HealthError(f"MLflow run {run_id} of the pretraining is not in {tracker.uri} "
                          f"({type(err).__name__}); expected the tracking URI the run was "
                          "logged to (--tracking-uri), or --no-tracking") from None


def log_health(tracker, table, run_id, *, artifacts=()) -> None:
    """Log each view's health metrics (``health.<view>.*``) into the pretraining run."""
    if tracker is None or not getattr(tracker, "enabled", False) or run_id is None:
        return
    metrics, tags = {}, {}
    for row in table.itertuples(index=False):
        prefix = f"health.{row.view}"
        for name in ("pretext_score", "trivial_score", "effective_rank", "dead_fraction"):
            value = float(getattr(row, name))
            if math.isfinite(value):
                metrics[f"{prefix}.{name}"] = value
        metrics[f"{prefix}.learned"] = float(bool(row.learned))
        tags[f"{prefix}.reason"] = str(row.reason)[:4000]
    tracker.log_metrics(metrics, run_id=run_id)
    tracker.set_tags(tags, run_id=run_id)
    for path in artifacts:
        tracker.log_artifact(path, "health", run_id=run_id)


__all__ = ["DEFAULT_MAX_WINDOWS", "HEALTH_COLUMNS", "MIN_EFFECTIVE_RANK", "HealthError",
           "check_tracked_run", "collapse_threshold", "collect_pretext", "dimension_spread",
           "effective_rank", "embedding_health", "held_out_subjects", "held_out_windows",
           "log_health", "plot_loss_curves", "pretraining_run_id", "score_objective",
           "training_health", "verdict", "write_table"]
