"""Coupled Stuart-Landau oscillators feeding a Balloon-Windkessel model: the simulator's BOLD.

:func:`integrate` advances several batches of scans ("groups": the scans of one site, each
with its own step size, sampling interval and noise generator) in one time loop, so the
per-operation cost of the many small tensor operations is paid once per step for all of
them; a group leaves the loop when its scans are sampled. Three threads share the work
(PyTorch releases the GIL inside its kernels): the caller's thread integrates the
oscillators, one thread draws the neural noise ahead, one integrates the hemodynamics
behind. Every number is the one a separate, single-threaded integration of each group
gives: each scan goes through the same operations in the same order, batched matrix
products and element-wise kernels give each scan's values whatever the other scans of
the batch (``tests/test_simulate.py`` checks this), and each noise generator is used by
one thread in a fixed order.
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

#: Steps integrated between hand-overs to the hemodynamics thread (and progress updates).
BLOCK_STEPS = 100
#: Noise is drawn this many steps at a time (rounded down to whole samples).
NOISE_CHUNK_STEPS = 200


def integration_schedule(tr, n_timepoints, max_strength, config):
    """Step size and step counts for one batch of scans.

    The step is the largest that divides the TR, is at most ``config.dt_max`` and
    keeps Euler stable on the coupling (``dt <= 0.5 / max_i sum_j K_ij``).

    Returns
    -------
    dt : float
        Step (s).
    per_tr : int
        Steps per sample.
    burn : int
        Steps discarded before the first sample.
    """
    dt_max = min(config.dt_max, 0.5 / max(float(max_strength), 1e-12))
    per_tr = max(1, math.ceil(tr / dt_max - 1e-9))
    dt = tr / per_tr
    return dt, per_tr, math.ceil(config.burn_in_s / dt)


class BalloonWindkessel:
    """Balloon-Windkessel hemodynamics (Friston 2003, Stephan 2007), log states.

    ``s`` vasodilatory signal, ``f`` flow, ``v`` volume, ``q`` deoxyhaemoglobin; flow,
    volume and deoxyhaemoglobin are kept as logs so they stay positive.

    Parameters
    ----------
    shape : tuple
        Shape of the neural input, (scans, ROIs).
    config : SimulationConfig
    dt : float or Tensor
        Integration step (s); a tensor of shape (scans, 1) gives each scan its own.
    """

    def __init__(self, shape, config, dt):
        self.config = config
        # The constants as float32 tensors: the values a Python float is rounded to in a
        # float32 operation, without converting it again at every step.
        c = {name: torch.tensor(value, dtype=torch.float32) for name, value in (
            ("one", 1.0), ("alpha", config.hrf_alpha), ("tau", config.hrf_tau),
            ("rho", config.hrf_rho), ("kappa", config.hrf_kappa), ("gamma", config.hrf_gamma),
            ("log_rest", math.log(1.0 - config.hrf_rho)))}
        self.constants = c
        self.dt = dt if torch.is_tensor(dt) else torch.tensor(dt, dtype=torch.float32)
        self.s = torch.zeros(shape)
        self.log_f, self.log_v, self.log_q = (torch.zeros(shape) for _ in range(3))

    def keep(self, n_scans):
        """Drop every scan after the first ``n_scans`` (their integration is over)."""
        for name in ("s", "log_f", "log_v", "log_q"):
            setattr(self, name, getattr(self, name)[:n_scans])
        if self.dt.dim():
            self.dt = self.dt[:n_scans]

    def step(self, u):
        """Advance by one Euler step driven by neural activity ``u``."""
        c, dt = self.constants, self.dt
        f, inv_v = torch.exp(self.log_f), torch.exp(-self.log_v)
        v_alpha = torch.exp(self.log_v / c["alpha"])
        extraction = c["one"] - torch.exp(torch.reciprocal(f) * c["log_rest"])
        d_log_f = self.s / f
        d_log_v = (f - v_alpha) * inv_v / c["tau"]
        d_log_q = (f * extraction * torch.exp(-self.log_q) / c["rho"]
                   - v_alpha * inv_v) / c["tau"]
        self.s.add_((u - c["kappa"] * self.s - c["gamma"] * (f - c["one"])) * dt)
        self.log_f.add_(d_log_f * dt)
        self.log_v.add_(d_log_v * dt)
        self.log_q.add_(d_log_q * dt)

    def bold(self, rows=slice(None)):
        """BOLD signal change (fraction) of the scans ``rows``."""
        rho = self.config.hrf_rho
        k1, k2, k3 = 7.0 * rho, 2.0, 2.0 * rho - 0.2
        v, q = torch.exp(self.log_v[rows]), torch.exp(self.log_q[rows])
        return self.config.hrf_v0 * (k1 * (1.0 - q) + k2 * (1.0 - q / v) + k3 * (1.0 - v))


def _hopf_step(z, coupling_t, strength, cos, sin, noise, dt):
    """One step of the coupled Stuart-Landau oscillators; ``z`` is (batch, 2, n_rois)."""
    x, y = z[:, 0], z[:, 1]
    new = torch.bmm(z, coupling_t)  # sum_j K_ij z_j; (2, N) @ (N, N) is the fast layout
    new.sub_(((x * x + y * y).unsqueeze(1) + strength) * z).mul_(dt).add_(noise)
    new[:, 0].addcmul_(cos, x).addcmul_(sin, y, value=-1.0)
    new[:, 1].addcmul_(sin, x).addcmul_(cos, y)
    return new


@contextmanager
def one_thread_no_denormals():
    """One intra-op thread and denormal floats flushed to zero, restored afterwards.

    Denormals: decaying balloon states would otherwise slow every step. One thread: the
    tensors are too small for intra-op threads to pay (they cost time, more so on a busy
    machine), and it keeps the arrays identical on every machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    flush = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flush:
            torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def _worker_thread_settings():
    # Both settings are per thread (OpenMP's thread count, the floating-point control
    # register): a worker thread starts with the defaults. Its pool ends with the
    # integration, so nothing is restored.
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)


