"""BrainSymphony training speed and peak memory, against the public implementation.

One training step = forward + backward + AdamW step of ``pretrain_loss`` (the
last stage of each model: end-to-end), for the fMRI branch (``branches=fmri``),
the SC branch (``branches=sc``) and the fusion model (``branches=both``), at the
``tiny`` and ``paper`` presets and batch sizes 1, 4 and 8.

Reported per configuration: wall seconds per step (median of the timed steps),
process CPU seconds per step (user + system, all threads: on a busy shared CPU
the wall time also counts waiting for a core, the CPU time does not), samples/s.
Each configuration runs in its own subprocess so memory figures do not mix:
on CPU the peak resident set (``ru_maxrss``) and its rise over the RSS after the
model, data and optimizer were built; on CUDA ``max_memory_allocated``, with
bf16 autocast, and the model FLOPs utilisation (FLOPs of one step counted with
``torch.utils.flop_counter``, over the card's dense bf16 peak).

    python benchmarks/brainsymphony_speed.py                      # everything, 2 threads
    python benchmarks/brainsymphony_speed.py --presets paper --branches fmri --batches 8
    python benchmarks/brainsymphony_speed.py --device cuda --batches 1,8,32 --compile

On CUDA, ``--precision fp32`` turns bf16 autocast off (TF32 matrix products stay
off too, PyTorch's default), ``--attention factorised`` times the CPU kernel of
the Perceiver instead of SDPA, and ``--compile`` wraps the loss in
``torch.compile`` (inductor; the compilation happens in the warm-up steps).

The workers run with ``OMP_WAIT_POLICY=PASSIVE`` (``--omp-wait active`` to
change): on a CPU shared with other jobs, OpenMP threads that spin at every
barrier lose their core to the neighbours and a 2-thread step gets 2-3x
slower; passive waiting keeps the figures about the model. ``--thp`` also sets
``THP_MEM_ALLOC_ENABLE=1`` (PyTorch backs large CPU tensors with huge pages:
fewer page faults, which are expensive in a VM); it is off by default because
the reference figures were measured without it.

Writes results/benchmarks/brainsymphony_speed.json and .png and prints a table.
The reference figures (public code, 2-core CPU, 2 threads, paper size, one
step) come from DESIGN.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "benchmarks" / "brainsymphony_speed.json"

# Public implementation, 2-core CPU, 2 threads, paper size: seconds per step, peak GB.
REFERENCE = {
    ("fmri", 1): {"s_per_step": 2.9, "peak_gb": 2.4},
    ("fmri", 8): {"s_per_step": 30.0, "peak_gb": 16.0},
    ("sc", 1): {"s_per_step": 2.2, "peak_gb": None},
    ("sc", 4): {"s_per_step": 11.7, "peak_gb": 6.7},
}
# Dense bf16 peak FLOP/s by device-name fragment (NVIDIA data sheets).
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12,
             "L40S": 362e12, "A10": 125e12, "T4": 65e12}


def _rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _batch(preset, batch_size, device, seed=0):
    import torch

    from bsym.models import get_spec

    p = get_spec("brainsymphony").presets[preset]
    r, t = p["n_rois"], p["n_timepoints"]
    gen = torch.Generator().manual_seed(seed)
    bold = torch.randn(batch_size, r, t, generator=gen)
    a = torch.rand(batch_size, r, r, generator=gen)
    a = (a + a.transpose(1, 2)) / 2
    a = torch.where(a > 0.5, torch.log1p(100 * a), torch.zeros(()))  # ~50% of edges present
    a.diagonal(dim1=1, dim2=2).zero_()
    return {"bold": bold.to(device), "sc": a.to(device)}


def worker(args):
    """One configuration; prints one JSON line."""
    import torch

    from bsym.models import build

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build("brainsymphony", preset=args.preset, branches=args.branch,
                  attention=args.attention).to(device).train()
    batch = _batch(args.preset, args.batch, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    cuda = device.type == "cuda"
    bf16 = args.precision == "bf16" or (args.precision == "auto" and cuda)
    loss_fn = torch.compile(model.pretrain_loss) if args.compile else model.pretrain_loss

    def step(fn=loss_fn):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = fn(batch, generator=gen)
        loss.float().backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        return float(loss)

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    base_rss = _rss_mb()
    for _ in range(args.warmup):
        step()
    times, cpu = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), _cpu_s()
        loss = step()
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu_s() - c0)
    per_step = statistics.median(times)
    result = {
        "preset": args.preset, "branch": args.branch, "batch": args.batch,
        "precision": "bf16" if bf16 else "fp32", "compile": args.compile,
        "attention": model.perceiver._impl(device) if model.has_fmri else None,
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "steps": args.steps, "s_per_step": per_step,
        "s_per_step_all": times, "samples_per_s": args.batch / per_step,
        "cpu_s_per_step": statistics.median(cpu),
        "s_per_sample": per_step / args.batch, "loss": loss,
        "params": model.param_counts()["total"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "base_rss_mb": base_rss,
    }
    result["rss_rise_mb"] = result["peak_rss_mb"] - base_rss
    if cuda:
        from torch.utils.flop_counter import FlopCounterMode

        result["peak_alloc_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["alloc_rise_mb"] = (torch.cuda.max_memory_allocated() - base_alloc) / 2**20
        counter = FlopCounterMode(display=False)
        with counter:
            step(model.pretrain_loss)  # eager: the same arithmetic, visible to the counter
        flops = counter.get_total_flops()
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        result["flops_per_step"] = flops
        result["tflops_per_s"] = flops / per_step / 1e12
        result["mfu"] = flops / per_step / peak if peak else None
    print(json.dumps(result))


def run_config(preset, branch, batch, args):
    steps = args.steps or (10 if preset == "tiny" or args.device != "cpu" else 5)
    warmup = 2 if preset == "tiny" else 1
    if args.device != "cpu":
        warmup = 3  # CUDA context, cuBLAS handles, autotuning (and compilation)
    cmd = [sys.executable, __file__, "--worker", "--preset", preset, "--branch", branch,
           "--batch", str(batch), "--steps", str(steps), "--warmup", str(warmup),
           "--threads", str(args.threads), "--device", args.device,
           "--precision", args.precision, "--attention", args.attention]
    if args.compile:
        cmd.append("--compile")
    env = {**os.environ, "OMP_WAIT_POLICY": args.omp_wait.upper()}
    if args.thp:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    load = os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"preset": preset, "branch": branch, "batch": batch, "error": "timeout"}
    if proc.returncode:
        return {"preset": preset, "branch": branch, "batch": batch,
                "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_before"] = load
    return result


def _torch_version():
    import torch

    return torch.__version__


def _best(runs):
    """The fastest of repeated runs of one configuration, with every run's time kept."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    best = dict(min(ok, key=lambda r: r["s_per_step"]))
    best["s_per_step_runs"] = [r["s_per_step"] for r in ok]
    best["peak_rss_mb_max"] = max(r["peak_rss_mb"] for r in ok)
    return best


