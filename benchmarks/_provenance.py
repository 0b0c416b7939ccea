"""What a benchmark's figures were measured on: the commit and the machine's load."""

from __future__ import annotations

import os
import subprocess


def commit() -> dict:
    """The checked-out commit, and whether tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "uncommitted_changes": None}
    return {"commit": head, "uncommitted_changes": bool(dirty)}


def load_average() -> float:
    """The 1-minute load average (other work on the machine slows every timing)."""
    return round(os.getloadavg()[0], 2)
