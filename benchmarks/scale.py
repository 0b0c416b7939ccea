"""Does the pipeline scale with the cohort? 1,000 against 10,000 simulated subjects.

For each cohort size (default 1,000 and 10,000 subjects; 100 ROIs x 1,200 time points, one
session, three sites) this runs the steps of the workflow as the workflow runs them, each
a separate ``python -m bsym`` process:

- ``simulate``  ``bsym data simulate`` writes the store (subject by subject)
- ``open``      ``open_cohort`` in a fresh process (manifest, tables, every file's size)
- ``splits``    ``bsym splits``: the pretraining subjects (30 %), 16 held out, the probed rest
- ``pretrain``  ``bsym pretrain`` of a tiny preset for a few steps (scaler fit on every
  pretraining scan, resampled to TR 0.8 s as in the default config)
- ``embed``     ``bsym embed`` of the probed subjects' scans by the final weights (ROI
  embeddings kept, as the workflow does); with ``--no-roi-too`` also without them

and records each step's wall time and peak resident memory (``wait4``), the store's open
time and the embedding throughput (scans per second). Sizes run one after the other on the
same machine in the same run; the report gives each figure at every size and its ratio to
the first (smallest) size. Target: peak memory of every step within 1.2x of the
1,000-subject figure.

Stores go under ``--root`` (default /tmp/bsym-scale; about 0.6 MB per subject) and are
deleted afterwards unless ``--keep``. Results: results/benchmarks/scale.{json,png}.

    python benchmarks/scale.py [--sizes 1000,10000] [--root /tmp/bsym-scale] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _provenance import commit, load_average

#: Disk per subject of a 100-ROI, 1,200-point, one-session store (BOLD + SC + lengths).
BYTES_PER_SUBJECT = 100 * 1200 * 4 + 2 * 100 * 100 * 4 + 512
OPEN_SNIPPET = """
import json, sys, time
from bsym.data.store import open_cohort
start = time.perf_counter()
cohort = open_cohort(sys.argv[1])
print(json.dumps({"open_s": time.perf_counter() - start, "n_scans": cohort.manifest["n_scans"]}))
"""


def run_step(name, command, *, log):
    """Run one ``python -m bsym`` step; its wall time and peak resident memory."""
    start = time.perf_counter()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(command)}\n".encode())
        out.flush()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"step {name!r} failed with exit code {code}: {' '.join(command)} "
                         f"(its output is in {log})")
    return {"wall_s": round(seconds, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def open_time(store, repeats=3):
    """Median seconds to open the store in a fresh process (imports excluded)."""
    times = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", OPEN_SNIPPET, str(store)], check=True,
                             capture_output=True, text=True)
        times.append(json.loads(out.stdout.strip().splitlines()[-1])["open_s"])
    return round(sorted(times)[len(times) // 2], 3)


def subject_ids(path):
    """The subject ids of a ``bsym splits`` subject list (one a line, ``#`` comments)."""
    lines = Path(path).read_text().splitlines()
    return [i for i in (line.split("#", 1)[0].strip() for line in lines) if i]


def bsym(*args):
    return [sys.executable, "-m", "bsym", *map(str, args)]


def measure(n_subjects, root, args, log):
    """Every step for one cohort size."""
    folder = root / f"n{n_subjects}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    store, splits, run = folder / "store", folder / "splits", folder / "run"
    splits.mkdir()
    steps = {}
    steps["simulate"] = run_step("simulate", bsym(
        "data", "simulate", "--out", store, "--subjects", n_subjects, "--rois", 100,
        "--timepoints", 1200, "--networks", 7, "--sites", 3, "--sessions", 1, "--seed", 0,
        "--roi-order", "shuffled", "--roi-seed", 0, "--quiet"), log=log)
    store_bytes = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    opened = open_time(store)
    steps["splits"] = run_step("splits", bsym(
        "splits", "--data", store, "--pretrain-fraction", 0.3, "--seed", 0,
        "--group-by", "subject", "--splits", splits / "pretrain.json",
        "--subjects-out", splits / "pretrain.txt", "--val-subjects", 16,
        "--val-subjects-out", splits / "val.txt", "--probe-subjects-out",
        splits / "probe.txt"), log=log)
    steps["pretrain"] = run_step("pretrain", bsym(
        "pretrain", "--model", args.model, "--data", store, "--out", run,
        "--subjects-file", splits / "pretrain.txt", "--val-subjects-file", splits / "val.txt",
        "--preset", "tiny", "--steps", args.steps, "--batch-size", 16, "--warmup-steps", 1,
        "--seed", 0, "--device", "cpu", "--window-sampling", "random", "--snapshots", "0.0",
        "--eval-every", 0, "--max-windows", 4, "--target-tr", 0.8, "--no-tracking",
        "--quiet"), log=log)
    probed = len(subject_ids(splits / "probe.txt"))  # one session: one scan each
    variants = [("embed", [])] + ([("embed_no_roi", ["--no-roi"])] if args.no_roi_too else [])
    for name, extra in variants:
        steps[name] = run_step(name, bsym(
            "embed", "--checkpoint", run / "final.pt", "--data", store,
            "--out", folder / f"{name}.npz", "--subjects-file", splits / "probe.txt",
            "--batch-size", 32, "--device", "cpu", *extra, "--quiet"), log=log)
        steps[name]["scans_per_s"] = round(probed / steps[name]["wall_s"], 2)
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return {"n_subjects": n_subjects, "n_scans": n_subjects, "store_gb": round(store_bytes / 1e9, 3),
            "open_s": opened, "probed_scans": probed, "steps": steps}


def ratios(results):
    """Each size's figures over the first size's (the baseline of this run)."""
    base = results[0]
    out = []
    for result in results[1:]:
        steps = {}
        for name, step in result["steps"].items():
            ref = base["steps"][name]
            steps[name] = {"peak_rss": round(step["peak_rss_mb"] / ref["peak_rss_mb"], 3),
                           "wall": round(step["wall_s"] / ref["wall_s"], 3)}
            if "scans_per_s" in step:
                steps[name]["scans_per_s"] = round(step["scans_per_s"] / ref["scans_per_s"], 3)
        out.append({"n_subjects": result["n_subjects"], "of": base["n_subjects"],
                    "subjects": result["n_subjects"] / base["n_subjects"],
                    "open_s": round(result["open_s"] / base["open_s"], 3), "steps": steps})
    return out


def machine():
    import numpy
    import torch

    memory = None
    if Path("/proc/meminfo").exists():
        memory = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    return {"cpus": os.cpu_count(), "memory_gb": memory, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "numpy": numpy.__version__,
            "torch": torch.__version__, **commit(), "load_average_1min": load_average()}


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    results = report["results"]
    names = list(results[0]["steps"])
    fig, (rss, wall) = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / len(results)
    for k, result in enumerate(results):
        x = np.arange(len(names)) + (k - (len(results) - 1) / 2) * width
        label = f"{result['n_subjects']:,} subjects"
        rss.bar(x, [result["steps"][n]["peak_rss_mb"] for n in names], width, label=label)
        wall.bar(x, [1e3 * result["steps"][n]["wall_s"] / result["n_subjects"] for n in names],
                 width, label=label)
    for ax, title in ((rss, "peak resident memory (MB)"),
                      (wall, "wall time per subject (ms)")):
        ax.set_xticks(np.arange(len(names)), names, rotation=20)
        ax.set_title(title)
    wall.set_yscale("log")
    rss.legend()
    machine = report["machine"]
    fig.suptitle(f"{report['setup']['model']} tiny, {report['setup']['steps']} steps; "
                 f"{machine['cpus']} CPUs, load {machine['load_average_1min']}, "
                 f"commit {str(machine['commit'])[:7]}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000",
                        help="cohort sizes, smallest first (the baseline of the ratios)")
    parser.add_argument("--root", default="/tmp/bsym-scale", help="where the stores go")
    parser.add_argument("--model", default="brainjepa",
                        help="a self-supervised model with a tiny preset (brainjepa tiny embeds "
                        "about 5x faster on CPU than brainsymphony tiny)")
    parser.add_argument("--steps", type=int, default=5, help="pretraining steps")
    parser.add_argument("--no-roi-too", action="store_true",
                        help="also embed without ROI embeddings (--no-roi)")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    needed = (sum(sizes) if args.keep else max(sizes)) * BYTES_PER_SUBJECT * 1.2
    free = shutil.disk_usage(root).free
    if free < needed:
        raise SystemExit(f"{root} has {free / 1e9:.1f} GB free; the stores need about "
                         f"{needed / 1e9:.1f} GB. Choose another --root")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "scale.log"
    log.write_text("")
    report = {"benchmark": "scale", "machine": machine(),
              "setup": {"sizes": sizes, "rois": 100, "timepoints": 1200, "sessions": 1,
                        "sites": 3, "model": args.model, "preset": "tiny",
                        "steps": args.steps, "pretrain_fraction": 0.3, "target_tr": 0.8},
              "results": []}
    for n in sizes:
        print(f"{n} subjects ...", flush=True)
        result = measure(n, root, args, log)
        report["results"].append(result)
        for name, step in result["steps"].items():
            extra = f"  {step['scans_per_s']} scans/s" if "scans_per_s" in step else ""
            print(f"  {name:<13}{step['wall_s']:>9.1f} s {step['peak_rss_mb']:>9.0f} MB{extra}",
                  flush=True)
        print(f"  open store   {result['open_s']:>9.3f} s", flush=True)
    report["ratios"] = ratios(report["results"])
    report["machine"]["load_average_1min_after"] = load_average()
    (out / "scale.json").write_text(json.dumps(report, indent=1))
    plot(report, out / "scale.png")
    for ratio in report["ratios"]:
        worst = max(s["peak_rss"] for s in ratio["steps"].values())
        print(f"{ratio['n_subjects']} vs {ratio['of']} subjects: peak memory up to "
              f"{worst:.2f}x (target 1.2x), open {ratio['open_s']:.2f}x")
    print(f"wrote {out / 'scale.json'} and {out / 'scale.png'}")
    return report


if __name__ == "__main__":
    main()
