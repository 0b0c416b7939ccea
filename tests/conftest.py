"""Shared fixtures: small synthetic cohorts written through the real store."""

from __future__ import annotations

import numpy as np
import pytest

from bsym.data import CohortWriter, open_cohort


def write_toy_store(path, *, n_subjects=6, n_rois=8, n_timepoints=60, trs=(2.0,), seed=0,
                    sessions=1, confounds=False):
    """A small, valid store: random BOLD, random symmetric SC, simple labels."""
    rng = np.random.default_rng(seed)
    with CohortWriter(path, source={"name": "toy", "seed": seed}, atlas="toy") as writer:
        writer.set_rois([f"roi{i}" for i in range(n_rois)],
                        networks=[f"net{i % 3}" for i in range(n_rois)],
                        coords=rng.normal(size=(n_rois, 3)) * 30)
        for s in range(n_subjects):
            subject = f"sub-{s:02d}"
            tr = trs[s % len(trs)]
            for session in range(1, sessions + 1):
                bold = rng.standard_normal((n_rois, n_timepoints)).astype(np.float32)
                conf = rng.standard_normal((n_timepoints, 2)) if confounds else None
                writer.add_scan(subject=subject, session=str(session), site=f"site{s % 2}",
                                tr=tr, bold=bold * (1 + s), confounds=conf,
                                age=20.0 + 3 * s, sex="F" if s % 2 else "M",
                                condition="pre" if session == 1 else "post")
            a = rng.gamma(1.0, 50.0, size=(n_rois, n_rois))
            a = np.triu(a, 1)
            writer.add_matrix("sc", subject, a + a.T)
    return open_cohort(path)


@pytest.fixture
def toy_store(tmp_path):
    return write_toy_store(tmp_path / "toy")


@pytest.fixture
def toy_store_factory(tmp_path):
    counter = iter(range(1000))

    def make(**kwargs):
        return write_toy_store(tmp_path / f"toy{next(counter)}", **kwargs)

    return make