def compare(results):
    """Ratios against the reference at paper size (same batch): speed-up and memory share.

    CPU runs only: the reference figures were measured on a 2-core CPU.
    """
    rows = []
    for r in results:
        ref = REFERENCE.get((r.get("branch"), r.get("batch")))
        if r.get("preset") != "paper" or ref is None or "error" in r or "mfu" in r:
            continue
        row = {"branch": r["branch"], "batch": r["batch"], "ours_s": r["s_per_step"],
               "reference_s": ref["s_per_step"], "speedup": ref["s_per_step"] / r["s_per_step"]}
        if ref["peak_gb"] is not None:
            ours_gb = r.get("peak_alloc_mb", r["peak_rss_mb"]) / 1024
            row.update(ours_peak_gb=ours_gb, reference_peak_gb=ref["peak_gb"],
                       memory_share=ours_gb / ref["peak_gb"])
        rows.append(row)
    return rows


def table(results):
    cuda = any("mfu" in r for r in results)
    head = f"{'preset':<6} {'branch':<6} {'mode':<12} {'B':>2} {'s/step':>8} {'cpu s':>7} {'samples/s':>10} "
    head += f"{'peak MB':>9} {'rise MB':>9}" + (f" {'TFLOP/s':>8} {'MFU':>6}" if cuda else "")
    lines = [head]
    for r in results:
        if "error" in r:
            lines.append(f"{r['preset']:<6} {r['branch']:<6} {r['batch']:>2} {r['error']}")
            continue
        peak = r.get("peak_alloc_mb", r["peak_rss_mb"])
        rise = r.get("alloc_rise_mb", r["rss_rise_mb"])
        mode = f"{r['precision']}{'+compile' if r['compile'] else ''}"
        line = (f"{r['preset']:<6} {r['branch']:<6} {mode:<12} {r['batch']:>2} {r['s_per_step']:>8.3f} "
                f"{r['cpu_s_per_step']:>7.2f} {r['samples_per_s']:>10.2f} {peak:>9.0f} {rise:>9.0f}")
        if cuda:
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
            line += f" {r['tflops_per_s']:>8.1f} {mfu:>6}"
        lines.append(line)
    return "\n".join(lines)


