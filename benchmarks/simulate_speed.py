"""How long does the built-in cohort take to simulate and store?

Times :func:`bsym.data.simulate.simulate_cohort` at the default size (200 subjects x
100 ROIs x 1200 time points) with two sessions (the default) and with one, each
written to a temporary store. Target: under 60 s on 2 CPU cores. The integration runs
on one thread (see ``bsym.data.simulate``); the load average is recorded because
other work on the machine slows it.

Usage::

    python benchmarks/simulate_speed.py [--subjects 200] [--rois 100] [--timepoints 1200]

Writes ``results/benchmarks/simulate_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from bsym.data.simulate import simulate_cohort


def time_simulation(*, n_subjects, n_rois, n_timepoints, sessions, seed=0):
    """Seconds to simulate and store one cohort."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cohort = simulate_cohort(Path(tmp) / "sim", n_subjects=n_subjects, n_rois=n_rois,
                                 n_timepoints=n_timepoints, sessions=sessions, seed=seed,
                                 progress=False)
        seconds = time.perf_counter() - start
        n_scans = cohort.manifest["n_scans"]
    return {"sessions": sessions, "n_scans": n_scans, "seconds": round(seconds, 2),
            "seconds_per_scan": round(seconds / n_scans, 4)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--rois", type=int, default=100)
    parser.add_argument("--timepoints", type=int, default=1200)
    parser.add_argument("--out", default="results/benchmarks/simulate_speed.json")
    args = parser.parse_args(argv)
    size = dict(n_subjects=args.subjects, n_rois=args.rois, n_timepoints=args.timepoints)
    load_before = os.getloadavg()
    runs = []
    for sessions in (2, 1):
        runs.append({**size, **time_simulation(**size, sessions=sessions)})
        print(f"{args.subjects} subjects x {args.rois} ROIs x {args.timepoints} time points, "
              f"sessions={sessions}: {runs[-1]['seconds']:.1f} s "
              f"({runs[-1]['n_scans']} scans)", flush=True)
    report = {
        "runs": runs,
        "target_seconds": 60,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "integration_threads": 1,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(),
                    "platform": platform.platform(),
                    "load_average_1min": {"before": round(load_before[0], 2),
                                          "after": round(os.getloadavg()[0], 2)}},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
