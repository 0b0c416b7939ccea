"""Benchmark: reading one window from the cohort store, against the alternatives.

Writes a store of random data (default 200 scans x 100 ROIs x 1200 time points),
then times, side by side in one run, the read of random windows (ROIs x 200):

- ``store.window``      the cohort store's reader (memory-mapped .npy per scan)
- ``dataset item``      a full WindowDataset item (window + SC + labels, as tensors)
- ``raw npy mmap``      ``np.load(file, mmap_mode="r")[:, a:b]`` on the same file (the floor)
- ``raw mmap kept open`` the same, with every file mapped once beforehand
- ``raw npy full``      ``np.load(file)[:, a:b]`` (loads the whole scan)
- ``hdf5``              one HDF5 file, one dataset per scan, slice read (if h5py is installed)
- ``open store``        opening the store (manifest, tables, structure check)

Reports median and inter-quartile range per read and the ratio to ``raw npy
mmap``; results go to results/benchmarks/store_read.{json,png}. Page cache is warm
(the files were just written), which is the common case for training epochs.

    python benchmarks/store_read.py [--scans 200] [--rois 100] [--timepoints 1200]
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
from _provenance import commit, load_average

from bsym.data import CohortWriter, open_cohort
from bsym.data.dataset import WindowDataset


def _time(fn, args_list):
    times = []
    for args in args_list:
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scans", type=int, default=200)
    parser.add_argument("--rois", type=int, default=100)
    parser.add_argument("--timepoints", type=int, default=1200)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    workdir = Path(tempfile.mkdtemp(prefix="bsym-bench-"))
    store_path = workdir / "store"
    t0 = time.perf_counter()
    with CohortWriter(store_path, source={"name": "benchmark"}, atlas="random") as writer:
        for s in range(args.scans):
            writer.add_scan(subject=f"s{s:04d}", tr=0.72, age=float(s),
                            bold=rng.standard_normal((args.rois, args.timepoints),
                                                     dtype=np.float32))
            a = rng.random((args.rois, args.rois), dtype=np.float32)
            writer.add_matrix("sc", f"s{s:04d}", a + a.T)
    write_s = time.perf_counter() - t0
    cohort = open_cohort(store_path)
    files = [store_path / f for f in cohort.subjects["bold_file"]]
    scans = cohort.scans

    h5_path = None
    try:
        import h5py

        h5_path = workdir / "store.h5"
        with h5py.File(h5_path, "w") as h5:
            for scan, file in zip(scans, files):
                h5.create_dataset(scan, data=np.load(file))
    except ImportError:
        h5py = None

    picks = rng.integers(0, args.scans, args.reads)
    starts = rng.integers(0, args.timepoints - args.window + 1, args.reads)
    w = args.window
    dataset = WindowDataset(cohort, window=w, stride=1, labels=["age"])

    def dataset_item(i, s):
        return dataset[i * (args.timepoints - w + 1) + s]

    cases = {
        "store.window": (lambda i, s: cohort.window(scans[i], s, w), None),
        "dataset item": (dataset_item, None),
        "raw npy mmap": (lambda i, s: np.array(np.load(files[i], mmap_mode="r")[:, s:s + w]), None),
        "raw mmap kept open": (lambda i, s: np.array(opened[i][:, s:s + w]), None),
        "raw npy full": (lambda i, s: np.load(files[i])[:, s:s + w], None),
    }
    if h5py is not None:
        h5 = h5py.File(h5_path, "r")
        cases["hdf5"] = (lambda i, s: h5[scans[i]][:, s:s + w], None)
    opened = [np.load(f, mmap_mode="r") for f in files]
    calls = list(zip(picks, starts))
    results = {}
    for name, (fn, _) in cases.items():
        _time(fn, calls[:50])  # warm-up
        times = _time(fn, calls)
        results[name] = {"median_us": float(np.median(times) * 1e6),
                         "iqr_us": float(np.subtract(*np.percentile(times, [75, 25])) * 1e6)}
    open_times = _time(lambda: open_cohort(store_path), [()] * 20)
    results["open store"] = {"median_us": float(np.median(open_times) * 1e6),
                             "iqr_us": float(np.subtract(*np.percentile(open_times, [75, 25])) * 1e6)}
    floor = results["raw npy mmap"]["median_us"]
    for name in results:
        results[name]["ratio_to_raw_mmap"] = results[name]["median_us"] / floor

    report = {
        "benchmark": "store_read",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    **commit(), "load_average_1min": load_average()},
        "setup": {"scans": args.scans, "rois": args.rois, "timepoints": args.timepoints,
                  "window": w, "reads": args.reads, "page_cache": "warm"},
        "store_write_s": write_s,
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "store_read.json").write_text(json.dumps(report, indent=2))
    print(f"store write: {write_s:.2f} s for {args.scans} scans "
          f"({args.rois} x {args.timepoints}) + SC")
    print(f"{'case':<16}{'median us':>12}{'IQR us':>10}{'x raw mmap':>12}")
    for name, r in results.items():
        print(f"{name:<16}{r['median_us']:>12.1f}{r['iqr_us']:>10.1f}{r['ratio_to_raw_mmap']:>12.2f}")
    _plot(results, out / "store_read.png", report["setup"])
    print(f"wrote {out / 'store_read.json'} and {out / 'store_read.png'}")


def _plot(results, path, setup):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in results if n != "open store"]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(names, [results[n]["median_us"] for n in names],
            xerr=[results[n]["iqr_us"] / 2 for n in names], color="tab:blue")
    ax.set_xlabel("median time per window read (µs)")
    ax.set_title(f"{setup['rois']} ROIs x {setup['window']}-point windows, warm cache")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