def plot(results, comparison, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "error" not in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for preset, marker in (("tiny", "o"), ("paper", "s")):
        for branch, colour in (("fmri", "C0"), ("sc", "C1"), ("both", "C2")):
            rows = sorted((r for r in ok if r["preset"] == preset and r["branch"] == branch),
                          key=lambda r: r["batch"])
            if not rows:
                continue
            label = f"{branch} ({preset})"
            style = "-" if preset == "paper" else ":"
            axes[0].plot([r["batch"] for r in rows], [r["samples_per_s"] for r in rows],
                         style, marker=marker, color=colour, label=label)
            axes[1].plot([r["batch"] for r in rows],
                         [r.get("peak_alloc_mb", r["peak_rss_mb"]) / 1024 for r in rows],
                         style, marker=marker, color=colour, label=label)
    for (branch, batch), ref in REFERENCE.items():
        colour = "C0" if branch == "fmri" else "C1"
        axes[0].scatter([batch], [batch / ref["s_per_step"]], marker="x", color=colour, s=60)
        if ref["peak_gb"]:
            axes[1].scatter([batch], [ref["peak_gb"]], marker="x", color=colour, s=60)
    axes[0].set(xlabel="batch", ylabel="training samples / s", yscale="log",
                title="throughput (x: public code, paper size)")
    axes[1].set(xlabel="batch", ylabel="peak memory (GB)", yscale="log",
                title="peak memory (x: public code, paper size)")
    for ax in axes:
        ax.set_xticks([1, 4, 8])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,paper")
    parser.add_argument("--branches", default="fmri,sc,both")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per configuration (default 10 tiny, 5 paper)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--attention", choices=("auto", "factorised", "sdpa", "naive"),
                        default="auto", help="Perceiver cross-attention (auto: SDPA on CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the loss")
    parser.add_argument("--omp-wait", choices=("passive", "active"), default="passive",
                        help="OMP_WAIT_POLICY of the workers (default passive)")
    parser.add_argument("--thp", action="store_true",
                        help="THP_MEM_ALLOC_ENABLE=1: huge pages for large CPU tensors")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every configuration this many times, in rounds, and keep "
                        "the fastest (other jobs on a shared CPU only ever slow a run down)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--branch", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    configs = [(p, b, n) for p in args.presets.split(",") for b in args.branches.split(",")
               for n in map(int, args.batches.split(","))]
    runs = {c: [] for c in configs}
    for round_ in range(args.repeat):
        for config in configs:
            result = run_config(*config, args)
            runs[config].append(result)
            tag = f"  (round {round_ + 1}/{args.repeat})" if args.repeat > 1 else ""
            print(table([result]).splitlines()[-1] + tag, flush=True)
    results = [_best(runs[c]) for c in configs]
    comparison = compare(results)
    payload = {"meta": {"python": platform.python_version(), "machine": platform.machine(),
                        "cpus": os.cpu_count(), "threads": args.threads, "device": args.device,
                        "precision": args.precision, "attention": args.attention,
                        "compile": args.compile, "torch": _torch_version(),
                        "omp_wait_policy": args.omp_wait, "thp": args.thp,
                        "repeat": args.repeat,
                        "step": "forward + backward + AdamW of pretrain_loss (last stage)"},
               "reference": [{"branch": b, "batch": n, **v} for (b, n), v in REFERENCE.items()],
               "results": results, "comparison": comparison}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, comparison, args.out.with_suffix(".png"))
    print()
    print(table(results))
    if comparison:
        print("\nagainst the public implementation (paper size, same batch):")
        for row in comparison:
            text = (f"  {row['branch']:<5} B={row['batch']}: {row['ours_s']:.2f} s vs "
                    f"{row['reference_s']:.1f} s per step ({row['speedup']:.1f}x faster)")
            if "memory_share" in row:
                text += (f"; peak {row['ours_peak_gb']:.2f} GB vs {row['reference_peak_gb']:.1f} GB"
                         f" ({100 * row['memory_share']:.0f}%)")
            print(text)
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
