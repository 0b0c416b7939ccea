"""Small synthetic data for tests: valid cohort stores and model batches, in seconds.

For bsym's own tests and for anyone testing code built on bsym (a model plugin, an
analysis) without importing or simulating a real cohort.

:func:`write_toy_store`
    A valid store of random BOLD, random SC and simple labels, of any size.
:func:`write_structured_store`
    A store whose ROIs mix shared rhythms, so masked ROIs are predictable and a
    self-supervised loss can fall.
:func:`toy_batch`
    One collated batch in memory, shaped as :class:`~bsym.data.dataset.WindowDataset`
    yields it.

Examples
--------
>>> import tempfile, pathlib
>>> from bsym.testing import write_toy_store
>>> cohort = write_toy_store(pathlib.Path(tempfile.mkdtemp()) / "toy", n_subjects=4,
...                          n_rois=6, n_timepoints=30)
>>> len(cohort.subjects), cohort.n_rois
(4, 6)
"""

from bsym._lazy import lazy_exports

_EXPORTS = {
    "toy_batch": "bsym.testing.batches",
    "write_structured_store": "bsym.testing.cohorts",
    "write_toy_store": "bsym.testing.cohorts",
}

__all__ = ["toy_batch", "write_structured_store", "write_toy_store"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
