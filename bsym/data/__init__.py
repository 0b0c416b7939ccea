"""Data sources, the validated cohort store, and the PyTorch window dataset.

The only place in bsym where raw inputs are read. Names are resolved lazily (PEP 562), so
importing ``bsym.data`` or its command line (``bsym.data.cli``) imports neither numpy nor
pandas.
"""

from bsym._lazy import lazy_exports
from bsym.data.errors import CohortError

_EXPORTS = {
    "Cohort": "bsym.data.store",
    "CohortWriter": "bsym.data.store",
    "open_cohort": "bsym.data.store",
}

__all__ = ["Cohort", "CohortError", "CohortWriter", "open_cohort"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