@dataclass
class Group:
    """A batch of scans integrated with one step size and one noise generator.

    Parameters
    ----------
    coupling : Tensor, shape (batch, n_rois, n_rois)
        ``K``: coupling weights (row i: inputs to ROI i), 1/s.
    bifurcation, omega : Tensor, shape (batch, n_rois)
        Hopf parameter ``a`` (1/s) and angular frequency (rad/s).
    tr : float
        Sampling interval (s).
    generator : torch.Generator
        Source of the initial state and the neural noise.
    """

    coupling: torch.Tensor
    bifurcation: torch.Tensor
    omega: torch.Tensor
    tr: float
    generator: torch.Generator

    @property
    def n_scans(self):
        return self.bifurcation.shape[0]

    def prepare(self, n_timepoints, config):
        """Step size, step counts, rotation and initial state (draws from the generator)."""
        self.strength = self.coupling.sum(2).unsqueeze(1)
        self.dt, self.per_tr, self.burn = integration_schedule(
            self.tr, n_timepoints, self.strength.max(), config)
        self.total = self.burn + self.per_tr * n_timepoints
        self.coupling_t = self.coupling.transpose(1, 2).contiguous()
        decay = torch.exp(self.bifurcation * self.dt)
        self.cos = decay * torch.cos(self.omega * self.dt)
        self.sin = decay * torch.sin(self.omega * self.dt)
        self.sigma = config.noise_sd * math.sqrt(self.dt)
        self.chunk = self.per_tr * max(1, NOISE_CHUNK_STEPS // self.per_tr)
        stationary = config.noise_sd / math.sqrt(2 * abs(config.bifurcation) + 1e-3)
        batch, n_rois = self.bifurcation.shape
        self.z0 = stationary * torch.randn(batch, 2, n_rois, generator=self.generator)
        self.out = torch.empty(batch, n_rois, n_timepoints)

    def noise(self, first):
        """The neural noise of steps ``first, first + 1, ...`` (one chunk)."""
        size = min(self.chunk, self.total - first)
        n_scans, n_rois = self.bifurcation.shape
        return torch.randn(size, n_scans, 2, n_rois, generator=self.generator).mul_(self.sigma)

    def sample_index(self, step):
        """The sample taken after step ``step`` (0-based), or None."""
        sample, rest = divmod(step + 1 - self.burn, self.per_tr)
        return sample - 1 if sample > 0 and rest == 0 else None


def _stacked_rows(groups, n_active):
    """Rows of the stacked state held by the first ``n_active`` groups."""
    return sum(g.n_scans for g in groups[:n_active])


def _n_active(groups, step):
    """Groups still integrating at ``step`` (they are sorted longest first)."""
    return sum(g.total > step for g in groups)


class _NoiseBlocks:
    """The neural noise of the active groups, stacked, one block of steps at a time.

    Blocks are drawn in a worker thread one block ahead of the integration; each group's
    noise comes from its own generator in its own chunks (:meth:`Group.noise`).
    """

    def __init__(self, groups, pool):
        self.groups, self.pool = groups, pool
        self.chunks = [None] * len(groups)
        self.first = [0] * len(groups)

    def submit(self, first, last):
        """Start drawing the block of steps ``first .. last - 1``; returns a future."""
        return self.pool.submit(self._block, first, last)

    def _block(self, first, last):
        _worker_thread_settings()
        n_groups = _n_active(self.groups, first)
        pieces = [self._steps(k, first, last) for k in range(n_groups)]
        if n_groups == 1 and len(pieces[0]) == 1:
            return pieces[0][0]
        n_rois = self.groups[0].bifurcation.shape[1]
        block = torch.empty(last - first, _stacked_rows(self.groups, n_groups), 2, n_rois)
        row = 0
        for k, steps in enumerate(pieces):
            step = 0
            for piece in steps:
                block[step:step + len(piece), row:row + self.groups[k].n_scans] = piece
                step += len(piece)
            row += self.groups[k].n_scans
        return block

    def _steps(self, k, first, last):
        """Views of group ``k``'s noise chunks covering its steps from ``first`` to ``last``."""
        group, pieces = self.groups[k], []
        step, last = first, min(last, group.total)
        while step < last:
            chunk = self.chunks[k]
            if chunk is None or step >= self.first[k] + len(chunk):
                if chunk is not None:
                    self.first[k] += len(chunk)
                chunk = self.chunks[k] = group.noise(self.first[k])
            end = min(len(chunk), last - self.first[k])
            pieces.append(chunk[step - self.first[k]:end])
            step = self.first[k] + end
        return pieces


class _Oscillators:
    """The stacked Stuart-Landau state of every group, advanced one block at a time."""

    def __init__(self, groups):
        self.groups = groups
        self.coupling_t = torch.cat([g.coupling_t for g in groups])
        self.strength, self.cos, self.sin, self.z = (
            torch.cat([getattr(g, name) for g in groups])
            for name in ("strength", "cos", "sin", "z0"))
        self.dt = _per_scan_step(groups, (1, 1))
        self.n_active = len(groups)

    def _keep(self, n_active):
        """Drop the scans of groups past ``n_active`` (sorted longest first: the tail)."""
        self.n_active = n = n_active
        rows = _stacked_rows(self.groups, n)
        for name in ("coupling_t", "strength", "cos", "sin", "z"):
            setattr(self, name, getattr(self, name)[:rows])
        if self.dt.dim():
            self.dt = self.dt[:rows]

    def advance(self, first, last, noise):
        """Steps ``first .. last - 1``; returns the state before each (the balloon's input)."""
        states = []
        for step in range(first, last):
            if self.groups[self.n_active - 1].total <= step:
                self._keep(_n_active(self.groups, step))
            states.append(self.z)
            step_noise = noise[step - first]
            if len(step_noise) > len(self.z):
                step_noise = step_noise[:len(self.z)]
            self.z = _hopf_step(self.z, self.coupling_t, self.strength, self.cos, self.sin,
                                step_noise, self.dt)
        return states


class _Hemodynamics:
    """The balloon model of every group and its sampling, run block by block."""

    def __init__(self, groups, config):
        self.groups, self.config = groups, config
        n_rois = groups[0].bifurcation.shape[1]
        self.balloon = BalloonWindkessel((_stacked_rows(groups, len(groups)), n_rois), config,
                                         _per_scan_step(groups, (1,)))
        self.starts = np.cumsum([0] + [g.n_scans for g in groups])
        self.n_active = len(groups)

    def run(self, first, states):
        """Advance over steps ``first, first + 1, ...`` driven by the oscillator ``states``."""
        _worker_thread_settings()
        for step, z in enumerate(states, start=first):
            if self.groups[self.n_active - 1].total <= step:
                self.n_active = _n_active(self.groups, step)
                self.balloon.keep(int(self.starts[self.n_active]))
            self.balloon.step(self.config.hrf_input_scale * z[:, 0])
            for k in range(self.n_active):
                sample = self.groups[k].sample_index(step)
                if sample is not None:
                    rows = slice(int(self.starts[k]), int(self.starts[k + 1]))
                    self.groups[k].out[:, :, sample] = self.balloon.bold(rows)


def _per_scan_step(groups, shape):
    """The groups' step sizes (float32): one number when they agree, else one per scan,
    shaped (scans, *shape)."""
    steps = {g.dt for g in groups}
    if len(steps) == 1:
        return torch.tensor(steps.pop(), dtype=torch.float32)
    return torch.cat([torch.full((g.n_scans, *shape), g.dt, dtype=torch.float32)
                      for g in groups])


class _Inline:
    """Runs submitted work at once, in the caller's thread (``Workers(threads=False)``)."""

    def submit(self, fn, *args):
        future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self):
        pass


