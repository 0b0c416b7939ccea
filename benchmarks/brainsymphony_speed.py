"""BrainSymphony training speed and peak memory, beside the public implementation.

One training step = forward + backward + AdamW step of ``pretrain_loss`` (the
last stage of each model: end-to-end), for the fMRI branch (``branches=fmri``),
the SC branch (``branches=sc``) and the fusion model (``branches=both``), at the
``tiny`` and ``paper`` presets and batch sizes 1, 4 and 8.

With ``--public DIR`` the public code (github.com/Moein-Khajehnejad/BrainSymphony,
checked out in DIR, outside this repository; ``--fetch-public`` clones it there)
trains on the same inputs in the same run, on the same device (float32, as its
``train.py`` does, on CUDA too), for every ``paper`` configuration: its
own modules with its defaults (width 128, 6 layers, 4 heads, MLP 512, 6 signed
layers, dropout 0.1), one step as its ``train.py`` takes it (fMRI: MSE of the
reconstruction; SC: MSE on the edges its ``mask_random_edges`` hides, predicted by
its dense edge head; fusion: both, through its ``BrainSymphony`` module). Its
Perceiver holds 450 latents whatever the input; ``--rois`` other than 450 (a quick
check at a small size) resizes them.

Reported per configuration: wall seconds per step (median of the timed steps),
process CPU seconds per step (user + system, all threads: on a busy shared CPU
the wall time also counts waiting for a core, the CPU time does not), samples/s.
Each configuration runs in its own subprocess so memory figures do not mix:
on CPU the peak resident set (``ru_maxrss``) and its rise over the RSS after the
model, data and optimizer were built; on CUDA ``max_memory_allocated``, and the
model FLOPs utilisation (FLOPs of one step counted with ``torch.utils.flop_counter``,
over the card's dense bf16 peak).

    python benchmarks/brainsymphony_speed.py                      # everything, 2 threads
    python benchmarks/brainsymphony_speed.py --presets paper --branches both --batches 8 \\
        --variants fp32,bf16,fp32+fused,bf16+fused --public /tmp/BrainSymphony --fetch-public
    python benchmarks/brainsymphony_speed.py --device cuda --batches 1,8,32 --compile

``--variants`` lists the settings of our model to time, comma-separated:
``fp32`` or ``bf16`` (CPU or CUDA autocast), optionally with ``+fused`` (the
opt-in C++ CPU kernels, ``attention="fused"``; built or loaded in the warm-up step) and
``+compile`` (``torch.compile``, inductor; compiled in the warm-up step, outside
the timed ones). Without it a single variant comes from ``--precision``
(``auto``: bf16 on CUDA, fp32 on CPU), ``--attention`` and ``--compile``.
``--attention factorised`` times the CPU kernel of the Perceiver on CUDA instead
of SDPA. The model's defaults are fp32, eager, no fused kernels.

The workers run with ``OMP_WAIT_POLICY=PASSIVE`` (``--omp-wait active`` to
change): on a CPU shared with other jobs, OpenMP threads that spin at every
barrier lose their core to the neighbours and a 2-thread step gets 2-3x
slower; passive waiting keeps the figures about the models. ``--thp`` also sets
``THP_MEM_ALLOC_ENABLE=1`` (PyTorch backs large CPU tensors with huge pages).

Writes results/benchmarks/brainsymphony_speed.json and .png (``--out``) and prints
a table, and the ratios against the public code when it ran: per training sample,
against its run at the same batch, or, where that failed (its fusion step at batch 8
does not fit in 24 GB), against its best throughput at any batch of the branch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "benchmarks" / "brainsymphony_speed.json"
PUBLIC_URL = "https://github.com/Moein-Khajehnejad/BrainSymphony.git"
PUBLIC_MODES = {"fmri": "functional", "sc": "structural", "both": "multimodal"}
# Dense bf16 peak FLOP/s by device-name fragment (NVIDIA data sheets).
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12,
             "L40S": 362e12, "A10": 125e12, "T4": 65e12}


# -- measurement (inside a worker) ------------------------------------------------------
def _rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _shape(args):
    """(ROIs, time points) of the inputs: the preset's, ROIs overridden by ``--rois``."""
    from bsym.models import get_spec

    p = get_spec("brainsymphony").presets[args.preset]
    return args.rois or p["n_rois"], p["n_timepoints"]


