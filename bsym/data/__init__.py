"""Data sources, the validated cohort store, and the PyTorch window dataset.

The only place in bsym where raw inputs are read.
"""

from bsym.data.errors import CohortError
from bsym.data.store import Cohort, CohortWriter, open_cohort

__all__ = ["Cohort", "CohortError", "CohortWriter", "open_cohort"]
