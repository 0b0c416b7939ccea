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


@pytest.fixture(scope="session")
def default_cohort(tmp_path_factory):
    """The simulated cohort a user gets by default, written once per test session.

    :func:`bsym.data.simulate.simulate_cohort` with its defaults: 200 subjects x 100 ROIs
    x 1200 time points, two sessions ("pre", "post"), three sites (TR 0.72, 0.8, 2 s) and
    the default effect sizes of :class:`~bsym.data.simulate.SimulationConfig`; seed 0.
    The tests of meaning share it (45-55 s of CPU to simulate, measured; 200 MB on disk).
    Read it, never write into it.
    """
    from bsym.data.simulate import simulate_cohort

    return simulate_cohort(tmp_path_factory.mktemp("default_cohort") / "sim", seed=0,
                           progress=False)


@pytest.fixture(scope="module")
def one_blas_thread():
    """BLAS on one thread while a module's tests run.

    The linear models and FC matrices of the tests of meaning are small (a few hundred rows
    of 4950 features): extra BLAS threads cost more than they save, and on a busy machine
    their busy-waiting multiplied the CPU time of a fit by 8-15 (measured on 2 cores).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