def _batch(n_rois, n_timepoints, batch_size, device, seed=0):
    """Gaussian BOLD and a symmetric non-negative SC with about half of the edges present."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    bold = torch.randn(batch_size, n_rois, n_timepoints, generator=gen)
    a = torch.rand(batch_size, n_rois, n_rois, generator=gen)
    a = (a + a.transpose(1, 2)) / 2
    a = torch.where(a > 0.5, torch.log1p(100 * a), torch.zeros(()))
    a.diagonal(dim1=1, dim2=2).zero_()
    return {"bold": bold.to(device), "sc": a.to(device)}


def _measure(step, args, cuda, params):
    """Warm-up, then the timed steps of ``step`` (returns the loss): the configuration's
    figures. Memory: peak RSS and its rise over the RSS before the steps; on CUDA also
    the peak allocated memory and its rise over what was allocated before the steps."""
    import torch

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base_alloc = torch.cuda.memory_allocated() if cuda else 0
    base_rss = _rss_mb()
    for _ in range(args.warmup):
        step()
        sync()
    times, cpu, loss = [], [], None
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), _cpu_s()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu_s() - c0)
    per_step = statistics.median(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"preset": args.preset, "branch": args.branch, "batch": args.batch,
              "n_rois": _shape(args)[0], "threads": args.threads, "steps": args.steps,
              "s_per_step": per_step, "s_per_step_all": times,
              "samples_per_s": args.batch / per_step, "cpu_s_per_step": statistics.median(cpu),
              "s_per_sample": per_step / args.batch, "loss": loss, "params": params,
              "peak_rss_mb": peak, "base_rss_mb": base_rss, "rss_rise_mb": peak - base_rss}
    if cuda:
        result.update(peak_alloc_mb=torch.cuda.max_memory_allocated() / 2**20,
                      alloc_rise_mb=(torch.cuda.max_memory_allocated() - base_alloc) / 2**20)
    return result


def worker(args):
    """One configuration of our model; prints one JSON line."""
    import torch

    from bsym.models import build

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = build("brainsymphony", preset=args.preset, branches=args.branch,
                  attention=args.attention, n_rois=_shape(args)[0]).to(device).train()
    batch = _batch(*_shape(args), args.batch, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and cuda)
    loss_fn = torch.compile(model.pretrain_loss) if args.compile else model.pretrain_loss

    def step(fn=loss_fn):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = fn(batch, generator=gen)
        loss.float().backward()
        opt.step()
        return float(loss)

    result = _measure(step, args, cuda, model.param_counts()["total"])
    result.update(
        implementation="bsym",
        variant=_variant_name("bf16" if bf16 else "fp32", args.compile, args.attention),
        precision="bf16" if bf16 else "fp32", compile=args.compile,
        attention=model.perceiver._impl(device) if model.has_fmri else None,
        device=torch.cuda.get_device_name(device) if cuda else _cpu_name())
    if cuda:
        result.update(_cuda_flops(model, step, result["s_per_step"], device))
    print(json.dumps(result))


def _cuda_flops(model, step, per_step, device):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(model.pretrain_loss)  # eager: the same arithmetic, visible to the counter
    flops = counter.get_total_flops()
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return {"flops_per_step": flops, "tflops_per_s": flops / per_step / 1e12,
            "mfu": flops / per_step / peak if peak else None}


# -- the public implementation (inside a worker) ----------------------------------------
def _public_model(args, n_rois, n_timepoints):
    """The public ``BrainSymphony`` module in the branch's mode, with its defaults."""
    import types

    import torch

    root = Path(args.public).resolve()
    sys.path.insert(0, str(root))
    # its models/__init__.py imports a name models/layers does not export: load the
    # package's modules without running that file
    package = types.ModuleType("models")
    package.__path__ = [str(root / "models")]
    sys.modules["models"] = package
    from models.brainsymphony import BrainSymphony as PublicBrainSymphony

    config = {"mode": PUBLIC_MODES[args.branch], "rois": n_rois, "time_steps": n_timepoints,
              "dim": 128, "num_layers": 6, "num_heads": 4, "mlp_dim": 512,
              "num_layers_struct": 6, "num_heads_struct": 4,
              "max_len_spatial": n_rois + 50, "max_len_temp": 5000}
    model = PublicBrainSymphony(config)
    if model.mode != "structural" and n_rois != model.functional_module.perceiver.num_rois:
        perceiver = model.functional_module.perceiver   # 450 latents are built in
        perceiver.latents = torch.nn.Parameter(torch.randn(n_rois, config["dim"]))
        perceiver.num_rois = n_rois
    return model


