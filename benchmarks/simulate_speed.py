"""How long does the built-in cohort take to simulate and store?

Times :func:`bsym.data.simulate.simulate_cohort` at the default size (200 subjects x
100 ROIs x 1200 time points), one session and two (the default), each written to a
temporary store. Target: one session in at most 10 s on 2 CPU cores. The oscillators are
integrated in the calling thread while two worker threads draw the noise and integrate
the hemodynamics (see ``bsym.data.dynamics``); the baseline of the ratios, measured in the
same run, is the same simulation in one thread (``threads=False``: the same numbers).
``--baseline DIR`` also times one session with the code of another checkout (e.g. a
``git worktree`` of an earlier commit) in a subprocess, side by side in the same run. The
load average is recorded because other work on the machine slows it.

Usage::

    python benchmarks/simulate_speed.py [--subjects 200] [--rois 100] [--timepoints 1200]
        [--baseline DIR]

Writes ``results/benchmarks/simulate_speed.{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _provenance import commit, load_average

from bsym.data.simulate import simulate_cohort

TARGET_SECONDS = 10.0


def time_simulation(*, n_subjects, n_rois, n_timepoints, sessions, threads, seed=0):
    """Wall and CPU seconds to simulate and store one cohort."""
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        cohort = simulate_cohort(Path(tmp) / "sim", n_subjects=n_subjects, n_rois=n_rois,
                                 n_timepoints=n_timepoints, sessions=sessions, seed=seed,
                                 progress=False, threads=threads)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        n_scans = cohort.manifest["n_scans"]
    return {"sessions": sessions, "threads": threads, "n_scans": n_scans,
            "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "seconds_per_scan": round(seconds / n_scans, 4),
            "load_average_1min": load_average()}


_IN_CHECKOUT = """
import json, sys, tempfile, time
from pathlib import Path
import bsym
from bsym.data.simulate import simulate_cohort
size = json.loads(sys.argv[1])
with tempfile.TemporaryDirectory() as tmp:
    start, cpu = time.perf_counter(), time.process_time()
    cohort = simulate_cohort(Path(tmp) / "sim", sessions=1, seed=0, progress=False, **size)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "bsym": bsym.__file__,
                      "n_scans": cohort.manifest["n_scans"]}))
"""


def time_in_checkout(src, size):
    """One session simulated by the code of the checkout ``src``, in a subprocess."""
    src = Path(src).resolve()
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", _IN_CHECKOUT, json.dumps(size)], env=env,
                          capture_output=True, text=True, check=True, cwd=src)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result.pop("bsym")).resolve().is_relative_to(src):
        raise RuntimeError(f"the baseline run imported bsym from outside {src}")
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or None
    return {**size, "sessions": 1, "threads": None, "code": "baseline", "commit": head,
            "n_scans": result["n_scans"], "seconds": round(result["seconds"], 2),
            "cpu_seconds": round(result["cpu_seconds"], 2),
            "seconds_per_scan": round(result["seconds"] / result["n_scans"], 4),
            "load_average_1min": load_average()}


def _plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    labels = [f"{r['sessions']} session{'s' if r['sessions'] > 1 else ''}\n"
              + ("baseline code" if r.get("code") == "baseline"
                 else "threads" if r["threads"] else "one thread") for r in runs]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(labels, [r["seconds"] for r in runs], color="tab:blue", label="wall")
    ax.bar(labels, [r["cpu_seconds"] for r in runs], color="none", edgecolor="k",
           label="CPU (all threads)")
    ax.axhline(report["target_seconds"], color="tab:red", ls="--", label="target (1 session)")
    ax.set_ylabel("seconds")
    size = runs[0]
    ax.set_title(f"{size['n_subjects']} subjects x {size['n_rois']} ROIs x "
                 f"{size['n_timepoints']} points; load {report['machine']['load_average_1min']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--rois", type=int, default=100)
    parser.add_argument("--timepoints", type=int, default=1200)
    parser.add_argument("--out", default="results/benchmarks")
    parser.add_argument("--baseline", metavar="DIR",
                        help="a checkout of earlier code to time one session with, side by side")
    args = parser.parse_args(argv)
    size = dict(n_subjects=args.subjects, n_rois=args.rois, n_timepoints=args.timepoints)
    load_before = load_average()
    runs = []
    for sessions, threads in ((1, True), (1, False), (2, True)):
        runs.append({**size, **time_simulation(**size, sessions=sessions, threads=threads)})
        print(f"{args.subjects} subjects x {args.rois} ROIs x {args.timepoints} time points, "
              f"sessions={sessions}, threads={threads}: {runs[-1]['seconds']:.1f} s "
              f"(CPU {runs[-1]['cpu_seconds']:.1f} s, {runs[-1]['n_scans']} scans)", flush=True)
    if args.baseline:
        runs.append(time_in_checkout(args.baseline, size))
        print(f"baseline code ({runs[-1]['commit']}), sessions=1: {runs[-1]['seconds']:.1f} s",
              flush=True)
    baseline = runs[1]["seconds"]
    ratios = {"one_session_threads_vs_one_thread": round(runs[0]["seconds"] / baseline, 3),
              "one_session_vs_target": round(runs[0]["seconds"] / TARGET_SECONDS, 3)}
    if args.baseline:
        ratios["one_session_vs_baseline_code"] = round(runs[0]["seconds"] / runs[-1]["seconds"], 3)
    report = {
        "benchmark": "simulate_speed",
        "runs": runs,
        "target_seconds": TARGET_SECONDS,
        "ratios": ratios,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(),
                    "platform": platform.platform(), **commit(),
                    "load_average_1min": load_before,
                    "load_average_1min_after": load_average()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "simulate_speed.json").write_text(json.dumps(report, indent=1))
    _plot(report, out / "simulate_speed.png")
    print(f"one session: {runs[0]['seconds']:.1f} s with threads, {baseline:.1f} s in one "
          f"thread (x{report['ratios']['one_session_threads_vs_one_thread']:.2f}); target "
          f"{TARGET_SECONDS:g} s")
    print(f"wrote {out / 'simulate_speed.json'} and {out / 'simulate_speed.png'}")
    return report


if __name__ == "__main__":
    main()