class Workers:
    """The two worker threads of :func:`integrate` (noise, hemodynamics), or none.

    Use one for many integrations (``with Workers() as workers``): the same two threads
    then serve them all, so the memory their allocations keep does not add up.

    Parameters
    ----------
    threads : bool
        False: run that work in the caller's thread (the same numbers).
    """

    def __init__(self, threads=True):
        self.noise, self.hemodynamics = ((ThreadPoolExecutor(1), ThreadPoolExecutor(1))
                                         if threads else (_Inline(), _Inline()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.noise.shutdown()
        self.hemodynamics.shutdown()
        return False


def integrate(groups, *, n_timepoints, config, progress=None, threads=True, workers=None):
    """Integrate every group's oscillators and hemodynamics; BOLD per group.

    For ROI ``i`` of one scan, with ``z = x + iy``,
    ``dz_i = [(a_i + i w_i - |z_i|^2) z_i + sum_j K_ij (z_j - z_i)] dt + sigma dW``;
    the uncoupled linear part (``a_i + i w_i``) is applied exactly, the rest by
    Euler-Maruyama (keeping the synchronous mode of the diffusive coupling neutral).
    ``hrf_input_scale * x_i`` drives a :class:`BalloonWindkessel` model integrated
    with the same step; its BOLD signal is sampled once per TR after the burn-in.

    Parameters
    ----------
    groups : list of Group
    n_timepoints : int
        Samples per scan.
    config : SimulationConfig
    progress : callable, optional
        Called with the number of scan-batch steps done since the last call.
    threads : bool
        Draw the noise and integrate the hemodynamics in two worker threads beside the
        oscillators (the numbers are the same either way).
    workers : Workers, optional
        Threads to use (then ``threads`` is ignored); default: new ones for this call.

    Returns
    -------
    list of ndarray, shape (n_scans, n_rois, n_timepoints), float32
        BOLD signal change in percent, without measurement noise, in the order of ``groups``.
    """
    for group in groups:
        group.prepare(n_timepoints, config)
    order = sorted(groups, key=lambda g: -g.total)  # a finished group is the stacked tail
    total = order[0].total
    oscillators, hemodynamics = _Oscillators(order), _Hemodynamics(order, config)
    with (nullcontext(workers) if workers else Workers(threads)) as workers, \
            one_thread_no_denormals():
        noise = _NoiseBlocks(order, workers.noise)
        upcoming = noise.submit(0, min(BLOCK_STEPS, total))
        pending = deque()
        for first in range(0, total, BLOCK_STEPS):
            last = min(first + BLOCK_STEPS, total)
            block = upcoming.result()
            if last < total:
                upcoming = noise.submit(last, min(last + BLOCK_STEPS, total))
            states = oscillators.advance(first, last, block)
            pending.append(workers.hemodynamics.submit(hemodynamics.run, first, states))
            while len(pending) > 1:  # at most one block waits: bounded memory
                pending.popleft().result()
            if progress is not None:
                progress(sum(max(0, min(g.total, last) - first) for g in order))
        while pending:
            pending.popleft().result()
    bold = []
    for group in groups:
        if not torch.isfinite(group.out).all():
            raise RuntimeError("the hemodynamic model diverged (non-finite BOLD); lower "
                               "SimulationConfig.hrf_input_scale or dt_max, or keep the Hopf "
                               "parameter a of every ROI well below 0.3")
        bold.append(group.out.mul_(100.0).numpy())  # percent, in place: one copy less
    return bold


def simulate_bold(coupling, bifurcation, omega, *, tr, n_timepoints, generator,
                  config=None, progress=None):
    """Integrate coupled Stuart-Landau oscillators and the balloon model for one batch.

    See :func:`integrate` for the model.

    Parameters
    ----------
    coupling, bifurcation, omega, tr, generator
        As in :class:`Group`.
    n_timepoints : int
        Samples to return.
    config : SimulationConfig, optional
    progress : callable, optional
        Called with the number of integration steps done since the last call.

    Returns
    -------
    ndarray, shape (batch, n_rois, n_timepoints), float32
        BOLD signal change in percent, without measurement noise.
    """
    from bsym.data.simulate import SimulationConfig

    group = Group(coupling, bifurcation, omega, tr, generator)
    return integrate([group], n_timepoints=n_timepoints, config=config or SimulationConfig(),
                     progress=progress)[0]