def public_worker(args):
    """One configuration of the public code; prints one JSON line."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    n_rois, n_timepoints = _shape(args)
    model = _public_model(args, n_rois, n_timepoints).to(device).train()
    from utils.graph_utils import mask_random_edges, weighted_mse_loss

    data = _batch(n_rois, n_timepoints, args.batch, device)
    bold, adj = data["bold"], data["sc"]
    batch = {"fmri": bold, "sc_adj": adj, "sc_feats": adj}

    def loss_of(outputs, mask):
        loss = 0.0
        if "func_recon" in outputs:
            loss = loss + F.mse_loss(outputs["func_recon"], bold)
        if "struct_pred_weights" in outputs:
            loss = loss + weighted_mse_loss(outputs["struct_pred_weights"], adj, mask)
        return loss

    if model.mode != "structural":   # its temporal stream is built lazily: one sample first
        with torch.no_grad():
            one = {key: value[:1] for key, value in batch.items()}
            model({**one, "sc_mask": mask_random_edges(one["sc_adj"])})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        mask = mask_random_edges(adj, mask_ratio=0.2)
        loss = loss_of(model({**batch, "sc_mask": mask}), mask)
        loss.backward()
        opt.step()
        return float(loss)

    result = _measure(step, args, cuda, sum(p.numel() for p in model.parameters()))
    # its train.py runs float32, without autocast, on CUDA too
    result.update(implementation="public", variant="public", precision="fp32", compile=False,
                  attention=None, public_commit=_commit(args.public),
                  device=torch.cuda.get_device_name(device) if cuda else _cpu_name())
    print(json.dumps(result))


# -- orchestration ----------------------------------------------------------------------
def _cpu_name():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _commit(path):
    """``git describe`` of a checkout (commit, ``-dirty`` when modified), or None."""
    try:
        out = subprocess.run(["git", "-C", str(path), "describe", "--always", "--dirty",
                              "--abbrev=12"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _variant_name(precision, compiled, attention="auto"):
    kernel = f"+{attention}" if attention not in ("auto", None) else ""
    return precision + kernel + ("+compile" if compiled else "")


def parse_variants(text, precision, compiled, attention):
    """``[(precision, compile, attention), ...]`` from ``--variants`` (or the single flags)."""
    if not text:
        return [(precision, compiled, attention)]
    variants = []
    for item in text.split(","):
        parts = item.strip().split("+")
        extras = set(parts[1:])
        if parts[0] not in ("fp32", "bf16", "auto") or not extras <= {"fused", "compile"} \
                or len(extras) != len(parts) - 1:
            raise SystemExit(f"--variants: expected items like fp32, bf16, fp32+fused, "
                             f"bf16+fused+compile; got {item!r}")
        variants.append((parts[0], "compile" in extras,
                         "fused" if "fused" in extras else attention))
    return variants


def fetch_public(path):
    """Clone the public repository into ``path`` unless it is already there."""
    path = Path(path)
    if (path / "models" / "__init__.py").exists():
        return
    if path.exists() and any(path.iterdir()):
        raise SystemExit(f"--fetch-public: {path} exists and is not a checkout of the public "
                         "code; pass an empty or missing folder")
    subprocess.run(["git", "clone", "--depth", "1", PUBLIC_URL, str(path)], check=True)


def run_config(config, args):
    """Runs one configuration in a fresh process; its JSON result (or an error)."""
    impl, preset, branch, batch, precision, compiled, attention = config
    steps = args.steps or (10 if preset == "tiny" or args.device != "cpu" else 5)
    warmup = 2 if preset == "tiny" else 1
    if args.device != "cpu":
        warmup = 3  # CUDA context, cuBLAS handles, autotuning (and compilation)
    cmd = [sys.executable, __file__, "--worker", impl, "--preset", preset, "--branch", branch,
           "--batch", str(batch), "--steps", str(steps), "--warmup", str(warmup),
           "--threads", str(args.threads), "--device", args.device, "--precision", precision,
           "--attention", attention]
    cmd += ["--compile"] if compiled else []
    cmd += ["--rois", str(args.rois)] if args.rois else []
    cmd += ["--public", str(args.public)] if impl == "public" else []
    env = {**os.environ, "OMP_WAIT_POLICY": args.omp_wait.upper()}
    if args.thp:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    failed = {"implementation": impl, "variant": "public" if impl == "public" else
              _variant_name(precision, compiled, attention), "preset": preset, "branch": branch,
              "batch": batch}
    load = os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {**failed, "error": "timeout"}
    if proc.returncode < 0:  # a signal: SIGKILL is most often the kernel's OOM killer
        name = signal.Signals(-proc.returncode).name
        hint = " (out of memory? see dmesg)" if name == "SIGKILL" else ""
        return {**failed, "error": f"killed by {name}{hint}"}
    if proc.returncode:
        lines = proc.stderr.strip().splitlines()
        return {**failed, "error": lines[-1] if lines else f"exit {proc.returncode}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_before"] = load
    return result


def configs_of(args):
    """Every configuration to run: ours per variant, the public code beside paper ones."""
    variants = parse_variants(args.variants, args.precision, args.compile, args.attention)
    configs = []
    for preset in args.presets.split(","):
        for branch in args.branches.split(","):
            for batch in map(int, args.batches.split(",")):
                configs += [("bsym", preset, branch, batch, *v) for v in variants]
                if args.public and preset == "paper":
                    configs.append(("public", preset, branch, batch, "fp32", False, "auto"))
    return configs


def _best(runs):
    """The fastest of repeated runs of one configuration, with every run's time kept."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    best = dict(min(ok, key=lambda r: r["s_per_step"]))
    best["s_per_step_runs"] = [r["s_per_step"] for r in ok]
    best["peak_rss_mb_max"] = max(r["peak_rss_mb"] for r in ok)
    return best


