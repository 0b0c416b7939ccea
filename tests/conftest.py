"""Shared fixtures: thin wrappers around :mod:`bsym.testing`; import helpers from there."""

from __future__ import annotations

import pytest

from bsym.testing import write_toy_store


@pytest.fixture
def toy_store(tmp_path):
    """:func:`~bsym.testing.write_toy_store` with its defaults, in ``tmp_path``."""
    return write_toy_store(tmp_path / "toy")


@pytest.fixture
def toy_store_factory(tmp_path):
    """``make(**kwargs)``: a new :func:`~bsym.testing.write_toy_store` in ``tmp_path``."""
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


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread while a module's tests run: tiny models gain nothing from a
    second thread, and lose a lot on a shared CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
