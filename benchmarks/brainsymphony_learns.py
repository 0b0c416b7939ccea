"""Evidence that BrainSymphony learns: held-out masked reconstruction against trivial baselines.

Simulates a one-site cohort (TR 0.72 s), splits subjects into pretraining and
held-out sets, pretrains BrainSymphony (all three stages) on the pretraining
subjects through the shared engine, then hides ROIs, time points and cells of
every held-out window with fixed seeded masks (ratio 0.15 each, as in training)
and scores the reconstruction of the hidden entries against

- **per-ROI mean**: each ROI's mean over its visible entries in the window
  (the window's visible mean when the whole ROI is hidden);
- **linear interpolation over time**: each ROI's hidden time points from its
  visible neighbours (the per-ROI mean where the whole ROI is hidden).

Baselines and scores are the package's (:mod:`bsym.models.pretext`), as used by
``bsym health``.

The Perceiver's reconstruction (the fMRI embeddings' own decoder, every mask at once) is
scored as **model**. The encoder-stage heads are scored on their own pretraining tasks,
one mask at a time, beside the same baselines given the same visible entries: the
spatial stream's head on hidden ROIs, the temporal stream's on hidden time points, the
context decoder on hidden cells (``stream_tasks`` in the JSON).

Scores (R^2 over the hidden entries, Pearson r, MSE) are reported overall and by
why an entry was hidden (its ROI, its time point, or only the cell).
Writes results/benchmarks/brainsymphony_learns_<preset>[_d<dim>].json and a bar chart (.png).

    python benchmarks/brainsymphony_learns.py [--subjects 100] [--steps 600] [--dim 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _stream_heads(model, x, masks):
    """Each encoder-stage head on its own pretraining task: ``{task: (hidden, prediction)}``
    with only that task's mask hidden (as in the encoder stage)."""
    from bsym.models.masking import apply_mask

    roi = masks["roi"][:, :, None].expand_as(x)
    time = masks["time"][:, None, :].expand_as(x)
    cell = masks["cell"]
    spatial = model.spatial.head(model.spatial(x, masks["roi"])[0])
    temporal = model.temporal.head(model.temporal(x, masks["time"])[0]).transpose(1, 2)
    context = torch.zeros_like(x)
    context[cell] = model.context.reconstruct(apply_mask(x, cell), cell)
    return {"roi": (roi, spatial), "time": (time, temporal), "cell": (cell, context)}


def _baselines(x, hidden):
    """Per-ROI mean and interpolation of the hidden entries of one window (numpy, R x T)."""
    from bsym.models.pretext import interpolate_time, row_mean

    x, visible = torch.as_tensor(x)[None], ~torch.as_tensor(hidden)[None]
    return {"roi_mean": row_mean(x, visible)[0].numpy(),
            "interp": interpolate_time(x, visible)[0].numpy()}


