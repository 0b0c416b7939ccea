"""Small valid cohort stores written through the real :class:`~bsym.data.CohortWriter`."""

from __future__ import annotations

import numpy as np

from bsym.data import CohortWriter, open_cohort

# add_scan arguments that a label of the same name would collide with
_SCAN_FIELDS = ("scan", "subject", "session", "bold", "tr", "family", "confounds", "origin")


def _default_labels(subject_index, session):
    """Site, age, sex and condition of one scan of the toy store."""
    return {"site": f"site{subject_index % 2}", "age": 20.0 + 3 * subject_index,
            "sex": "F" if subject_index % 2 else "M",
            "condition": "pre" if session == 1 else "post"}


def _checked_labels(labels, n_subjects):
    labels = dict(labels or {})
    for name, values in labels.items():
        if name in _SCAN_FIELDS:
            raise ValueError(f"label {name!r} collides with a scan field ({', '.join(_SCAN_FIELDS)}); "
                             "rename it")
        if len(values) != n_subjects:
            raise ValueError(f"labels[{name!r}] has {len(values)} values; expected one per "
                             f"subject ({n_subjects})")
    return labels


def _random_sc(rng, n_rois):
    """Symmetric streamline-count-like weights with an empty diagonal."""
    a = np.triu(rng.gamma(1.0, 50.0, size=(n_rois, n_rois)), 1)
    return a + a.T


def write_toy_store(path, *, n_subjects=6, n_rois=8, n_timepoints=60, trs=(2.0,), seed=0,
                    sessions=1, confounds=False, labels=None):
    """Write a small valid store of random BOLD, random SC and simple labels.

    Subject ``s`` (``sub-00``, ``sub-01``, ...) has BOLD scaled by ``1 + s``, site
    ``site{s % 2}``, age ``20 + 3 s``, sex M/F alternating and one scan per session
    (sessions ``"1"``, ``"2"``, ...; condition ``"pre"`` for the first, ``"post"`` after).

    Parameters
    ----------
    path : str or Path
        Where to write the store (a new path).
    n_subjects, n_rois, n_timepoints : int
        Cohort size; every scan has ``n_timepoints`` time points.
    trs : sequence of float
        Repetition times in seconds, given to the subjects in turn.
    seed : int
        Seed of every random draw.
    sessions : int
        Scans per subject.
    confounds : bool
        Store two random confound columns with every scan.
    labels : dict, optional
        Extra or replacement labels: name -> one value per subject (e.g.
        ``{"diagnosis": ["patient", "control", ...]}``), given to all its scans.

    Returns
    -------
    Cohort
        The store, opened.
    """
    labels = _checked_labels(labels, n_subjects)
    rng = np.random.default_rng(seed)
    with CohortWriter(path, source={"name": "toy", "seed": seed}, atlas="toy") as writer:
        writer.set_rois([f"roi{i}" for i in range(n_rois)],
                        networks=[f"net{i % 3}" for i in range(n_rois)],
                        coords=rng.normal(size=(n_rois, 3)) * 30)
        for s in range(n_subjects):
            subject = f"sub-{s:02d}"
            for session in range(1, sessions + 1):
                bold = rng.standard_normal((n_rois, n_timepoints)).astype(np.float32)
                conf = rng.standard_normal((n_timepoints, 2)) if confounds else None
                scan_labels = {**_default_labels(s, session),
                               **{name: values[s] for name, values in labels.items()}}
                writer.add_scan(subject=subject, session=str(session), tr=trs[s % len(trs)],
                                bold=bold * (1 + s), confounds=conf, **scan_labels)
            writer.add_matrix("sc", subject, _random_sc(rng, n_rois))
    return open_cohort(path)


def write_structured_store(path, *, n_subjects=6, n_rois=8, n_timepoints=60, seed=0):
    """Write a store whose ROIs mix three shared latent rhythms.

    Each subject's BOLD is a fixed ROI mixing of three sinusoids (frequencies 0.02-0.12
    Hz, TR 2 s, random phases) plus 5% noise, so a masked ROI is predictable from the
    others and a reconstruction loss can fall within a few steps. Labels: age and sex
    as in :func:`write_toy_store`; SC random.

    Parameters
    ----------
    path : str or Path
        Where to write the store (a new path).
    n_subjects, n_rois, n_timepoints : int
    seed : int

    Returns
    -------
    Cohort
    """
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(n_rois, 3))
    t = np.arange(n_timepoints) * 2.0
    with CohortWriter(path, source={"name": "toy-structured", "seed": seed}, atlas="toy") as w:
        w.set_rois([f"roi{i}" for i in range(n_rois)])
        for s in range(n_subjects):
            freqs = rng.uniform(0.02, 0.12, size=3)
            phases = rng.uniform(0, 2 * np.pi, size=3)
            latent = np.sin(2 * np.pi * freqs[:, None] * t[None] + phases[:, None])
            bold = mixing @ latent + 0.05 * rng.standard_normal((n_rois, n_timepoints))
            w.add_scan(subject=f"sub-{s:02d}", tr=2.0, bold=bold.astype(np.float32),
                       age=20.0 + 3 * s, sex="F" if s % 2 else "M")
            w.add_matrix("sc", f"sub-{s:02d}", _random_sc(rng, n_rois))
    return open_cohort(path)