def _peak_mb(r):
    return r.get("peak_alloc_mb", r["peak_rss_mb"])


def compare(results):
    """Each of our variants against the public code, per training sample.

    The public run of the same branch and batch is the reference; where it failed (at
    paper size its fusion step does not fit in 24 GB at batch 8), its best throughput
    at any batch of that branch is, and ``public_batch`` says which. Memory is only
    compared at the same batch (``memory_share`` is None otherwise).
    """
    public = [r for r in results if r.get("implementation") == "public"]
    rows = []
    for r in results:
        if r.get("implementation") != "bsym" or "error" in r or r.get("preset") != "paper":
            continue
        same = [p for p in public if p["branch"] == r["branch"] and p["batch"] == r["batch"]]
        ran = [p for p in public if p["branch"] == r["branch"] and "error" not in p]
        same_ok = bool(same) and "error" not in same[0]
        ref = same[0] if same_ok else max(ran, key=lambda p: p["samples_per_s"], default=None)
        if ref is None:
            continue
        rows.append({"branch": r["branch"], "batch": r["batch"], "variant": r["variant"],
                     "public_batch": ref["batch"],
                     "public_error_at_batch": same[0].get("error") if same else None,
                     "ours_s_per_step": r["s_per_step"], "public_s_per_step": ref["s_per_step"],
                     "ours_samples_per_s": r["samples_per_s"],
                     "public_samples_per_s": ref["samples_per_s"],
                     "speedup": r["samples_per_s"] / ref["samples_per_s"],
                     "cpu_speedup": (ref["cpu_s_per_step"] / ref["batch"])
                     / (r["cpu_s_per_step"] / r["batch"]),
                     "ours_peak_mb": _peak_mb(r), "public_peak_mb": _peak_mb(ref),
                     "memory_share": _peak_mb(r) / _peak_mb(ref) if same_ok else None})
    return rows


def table(results):
    cuda = any("mfu" in r for r in results)
    head = (f"{'preset':<6} {'branch':<6} {'variant':<13} {'B':>2} {'s/step':>8} {'cpu s':>7} "
            f"{'samples/s':>10} {'peak MB':>9} {'rise MB':>9}")
    lines = [head + (f" {'TFLOP/s':>8} {'MFU':>6}" if cuda else "")]
    for r in results:
        name = r.get("variant", "")
        if "error" in r:
            lines.append(f"{r['preset']:<6} {r['branch']:<6} {name:<13} {r['batch']:>2} "
                         f"{r['error']}")
            continue
        peak, rise = _peak_mb(r), r.get("alloc_rise_mb", r["rss_rise_mb"])
        line = (f"{r['preset']:<6} {r['branch']:<6} {name:<13} {r['batch']:>2} "
                f"{r['s_per_step']:>8.3f} {r['cpu_s_per_step']:>7.2f} {r['samples_per_s']:>10.2f} "
                f"{peak:>9.0f} {rise:>9.0f}")
        if cuda:
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
            line += f" {r.get('tflops_per_s', 0):>8.1f} {mfu:>6}"
        lines.append(line)
    return "\n".join(lines)


