"""Where a report's numbers come from: the table's provenance columns and the machine
that built the report."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import shutil
import subprocess
from importlib import metadata

import pandas as pd

PROVENANCE_COLUMNS = ("git_sha", "config_hash", "manifest_hash", "split_hash")
PACKAGES = ("bsym", "torch", "numpy", "scikit-learn", "nilearn", "mlflow", "optuna", "pandas",
            "scipy", "matplotlib")


def _gpu() -> str:
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=True)
            return out.stdout.strip().replace("\n", "; ") or "none found"
        except (OSError, subprocess.SubprocessError):
            return "nvidia-smi failed"
    return "none found (no nvidia-smi)"


def _cpu() -> str:
    name = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        name = next((line.split(":", 1)[1].strip() for line in handle
                     if line.startswith("model name")), name)
    return f"{name or 'unknown'} ({os.cpu_count()} logical cores)"


def environment() -> dict:
    """Package versions, Python, platform, CPU and GPU of the machine building the report."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"packages": versions, "python": platform.python_version(), "platform": platform.platform(),
            "cpu": _cpu(), "gpu": _gpu(),
            "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def table_provenance(results: pd.DataFrame, limit: int = 12) -> pd.DataFrame:
    """Distinct values of the provenance columns found in the table, with row counts (the
    ``limit`` most frequent per column, the rest counted in one line)."""
    rows = []
    for column in (*PROVENANCE_COLUMNS, "bsym_version"):
        if column not in results.columns:
            rows.append({"field": column, "value": "(column absent)", "rows": 0})
            continue
        counts = results[column].astype("string").fillna("(none)").value_counts()
        for value, count in counts.head(limit).items():
            rows.append({"field": column, "value": str(value), "rows": int(count)})
        if len(counts) > limit:
            rows.append({"field": column, "value": f"... and {len(counts) - limit} more distinct values",
                         "rows": int(counts.iloc[limit:].sum())})
    return pd.DataFrame(rows)
