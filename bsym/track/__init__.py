"""Experiment tracking: MLflow with a SQLite store, and a no-op stand-in.

The one shared service beside the data flow: every stage logs through it and it
imports no other bsym subpackage. MLflow itself is imported lazily, on the first
call that needs it.
"""

from bsym.track.tracking import DEFAULT_EXPERIMENT, DEFAULT_URI, NullTracker, Tracker, flatten

__all__ = ["DEFAULT_EXPERIMENT", "DEFAULT_URI", "NullTracker", "Tracker", "flatten"]