def plot(results, comparison, path, meta):
    """Side by side when the public code ran (samples/s and peak memory per variant),
    else throughput and memory against the batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "error" not in r]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    if comparison:
        _plot_side_by_side(axes, results, comparison)
    else:
        _plot_batches(axes, ok)
    size = f", inputs of {meta['n_rois']} ROIs" if meta["n_rois"] else ""
    fig.suptitle(f"BrainSymphony training step, {meta['cpu']}, {meta['threads']} threads, "
                 f"torch {meta['torch']}, commit {meta['commit']}{size}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_side_by_side(axes, results, comparison):
    ok = [r for r in results if "error" not in r]
    groups = sorted({(c["branch"], c["batch"]) for c in comparison})
    names = list(dict.fromkeys([c["variant"] for c in comparison])) + ["public"]
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        rows = [next((r for r in ok if r["preset"] == "paper" and r["branch"] == b
                      and r["batch"] == n and r["variant"] == name), None) for b, n in groups]
        xs = [g + (k - (len(names) - 1) / 2) * width for g in range(len(groups))]
        colour = "0.5" if name == "public" else f"C{k}"
        for ax, value in ((axes[0], lambda r: r["samples_per_s"]),
                          (axes[1], lambda r: _peak_mb(r) / 1024)):
            heights = [value(r) if r else 0 for r in rows]
            bars = ax.bar(xs, heights, width, color=colour, label=name)
            if name == "public":
                _mark_failed(ax, xs, groups, results)
                continue
            for bar, (b, n) in zip(bars, groups):
                c = next((c for c in comparison if c["branch"] == b and c["batch"] == n
                          and c["variant"] == name), None)
                if c is None or (ax is axes[1] and c["memory_share"] is None):
                    continue
                label = (f"{c['speedup']:.1f}x" if ax is axes[0]
                         else f"{100 * c['memory_share']:.0f}%")
                label += "*" if c["public_batch"] != c["batch"] else ""
                ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=8)
    labels = [f"{'fusion' if b == 'both' else b}, batch {n}" for b, n in groups]
    axes[0].set(ylabel="training samples / s", yscale="log",
                title="throughput (label: speed-up over the public code;\n"
                "*: over its best batch, where this batch failed)")
    axes[1].set(ylabel="peak memory (GB)", yscale="log",
                title="peak RSS (label: share of the public code's at the same batch)")
    for ax in axes:
        ax.set_xticks(range(len(groups)), labels)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)


def _mark_failed(ax, xs, groups, results):
    """Write the public code's error (e.g. killed for memory) where its bar is missing."""
    for x, (branch, batch) in zip(xs, groups):
        failed = next((r for r in results if r.get("implementation") == "public"
                       and r["branch"] == branch and r["batch"] == batch and "error" in r), None)
        if failed is not None:
            ax.annotate(failed["error"].split(" (")[0], (x, 0.02), xycoords=("data", "axes fraction"),
                        rotation=90, ha="center", va="bottom", fontsize=7, color="0.3")


def _plot_batches(axes, ok):
    for preset, marker in (("tiny", "o"), ("paper", "s")):
        for branch, colour in (("fmri", "C0"), ("sc", "C1"), ("both", "C2")):
            for variant in dict.fromkeys(r["variant"] for r in ok):
                rows = sorted((r for r in ok if r["preset"] == preset and r["branch"] == branch
                               and r["variant"] == variant), key=lambda r: r["batch"])
                if not rows:
                    continue
                style = "-" if preset == "paper" else ":"
                label = f"{branch} ({preset}, {variant})"
                batches = [r["batch"] for r in rows]
                axes[0].plot(batches, [r["samples_per_s"] for r in rows], style,
                             marker=marker, color=colour, label=label)
                axes[1].plot(batches, [_peak_mb(r) / 1024 for r in rows], style,
                             marker=marker, color=colour, label=label)
    axes[0].set(xlabel="batch", ylabel="training samples / s", yscale="log", title="throughput")
    axes[1].set(xlabel="batch", ylabel="peak memory (GB)", yscale="log", title="peak memory")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)