def plot(report, path):
    """Held-out R^2 by why an entry was hidden: the model beside both baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("all", "pooled"), ("roi", "hidden ROIs"), ("time", "hidden time points"),
              ("cell_only", "hidden cells")]
    methods = [("model", "BrainSymphony (Perceiver)", "C0"), ("interp", "interpolation", "C1"),
               ("roi_mean", "per-ROI mean", "C7")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [4, 3]})
    width = 0.8 / len(methods)
    for k, (key, label, colour) in enumerate(methods):
        values = [report["scores"][g][key]["r2"] for g, _ in groups]
        axes[0].bar([i + (k - 1) * width for i in range(len(groups))], values, width,
                    label=label, color=colour)
    axes[0].set_xticks(range(len(groups)), [name for _, name in groups])
    axes[0].set(ylabel="held-out R$^2$", title="all three masks at once (the model's decoder)")
    tasks = [("roi", "hidden ROIs\n(spatial stream)"), ("time", "hidden time points\n(temporal)"),
             ("cell", "hidden cells\n(context)")]
    heads = [("stream", "encoder-stage head", "C2"), ("interp", "interpolation", "C1"),
             ("roi_mean", "per-ROI mean", "C7")]
    for k, (key, label, colour) in enumerate(heads):
        values = [report["stream_tasks"][t][key]["r2"] for t, _ in tasks]
        axes[1].bar([i + (k - 1) * width for i in range(len(tasks))], values, width,
                    label=label, color=colour)
    axes[1].set_xticks(range(len(tasks)), [name for _, name in tasks])
    setup = report["setup"]
    budgets = dict(item.split("=") for item in (setup["stage_steps"] or "").split(",") if item)
    joint = int(budgets["joint"]) if budgets else setup["steps"] >= 3
    axes[1].set(title="each encoder-stage head on its own mask" +
                ("\n(after the joint stage, which does not train these heads)" if joint else ""))
    fig.suptitle(f"{setup['n_held_out_subjects']} held-out subjects; {setup['steps']} steps, "
                 f"{report['train_s']:.0f} s on {report['machine']['device']}", fontsize=10)
    for ax in axes:
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--rois", type=int, default=100)
    parser.add_argument("--timepoints", type=int, default=600)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--steps", type=int, default=600, help="total over the three stages")
    parser.add_argument("--stage-steps", default=None, metavar="STAGE=N,...",
                        help="steps per stage instead of an even split (e.g. "
                        "encoders=600,perceiver=0,joint=0)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--held-out", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="tiny", help="BrainSymphony preset (tiny, paper)")
    parser.add_argument("--dim", type=int, default=None, help="override the width")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=INT",
                        help="override another integer model argument (e.g. heads=4)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--device", default="cpu",
                        help="cpu (default: the evidence asked for is CPU minutes), cuda or auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from bsym.data.dataset import WindowDataset
    from bsym.data.preprocess import RobustScaler
    from bsym.data.simulate import simulate_cohort
    from bsym.models import build
    from bsym.models.masking import fmri_masks
    from bsym.models.pretext import regression_scores
    from bsym.train import TrainConfig, train

    work = Path(tempfile.mkdtemp(prefix="bsym-learns-"))
    t0 = time.perf_counter()
    cohort = simulate_cohort(work / "cohort", n_subjects=args.subjects, n_rois=args.rois,
                             n_timepoints=args.timepoints, n_sites=1, site_trs=(0.72,),
                             sessions=1, seed=args.seed, progress=False)
    simulate_s = time.perf_counter() - t0
    subjects = np.array(sorted(cohort.subjects["subject"].unique()))
    rng = np.random.default_rng(args.seed)
    held = set(rng.choice(subjects, int(round(args.held_out * len(subjects))), replace=False))
    table = cohort.subjects
    train_scans = table.loc[~table["subject"].isin(held), "scan"].tolist()
    test_scans = table.loc[table["subject"].isin(held), "scan"].tolist()
    train_set = WindowDataset(cohort, args.window, scans=train_scans, stride=args.window // 2)
    scaler = train_set.fit_scaler(RobustScaler())
    test_set = WindowDataset(cohort, args.window, scans=test_scans, scaler=scaler)

    torch.manual_seed(args.seed)
    overrides = {"dim": args.dim} if args.dim else {}
    overrides.update({k: int(v) for k, v in (item.split("=") for item in args.set)})
    model = build("brainsymphony", args.preset, n_rois=args.rois, n_timepoints=args.window,
                  **overrides)
    stage_steps = None
    if args.stage_steps:
        stage_steps = {k: int(v) for k, v in (p.split("=") for p in args.stage_steps.split(","))}
    config = TrainConfig(steps=args.steps, stage_steps=stage_steps, batch_size=args.batch_size,
                         lr=args.lr,
                         warmup_steps=20, seed=args.seed, device=args.device,
                         precision=args.precision, progress=True)
    t0 = time.perf_counter()
    result = train(model, train_set, config, work / "run")
    train_s = time.perf_counter() - t0

    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(12345)
    methods = ("model", "roi_mean", "interp")
    tasks = {name: {"truth": [], "stream": [], "roi_mean": [], "interp": []}
             for name in ("roi", "time", "cell")}
    buckets = {name: {"truth": [], **{m: [] for m in methods}}
               for name in ("all", "roi", "time", "cell_only")}
    with torch.no_grad():
        for i in range(len(test_set)):
            item = test_set[i]
            x = item["bold"][None]
            batch = {"bold": x.to(device), "sc": item["sc"][None].to(device)}
            masks = fmri_masks(1, args.rois, args.window, model.mask_ratio, generator)
            on_device = {k: v.to(device) for k, v in masks.items()}
            recon = model.reconstruct_fmri(batch, on_device)[0].float().cpu().numpy()
            heads = _stream_heads(model, batch["bold"], on_device)
            truth = x[0].numpy()
            for name, (hidden_t, pred) in heads.items():
                hidden_t = hidden_t[0].cpu().numpy()
                tasks[name]["truth"].append(truth[hidden_t])
                tasks[name]["stream"].append(pred[0].float().cpu().numpy()[hidden_t])
                for key, base in _baselines(truth, hidden_t).items():
                    tasks[name][key].append(base[hidden_t])
            hidden = masks["union"][0].numpy()
            roi = np.broadcast_to(masks["roi"][0].numpy()[:, None], hidden.shape)
            tim = np.broadcast_to(masks["time"][0].numpy()[None, :], hidden.shape)
            preds = {"model": recon, **_baselines(truth, hidden)}
            for name, where in (("all", hidden), ("roi", roi), ("time", tim & ~roi),
                                ("cell_only", hidden & ~roi & ~tim)):
                buckets[name]["truth"].append(truth[where])
                for key, pred in preds.items():
                    buckets[name][key].append(pred[where])
    scores = {}
    for name, parts in buckets.items():
        truth = np.concatenate(parts["truth"])
        scores[name] = {key: regression_scores(truth, np.concatenate(parts[key]))
                        for key in methods}
    stream_tasks = {}
    for name, parts in tasks.items():
        truth = np.concatenate(parts["truth"])
        stream_tasks[name] = {key: regression_scores(truth, np.concatenate(parts[key]))
                              for key in ("stream", "roi_mean", "interp")}

    report = {
        "benchmark": "brainsymphony_learns",
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": str(device) if device.type == "cpu" else
                    torch.cuda.get_device_name(device),
                    "platform": platform.platform(), "torch": torch.__version__},
        "setup": {**vars(args), "n_train_subjects": len(subjects) - len(held),
                  "n_held_out_subjects": len(held), "n_train_windows": len(train_set),
                  "n_test_windows": len(test_set), "model_params": model.param_counts()["total"],
                  "stages": list(model.stages())},
        "simulate_s": simulate_s, "train_s": train_s,
        "final_train_loss": result.final_loss,
        "scores": scores,
        "stream_tasks": stream_tasks,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"brainsymphony_learns_{args.preset}{'_d' + str(args.dim) if args.dim else ''}.json"
    path.write_text(json.dumps(report, indent=2))
    plot(report, path.with_suffix(".png"))
    print(f"pretrained {args.steps} steps in {train_s:.0f} s on {len(train_set)} windows of "
          f"{len(subjects) - len(held)} subjects; held out {len(held)} subjects "
          f"({len(test_set)} windows)")
    print(f"{'hidden by':<10}{'method':<10}{'R2':>8}{'r':>8}{'MSE':>8}{'n':>9}")
    for name, by in scores.items():
        for key, s in by.items():
            print(f"{name:<10}{key:<10}{s['r2']:>8.3f}{s['pearson_r']:>8.3f}{s['mse']:>8.3f}"
                  f"{s['n']:>9}")
    print("encoder-stage heads on their own tasks (one mask at a time):")
    for name, by in stream_tasks.items():
        for key, sc in by.items():
            print(f"{name:<10}{key:<10}{sc['r2']:>8.3f}{sc['pearson_r']:>8.3f}{sc['mse']:>8.3f}"
                  f"{sc['n']:>9}")
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