def _meta(args):
    import torch

    return {"python": platform.python_version(), "machine": platform.machine(),
            "node": platform.node(), "cpu": _cpu_name(), "cpus": os.cpu_count(),
            "threads": args.threads, "device": args.device, "attention": args.attention,
            "variants": [_variant_name(*v) for v in parse_variants(
                args.variants, args.precision, args.compile, args.attention)],
            "torch": torch.__version__, "commit": _commit(ROOT),
            "public": str(args.public) if args.public else None,
            "public_commit": _commit(args.public) if args.public else None,
            "omp_wait_policy": args.omp_wait, "thp": args.thp, "repeat": args.repeat,
            "n_rois": args.rois, "step": "forward + backward + AdamW of the training loss"}


def report(comparison):
    print("\nagainst the public implementation (same run, same inputs; per training sample):")
    for row in comparison:
        against = f"B={row['public_batch']}"
        if row["public_batch"] != row["batch"]:
            why = row["public_error_at_batch"] or "not run"
            against += f", its best (at B={row['batch']}: {why})"
        print(f"  {row['branch']:<5} B={row['batch']} {row['variant']:<13}: "
              f"{row['ours_samples_per_s']:.2f} vs {row['public_samples_per_s']:.2f} samples/s "
              f"(public {against}): {row['speedup']:.1f}x faster, CPU time "
              f"{row['cpu_speedup']:.1f}x; peak {row['ours_peak_mb'] / 1024:.2f} GB"
              + (f" vs {row['public_peak_mb'] / 1024:.2f} GB ({100 * row['memory_share']:.0f}%)"
                 if row["memory_share"] is not None else ""))


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,paper")
    parser.add_argument("--branches", default="fmri,sc,both")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per configuration (default 10 tiny, 5 paper)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--variants", default=None,
                        help="our settings to time, e.g. fp32,bf16,bf16+fused,fp32+compile "
                        "(default: one, from --precision, --attention and --compile)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--attention", choices=("auto", "factorised", "fused", "sdpa", "naive"),
                        default="auto", help="Perceiver cross-attention (auto: SDPA on CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the loss")
    parser.add_argument("--public", type=Path, default=None,
                        help="checkout of the public BrainSymphony code: time it beside ours")
    parser.add_argument("--fetch-public", action="store_true",
                        help="git clone the public code into --public first if it is missing")
    parser.add_argument("--rois", type=int, default=None,
                        help="ROIs of the inputs instead of the preset's (quick checks)")
    parser.add_argument("--omp-wait", choices=("passive", "active"), default="passive",
                        help="OMP_WAIT_POLICY of the workers (default passive)")
    parser.add_argument("--thp", action="store_true",
                        help="THP_MEM_ALLOC_ENABLE=1: huge pages for large CPU tensors")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every configuration this many times, in rounds, and keep "
                        "the fastest (other jobs on a shared CPU only ever slow a run down)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", choices=("bsym", "public"), help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--branch", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        return (public_worker if args.worker == "public" else worker)(args)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.public and args.fetch_public:
        fetch_public(args.public)
    if args.public and not (args.public / "models" / "__init__.py").exists():
        raise SystemExit(f"--public {args.public}: no public BrainSymphony checkout there "
                         "(models/__init__.py missing); add --fetch-public to clone it")
    meta = _meta(args)   # before the runs: the commit and state of the code that runs
    configs = configs_of(args)
    runs = {c: [] for c in configs}
    for round_ in range(args.repeat):
        for config in configs:
            result = run_config(config, args)
            runs[config].append(result)
            tag = f"  (round {round_ + 1}/{args.repeat})" if args.repeat > 1 else ""
            print(table([result]).splitlines()[-1] + tag, flush=True)
    results = [_best(runs[c]) for c in configs]
    comparison = compare(results)
    payload = {"meta": meta, "results": results, "comparison": comparison}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, comparison, args.out.with_suffix(".png"), meta)
    print()
    print(table(results))
    if comparison:
        report(comparison)
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
