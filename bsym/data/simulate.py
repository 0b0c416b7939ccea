"""The built-in simulated cohort: SC-coupled Hopf oscillators through a balloon model.

The cohort is made in four steps, each a function of its own:

1. :func:`make_group_connectome`: ROIs placed in 3-D (two hemispheres, mm) around
   network centres, uneven network sizes (Yeo-7 proportions for 7 networks),
   distance-dependent connection probability and log-normal weights, denser within
   networks and between homotopic ROIs; fibre lengths from distances.
2. :func:`draw_subjects`: labels and latent traits per subject (and condition per session).
3. :func:`subject_connectomes`: each subject's biological SC (the group connectome
   with individual variation and the planted effects) and its measurement
   (streamline counts: subject scale, measurement noise, rounding).
4. :func:`simulate_bold`: Stuart-Landau (Hopf normal form) oscillators coupled by the
   biological SC, integrated by Euler-Maruyama (the uncoupled linear part exactly)
   for a batch of scans at once (one thread; batched matmul), feeding a Balloon-Windkessel hemodynamic model
   integrated alongside and sampled at the site's TR after a burn-in; then site
   noise and scale are applied.

Planted effects (effect sizes in :class:`SimulationConfig`):

==============  ============  ====================================================  ==========================
label           type          acts through                                          carried by
==============  ============  ====================================================  ==========================
``age``         continuous    long-range SC edge loss, and lower global coupling    both, complementary (each
                              in the dynamics                                       through its own noisy
                                                                                    "brain age")
``sex``         binary        intrinsic frequency of two networks                   fMRI only
                              (``sex_networks``; "M" faster in the first, slower
                              in the second)
``score``       continuous    a weak signed pattern of SC edge weights that         SC only
                              leaves every node's strength unchanged, on the
                              weakest edges (``score_edge_quantile``)
``diagnosis``   binary        one network (``diagnosis_network``): within-network   both
                              SC loss and reduced local gain
``site``        categorical   measurement noise level, signal scale, TR             acquisition only
``condition``   within-       excitability of one network                           fMRI only
                subject       (``condition_network``), "post" higher
==============  ============  ====================================================  ==========================

Every label is drawn independently of the others and of the site. Each effect
meets individual variation in the same quantity (network frequencies and
excitabilities, within-network SC, coupling, latent "brain age" and "score"),
so no label is perfectly predictable: with the defaults (200 subjects, 100 ROIs,
1200 time points) a linear model on the carrying modality scores AUROC 0.70-0.85
or Pearson r 0.4-0.7, and chance on the other (``benchmarks/calibrate_simulator.py``).
The score pattern sits on weak edges because SC shapes FC edge by edge: spread over
all edges, even a strength-neutral pattern was read from FC (r about 0.5).

Sites: ``site-1``, ``site-2``, ``site-3`` with TRs 0.72, 0.8 and 2.0 s
(:data:`DEFAULT_SITE_TRS`; more sites cycle through them), noise levels and
signal scales from :attr:`SimulationConfig.site_noise` / ``site_scale``.
BOLD is stored in percent signal change times the site's scale.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from bsym.errors import UsageError

YEO7_NETWORKS = ("Visual", "Somatomotor", "DorsalAttention", "VentralAttention", "Limbic",
                 "Frontoparietal", "Default")
#: Share of ROIs per Yeo-7 network (roughly as in Schaefer-400).
YEO7_SHARES = (0.15, 0.19, 0.12, 0.12, 0.07, 0.13, 0.22)
#: Repetition times (s) of the default sites: HCP-like, multiband, legacy.
DEFAULT_SITE_TRS = (0.72, 0.8, 2.0)


@dataclass(frozen=True)
class SimulationConfig:
    """Model constants and effect sizes of the simulated cohort.

    Log-weights are natural logs of streamline counts; "per SD" means per
    standard deviation of the label (age, score) or of its latent trait.
    Network indices count from 0 in network order (negative counts from the end:
    for Yeo-7, 0 Visual, 1 Somatomotor, -1 Default, -2 Frontoparietal).
    """

    # -- group connectome -------------------------------------------------------------
    brain_radii_mm: tuple = (68.0, 85.0, 60.0)  #: semi-axes (x, y, z) of the cortical shell
    network_spread: float = 0.35                #: angular spread of ROIs around a network centre
    connection_prob: float = 0.9                #: connection probability at zero distance
    connection_length_mm: float = 35.0          #: distance decay of connection probability
    within_prob_factor: float = 2.5             #: probability multiplier within a network
    interhemispheric_factor: float = 0.3        #: probability multiplier across hemispheres
    nearest_neighbours: int = 2                 #: always connect each ROI to its nearest ROIs
    log_weight_mean: float = 6.0                #: log streamlines at zero distance
    weight_length_mm: float = 40.0              #: distance decay of log-weights
    within_weight_factor: float = 2.0           #: weight multiplier within a network
    log_weight_sd: float = 1.0                  #: spread of group log-weights (heavy tail)
    tortuosity: float = 1.25                    #: fibre length / Euclidean distance
    # -- subject SC -------------------------------------------------------------------
    sc_individual_sd: float = 0.3               #: biological edge variation (log), seen by BOLD too
    sc_network_sd: float = 0.15                 #: biological within-network variation (log)
    sc_measurement_sd: float = 0.4              #: tractography noise per edge (log)
    sc_scale_sd: float = 0.2                    #: subject's total streamline count (log)
    # -- dynamics ---------------------------------------------------------------------
    bifurcation: float = -0.02                  #: Hopf parameter a (1/s); < 0: noisy damped
    frequency_hz: float = 0.05                  #: mean intrinsic frequency
    frequency_roi_sd_hz: float = 0.004          #: spread of ROI frequencies (group)
    frequency_subject_sd_hz: float = 0.001      #: individual ROI frequency jitter
    frequency_network_sd_hz: float = 0.002      #: individual network frequency offset
    excitability_network_sd: float = 0.004      #: individual network offset of a (subject)
    excitability_session_sd: float = 0.004      #: network offset of a per session (state)
    coupling: float = 1.0                       #: global coupling G (1/s per unit strength)
    coupling_sd: float = 0.1                    #: individual variation of G (log)
    noise_sd: float = 0.02                      #: neural noise amplitude
    dt_max: float = 0.1                         #: largest integration step (s)
    burn_in_s: float = 100.0                    #: discarded simulated time before sampling
    max_batch: int = 256                        #: scans integrated together
    # -- hemodynamics (Balloon-Windkessel, Friston 2003 / Stephan 2007) ---------------
    hrf_input_scale: float = 0.3                #: neural activity -> vasodilatory signal
    hrf_kappa: float = 0.65                     #: signal decay (1/s)
    hrf_gamma: float = 0.41                     #: flow-dependent elimination (1/s)
    hrf_tau: float = 0.98                       #: haemodynamic transit time (s)
    hrf_alpha: float = 0.32                     #: Grubb's exponent
    hrf_rho: float = 0.34                       #: resting oxygen extraction fraction
    hrf_v0: float = 0.02                        #: resting blood volume fraction
    # -- acquisition ------------------------------------------------------------------
    site_noise: tuple = (0.5, 0.7, 0.9)         #: noise SD relative to the signal SD, per site
    site_scale: tuple = (1.0, 0.6, 1.5)         #: multiplies the stored signal, per site
    # -- labels -----------------------------------------------------------------------
    age_range: tuple = (20.0, 80.0)             #: uniform age distribution (years)
    score_mean: float = 100.0                   #: cognition-like score
    score_sd: float = 15.0
    diagnosis_prevalence: float = 0.4
    # -- planted effects --------------------------------------------------------------
    age_latent_sd: float = 0.8                  #: per-modality "brain age" noise (per SD age)
    age_sc_loss: float = 0.25                   #: log-weight loss per SD, at the longest edge
    age_coupling: float = 0.15                  #: log-coupling loss per SD
    sex_networks: tuple = (0, 1)                #: networks whose frequency differs by sex
    sex_frequency_hz: float = 0.0075            #: "M" minus "F" (+ first, - second network)
    score_latent_sd: float = 0.7                #: noise of the trait the SC pattern follows
    score_sc: float = 0.08                      #: RMS log-weight change per SD
    score_edge_quantile: float = 0.3            #: pattern only on edges weaker than this quantile
    diagnosis_network: int = -1                 #: network hit by the diagnosis
    diagnosis_sc_loss: float = 0.225            #: within-network log-weight loss (mean severity)
    diagnosis_gain: float = 0.15                #: relative loss of local gain (mean severity)
    diagnosis_severity: tuple = (0.25, 1.75)    #: uniform range of severity among patients
    condition_network: int = -2                 #: network whose excitability rises "post"
    condition_excitability: float = 0.03        #: increase of a ("post" minus "pre", 1/s)
    condition_response_sd: float = 0.5          #: individual response (relative)

    def to_dict(self) -> dict:
        """Plain dictionary (for the manifest)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class GroupConnectome:
    """The group-level connectome and the ROI table.

    Attributes
    ----------
    names : list of str
        ROI names (``LH_Visual_1``, ...).
    hemisphere : ndarray of str, shape (n_rois,)
        ``"LH"`` or ``"RH"``.
    network : ndarray of int, shape (n_rois,)
        Network index of each ROI.
    network_names : tuple of str
    coords : ndarray, shape (n_rois, 3)
        x (left-right), y (posterior-anterior), z (inferior-superior) in mm.
    distance : ndarray, shape (n_rois, n_rois)
        Euclidean distances (mm).
    weights : ndarray, shape (n_rois, n_rois)
        Expected streamline counts (0 where not connected), symmetric.
    lengths : ndarray, shape (n_rois, n_rois)
        Fibre lengths (mm, 0 where not connected).
    """

    names: list
    hemisphere: np.ndarray
    network: np.ndarray
    network_names: tuple
    coords: np.ndarray
    distance: np.ndarray
    weights: np.ndarray
    lengths: np.ndarray

    @property
    def n_rois(self) -> int:
        return len(self.names)

    @property
    def edges(self) -> np.ndarray:
        """Boolean adjacency."""
        return self.weights > 0

    def rois_table(self) -> pd.DataFrame:
        return pd.DataFrame({
            "name": self.names, "network": [self.network_names[k] for k in self.network],
            "hemisphere": self.hemisphere, "x": self.coords[:, 0], "y": self.coords[:, 1],
            "z": self.coords[:, 2],
        })


@dataclass
class SimulatedCohort:
    """A simulated cohort held in memory (what :func:`simulate_cohort` stores).

    Attributes
    ----------
    scans : DataFrame
        One row per scan: ``subject``, ``session``, ``site``, ``tr``, labels.
    bold : list of ndarray
        Per scan, ROIs x time (float32), same order as ``scans``.
    subjects : DataFrame
        One row per subject with labels and latent traits.
    sc, lengths : ndarray, shape (n_subjects, n_rois, n_rois)
        Measured streamline counts and fibre lengths, same order as ``subjects``.
    group : GroupConnectome
    config : SimulationConfig
    source : dict
        Everything needed to reproduce the cohort (saved in the manifest).
    """

    scans: pd.DataFrame
    bold: list
    subjects: pd.DataFrame
    sc: np.ndarray
    lengths: np.ndarray
    group: GroupConnectome
    config: SimulationConfig
    source: dict = field(default_factory=dict)


# -- helpers ----------------------------------------------------------------------------

def _network_names(n_networks):
    if n_networks == len(YEO7_NETWORKS):
        return YEO7_NETWORKS
    return tuple(f"Network{k + 1}" for k in range(n_networks))


def _allocate(total, shares):
    """Split ``total`` into integer counts >= 1 proportional to ``shares``."""
    shares = np.asarray(shares, dtype=float)
    raw = shares / shares.sum() * (total - len(shares))
    counts = np.floor(raw).astype(int) + 1
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _mirror_upper(matrix):
    """Exactly symmetric copy of ``matrix`` built from its upper triangle (zero diagonal)."""
    upper = np.triu(matrix, 1)
    return upper + upper.T


def _symmetric_normal(rng, n):
    return _mirror_upper(rng.standard_normal((n, n)))


def _network_index(index, n_networks, what):
    if not -n_networks <= index < n_networks:
        raise ValueError(f"SimulationConfig.{what} must index one of {n_networks} networks, "
                         f"received {index}")
    return index % n_networks


def _check_positive_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, received {value!r}")
    return int(value)


# -- 1. group connectome ------------------------------------------------------------------

def make_group_connectome(n_rois, n_networks, rng, config=None) -> GroupConnectome:
    """Draw a modular, spatially embedded group connectome.

    Each network has a centre on the right hemisphere of an ellipsoidal cortical
    shell and its mirror image on the left; its ROIs scatter around both. Edges
    appear with probability ``p0 * exp(-d / l_p)`` (more often within a network,
    less often across hemispheres, always between homotopic ROIs and nearest
    neighbours); weights are log-normal with a mean falling with distance.

    Parameters
    ----------
    n_rois, n_networks : int
    rng : numpy.random.Generator
    config : SimulationConfig, optional

    Returns
    -------
    GroupConnectome
    """
    config = config or SimulationConfig()
    names_net = _network_names(n_networks)
    shares = YEO7_SHARES if n_networks == 7 else rng.uniform(1.0, 3.0, n_networks)
    counts = _allocate(n_rois, shares)
    right_counts = counts // 2
    left_counts = counts - right_counts

    # network centres: well separated directions on the right hemisphere (x > 0)
    candidates = rng.standard_normal((64 * n_networks, 3))
    candidates[:, 0] = np.abs(candidates[:, 0]) + 0.3
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    centres = [candidates[0]]
    for _ in range(1, n_networks):
        gap = np.min(np.linalg.norm(candidates[:, None] - np.array(centres)[None], axis=2), 1)
        centres.append(candidates[int(np.argmax(gap))])
    centres = np.array(centres)

    radii = np.asarray(config.brain_radii_mm, dtype=float)
    coords, network, hemisphere, names = [], [], [], []
    homologue = {}
    for hemi, side_counts, sign in (("LH", left_counts, -1.0), ("RH", right_counts, 1.0)):
        for k in range(n_networks):
            for m in range(side_counts[k]):
                direction = centres[k] + config.network_spread * rng.standard_normal(3)
                direction[0] = max(abs(direction[0]), 0.08)
                direction /= np.linalg.norm(direction)
                point = direction * radii * rng.uniform(0.8, 1.0)
                point[0] *= sign
                homologue.setdefault((k, m), []).append(len(coords))
                coords.append(point)
                network.append(k)
                hemisphere.append(hemi)
                names.append(f"{hemi}_{names_net[k]}_{m + 1}")
    coords = np.array(coords)
    network = np.array(network)
    hemisphere = np.array(hemisphere)
    distance = np.linalg.norm(coords[:, None] - coords[None], axis=2)

    same_net = network[:, None] == network[None]
    cross = hemisphere[:, None] != hemisphere[None]
    prob = config.connection_prob * np.exp(-distance / config.connection_length_mm)
    prob = prob * np.where(same_net, config.within_prob_factor, 1.0)
    prob = prob * np.where(cross, config.interhemispheric_factor, 1.0)
    edges = np.triu(rng.random((n_rois, n_rois)) < np.minimum(prob, 1.0), 1)
    edges = edges | edges.T
    for pair in homologue.values():
        if len(pair) == 2:
            edges[pair[0], pair[1]] = edges[pair[1], pair[0]] = True
    near = np.argsort(distance + np.diag(np.full(n_rois, np.inf)), axis=1)
    for i in range(n_rois):
        for j in near[i, : config.nearest_neighbours]:
            edges[i, j] = edges[j, i] = True
    np.fill_diagonal(edges, False)

    log_w = (config.log_weight_mean - distance / config.weight_length_mm
             + np.where(same_net, math.log(config.within_weight_factor), 0.0)
             + config.log_weight_sd * _symmetric_normal(rng, n_rois))
    weights = np.where(edges, np.exp(log_w), 0.0)
    jitter = np.exp(0.1 * _symmetric_normal(rng, n_rois))
    lengths = _mirror_upper(np.where(edges, distance * config.tortuosity * jitter, 0.0))
    return GroupConnectome(names=names, hemisphere=hemisphere, network=network,
                           network_names=names_net, coords=coords, distance=distance,
                           weights=weights, lengths=lengths)


def strength_neutral_pattern(weights, rng) -> np.ndarray:
    """A random signed edge pattern that leaves every node's strength unchanged.

    Returns ``P`` (symmetric, zero off the edges of ``weights``, unit RMS on them)
    with ``sum_j weights[i, j] * P[i, j] = 0`` for every ``i``, so that scaling edges
    by ``exp(beta * P)`` changes node strengths only to second order in ``beta``.
    """
    edges = weights > 0
    p0 = np.where(edges, _symmetric_normal(rng, len(weights)), 0.0)
    # P = P0 - (u_i + u_j) on the edges, with (diag(s) + W) u = rowsum(W * P0)
    system = np.diag(weights.sum(1)) + weights
    u = np.linalg.lstsq(system, (weights * p0).sum(1), rcond=None)[0]
    pattern = _mirror_upper(np.where(edges, p0 - u[:, None] - u[None], 0.0))
    return pattern / np.sqrt(np.mean(pattern[edges] ** 2))


# -- 2. subjects --------------------------------------------------------------------------

def draw_subjects(n_subjects, n_sites, rng, config=None) -> pd.DataFrame:
    """Labels, sites and latent traits, one row per subject.

    Columns: ``subject``, ``site`` (index), ``age``, ``sex``, ``score``, ``diagnosis``,
    and latent traits ``age_sc``, ``age_fmri`` (standardised "brain age" seen by each
    modality), ``score_sc``, ``severity`` (0 for controls).
    """
    config = config or SimulationConfig()
    low, high = config.age_range
    age = rng.uniform(low, high, n_subjects)
    age_z = (age - (low + high) / 2) / ((high - low) / math.sqrt(12))
    sex = np.where(rng.random(n_subjects) < 0.5, "F", "M")
    score_z = rng.standard_normal(n_subjects)
    diagnosis = (rng.random(n_subjects) < config.diagnosis_prevalence).astype(int)
    severity = diagnosis * rng.uniform(*config.diagnosis_severity, n_subjects)
    site = rng.permutation(np.arange(n_subjects) % n_sites)
    width = len(str(n_subjects))
    return pd.DataFrame({
        "subject": [f"sub-{i + 1:0{max(width, 3)}d}" for i in range(n_subjects)],
        "site": site,
        "age": np.round(age, 1),
        "sex": sex,
        "score": np.round(config.score_mean + config.score_sd * score_z, 1),
        "diagnosis": diagnosis,
        "age_sc": age_z + config.age_latent_sd * rng.standard_normal(n_subjects),
        "age_fmri": age_z + config.age_latent_sd * rng.standard_normal(n_subjects),
        "score_sc": score_z + config.score_latent_sd * rng.standard_normal(n_subjects),
        "severity": severity,
    })


# -- 3. subject SC ------------------------------------------------------------------------

def subject_connectomes(group, subjects, rng, config=None):
    """Biological and measured SC of every subject.

    Parameters
    ----------
    group : GroupConnectome
    subjects : DataFrame
        From :func:`draw_subjects`.
    rng : numpy.random.Generator
    config : SimulationConfig, optional

    Returns
    -------
    true_sc : ndarray, shape (n_subjects, n_rois, n_rois)
        Biological weights (what the dynamics see), float64.
    counts : ndarray, shape (n_subjects, n_rois, n_rois)
        Measured streamline counts (rounded, non-negative), float32.
    lengths : ndarray, shape (n_subjects, n_rois, n_rois)
        Fibre lengths (mm) where a streamline was counted, float32.
    """
    config = config or SimulationConfig()
    n, n_rois = len(subjects), group.n_rois
    edges = group.edges
    log_w = np.log(np.where(edges, group.weights, 1.0))
    long_range = group.distance / group.distance[edges].max()
    weak = group.weights < np.quantile(group.weights[edges], config.score_edge_quantile)
    pattern = strength_neutral_pattern(np.where(weak, group.weights, 0.0), rng)
    dx_net = _network_index(config.diagnosis_network, len(group.network_names),
                            "diagnosis_network")
    within = group.network[:, None] == group.network[None]
    dx_edges = within & (group.network[:, None] == dx_net)
    n_net = len(group.network_names)
    true_sc = np.empty((n, n_rois, n_rois))
    counts = np.empty((n, n_rois, n_rois), dtype=np.float32)
    lengths = np.empty((n, n_rois, n_rois), dtype=np.float32)
    for s, row in enumerate(subjects.itertuples(index=False)):
        net_offset = config.sc_network_sd * rng.standard_normal(n_net)
        log_s = (log_w + config.sc_individual_sd * _symmetric_normal(rng, n_rois)
                 + np.where(within, net_offset[group.network][:, None], 0.0)
                 - config.age_sc_loss * row.age_sc * long_range
                 + config.score_sc * row.score_sc * pattern
                 - config.diagnosis_sc_loss * row.severity * dx_edges)
        true_sc[s] = np.where(edges, np.exp(log_s), 0.0)
        measured = true_sc[s] * np.exp(config.sc_scale_sd * rng.standard_normal()
                                       + config.sc_measurement_sd
                                       * _symmetric_normal(rng, n_rois))
        counts[s] = _mirror_upper(np.round(measured))
        jitter = np.exp(0.03 * _symmetric_normal(rng, n_rois))
        lengths[s] = _mirror_upper(np.where(counts[s] > 0, group.lengths * jitter, 0.0))
    return true_sc, counts, lengths


# -- 4. dynamics and hemodynamics -----------------------------------------------------------

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
        Shape of the neural input.
    config : SimulationConfig
    dt : float
        Integration step (s).
    """

    def __init__(self, shape, config, dt):
        self.config, self.dt = config, dt
        self.s = torch.zeros(shape)
        self.log_f, self.log_v, self.log_q = (torch.zeros(shape) for _ in range(3))

    def step(self, u):
        """Advance by one Euler step driven by neural activity ``u``."""
        c, dt = self.config, self.dt
        f, inv_v = torch.exp(self.log_f), torch.exp(-self.log_v)
        v_alpha = torch.exp(self.log_v / c.hrf_alpha)
        extraction = 1.0 - torch.exp(math.log(1.0 - c.hrf_rho) / f)
        d_log_f = self.s / f
        d_log_v = (f - v_alpha) * inv_v / c.hrf_tau
        d_log_q = (f * extraction * torch.exp(-self.log_q) / c.hrf_rho
                   - v_alpha * inv_v) / c.hrf_tau
        self.s.add_((u - c.hrf_kappa * self.s - c.hrf_gamma * (f - 1.0)) * dt)
        self.log_f.add_(d_log_f * dt)
        self.log_v.add_(d_log_v * dt)
        self.log_q.add_(d_log_q * dt)

    def bold(self):
        """BOLD signal change (fraction)."""
        rho = self.config.hrf_rho
        k1, k2, k3 = 7.0 * rho, 2.0, 2.0 * rho - 0.2
        v, q = torch.exp(self.log_v), torch.exp(self.log_q)
        return self.config.hrf_v0 * (k1 * (1.0 - q) + k2 * (1.0 - q / v) + k3 * (1.0 - v))


def _hopf_step(z, coupling_t, strength, cos, sin, noise, dt):
    """One step of the coupled Stuart-Landau oscillators; ``z`` is (batch, 2, n_rois)."""
    x, y = z[:, 0], z[:, 1]
    new = torch.bmm(z, coupling_t)  # sum_j K_ij z_j; (2, N) @ (N, N) is the fast layout
    new.sub_(((x * x + y * y).unsqueeze(1) + strength) * z).mul_(dt).add_(noise)
    new[:, 0].addcmul_(cos, x).addcmul_(sin, y, value=-1.0)
    new[:, 1].addcmul_(sin, x).addcmul_(cos, y)
    return new


def simulate_bold(coupling, bifurcation, omega, *, tr, n_timepoints, generator,
                  config=None, progress=None):
    """Integrate coupled Stuart-Landau oscillators and the balloon model for a batch.

    For ROI ``i`` of one scan, with ``z = x + iy``,
    ``dz_i = [(a_i + i w_i - |z_i|^2) z_i + sum_j K_ij (z_j - z_i)] dt + sigma dW``;
    the uncoupled linear part (``a_i + i w_i``) is applied exactly, the rest by
    Euler-Maruyama (keeping the synchronous mode of the diffusive coupling neutral).
    ``hrf_input_scale * x_i`` drives a :class:`BalloonWindkessel` model integrated
    with the same step; its BOLD signal is sampled once per TR after the burn-in.

    Parameters
    ----------
    coupling : Tensor, shape (batch, n_rois, n_rois)
        ``K``: coupling weights (row i: inputs to ROI i), 1/s.
    bifurcation, omega : Tensor, shape (batch, n_rois)
        Hopf parameter ``a`` (1/s) and angular frequency (rad/s).
    tr : float
        Sampling interval (s).
    n_timepoints : int
        Samples to return.
    generator : torch.Generator
        Source of the neural noise.
    config : SimulationConfig, optional
    progress : callable, optional
        Called with the number of integration steps done since the last call.

    Returns
    -------
    ndarray, shape (batch, n_rois, n_timepoints), float32
        BOLD signal change in percent, without measurement noise.
    """
    config = config or SimulationConfig()
    batch, n_rois = bifurcation.shape
    strength = coupling.sum(2).unsqueeze(1)
    dt, per_tr, burn = integration_schedule(tr, n_timepoints, strength.max(), config)
    total = burn + per_tr * n_timepoints
    coupling_t = coupling.transpose(1, 2).contiguous()
    decay = torch.exp(bifurcation * dt)
    cos, sin = decay * torch.cos(omega * dt), decay * torch.sin(omega * dt)
    sigma = config.noise_sd * math.sqrt(dt)

    stationary = config.noise_sd / math.sqrt(2 * abs(config.bifurcation) + 1e-3)
    z = stationary * torch.randn(batch, 2, n_rois, generator=generator)
    balloon = BalloonWindkessel((batch, n_rois), config, dt)
    out = torch.empty(batch, n_rois, n_timepoints)
    chunk = per_tr * max(1, 200 // per_tr)
    flush = torch.set_flush_denormal(True)  # decaying balloon states would slow every step
    try:
        for first in range(0, total, chunk):
            size = min(chunk, total - first)
            noise = torch.randn(size, batch, 2, n_rois, generator=generator).mul_(sigma)
            for k in range(size):
                balloon.step(config.hrf_input_scale * z[:, 0])
                z = _hopf_step(z, coupling_t, strength, cos, sin, noise[k], dt)
                sample, rest = divmod(first + k + 1 - burn, per_tr)
                if sample > 0 and rest == 0:
                    out[:, :, sample - 1] = balloon.bold()
            if progress is not None:
                progress(size)
    finally:
        if flush:
            torch.set_flush_denormal(False)
    if not torch.isfinite(out).all():
        raise RuntimeError("the hemodynamic model diverged (non-finite BOLD); lower "
                           "SimulationConfig.hrf_input_scale or dt_max, or keep the Hopf "
                           "parameter a of every ROI well below 0.3")
    return (100.0 * out).numpy()


def _dynamics_parameters(group, subjects, scans, true_sc, rng, config):
    """Coupling matrices, Hopf parameters and frequencies of every scan."""
    n_net = len(group.network_names)
    net = group.network
    roi_freq = config.frequency_hz + config.frequency_roi_sd_hz * rng.standard_normal(len(net))
    norm = group.weights.sum(1).mean()
    sex_nets = [_network_index(k, n_net, "sex_networks") for k in config.sex_networks]
    dx_net = _network_index(config.diagnosis_network, n_net, "diagnosis_network")
    cond_net = _network_index(config.condition_network, n_net, "condition_network")
    per_subject = {}
    for s, row in enumerate(subjects.itertuples(index=False)):
        freq = (roi_freq + config.frequency_subject_sd_hz * rng.standard_normal(len(net))
                + config.frequency_network_sd_hz * rng.standard_normal(n_net)[net])
        if row.sex == "M":
            freq = freq + config.sex_frequency_hz * (
                (net == sex_nets[0]).astype(float) - (net == sex_nets[-1]).astype(float))
        a = config.bifurcation + config.excitability_network_sd * rng.standard_normal(n_net)[net]
        g = config.coupling * math.exp(config.coupling_sd * rng.standard_normal()
                                       - config.age_coupling * row.age_fmri)
        gain = 1.0 - config.diagnosis_gain * row.severity * (net == dx_net)
        response = config.condition_excitability * max(
            0.0, 1.0 + config.condition_response_sd * rng.standard_normal())
        per_subject[row.subject] = (g * gain[:, None] * true_sc[s] / norm, a,
                                    2 * math.pi * freq, response)
    coupling, a, omega = [], [], []
    for row in scans.itertuples(index=False):
        k, a_s, w, response = per_subject[row.subject]
        a_scan = a_s + config.excitability_session_sd * rng.standard_normal(n_net)[net]
        if row.condition == "post":
            a_scan = a_scan + response * (net == cond_net)
        coupling.append(k)
        a.append(a_scan)
        omega.append(w)
    return np.array(coupling), np.array(a), np.array(omega)


@contextmanager
def _one_thread():
    # The tensors are too small for intra-op threads to pay (they cost time, more so on a
    # busy machine); one thread also keeps the arrays identical on every machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _acquire(site_of_scan, site_trs, coupling, a, omega, *, n_timepoints, seed, rng, config,
             progress):
    """BOLD of every scan: integrate each site's scans in batches, add site noise and scale."""
    batches = []
    for k, tr in enumerate(site_trs):
        index = np.flatnonzero(site_of_scan == k)
        for part, start in enumerate(range(0, len(index), config.max_batch)):
            rows = index[start:start + config.max_batch]
            tensors = [torch.as_tensor(v[rows], dtype=torch.float32) for v in (coupling, a, omega)]
            _, per_tr, burn = integration_schedule(tr, n_timepoints,
                                                   tensors[0].sum(2).max(), config)
            batches.append((k, part, rows, tensors, burn + per_tr * n_timepoints))
    bold = [None] * len(site_of_scan)
    with tqdm(total=sum(b[-1] for b in batches), desc="simulating BOLD", unit="step",
              disable=not progress, mininterval=0.5) as bar, _one_thread():
        for k, part, rows, tensors, _ in batches:
            state = np.random.SeedSequence(seed, spawn_key=(5, k, part)).generate_state(1)
            clean = simulate_bold(*tensors, tr=site_trs[k], n_timepoints=n_timepoints,
                                  generator=torch.Generator().manual_seed(int(state[0])),
                                  config=config, progress=bar.update)
            noise = config.site_noise[k % len(config.site_noise)]
            scale = config.site_scale[k % len(config.site_scale)]
            reference = float(np.median(clean.std(axis=2)))
            for j, i in enumerate(rows):
                noisy = clean[j] + noise * reference * rng.standard_normal(clean[j].shape)
                bold[i] = (scale * noisy).astype(np.float32)
    return bold


# -- the cohort ---------------------------------------------------------------------------

def _check_arguments(n_subjects, n_rois, n_timepoints, n_networks, n_sites, site_trs,
                     sessions):
    n_subjects = _check_positive_int(n_subjects, "n_subjects", 1)
    n_networks = _check_positive_int(n_networks, "n_networks", 2)
    n_rois = _check_positive_int(n_rois, "n_rois", 2)
    if n_rois < n_networks:
        raise UsageError(f"n_rois must be >= n_networks ({n_networks}), received {n_rois}. "
                         "Fix: ask for fewer networks (--networks) or more ROIs (--rois)")
    n_timepoints = _check_positive_int(n_timepoints, "n_timepoints", 2)
    n_sites = _check_positive_int(n_sites, "n_sites", 1)
    if sessions not in (1, 2):
        raise UsageError(f"sessions must be 1 (pre) or 2 (pre and post), received {sessions!r}")
    if site_trs is None:
        site_trs = tuple(DEFAULT_SITE_TRS[i % len(DEFAULT_SITE_TRS)] for i in range(n_sites))
    site_trs = tuple(float(t) for t in np.atleast_1d(site_trs))
    if len(site_trs) != n_sites:
        raise UsageError(f"site_trs must give one TR per site ({n_sites}), "
                         f"received {len(site_trs)}")
    if not all(0 < t <= 30 for t in site_trs):
        raise UsageError(f"site_trs must be in seconds (0 < TR <= 30), received {site_trs}")
    return n_subjects, n_rois, n_timepoints, n_networks, n_sites, site_trs


def simulate(*, n_subjects=200, n_rois=100, n_timepoints=1200, n_networks=7, n_sites=3,
             site_trs=None, sessions=2, seed=0, config=None, progress=True) -> SimulatedCohort:
    """Simulate a cohort in memory; see :func:`simulate_cohort` for the parameters."""
    config = config or SimulationConfig()
    n_subjects, n_rois, n_timepoints, n_networks, n_sites, site_trs = _check_arguments(
        n_subjects, n_rois, n_timepoints, n_networks, n_sites, site_trs, sessions)
    streams = np.random.SeedSequence(seed).spawn(5)
    rng_group, rng_subjects, rng_sc, rng_dyn, rng_acq = (np.random.default_rng(s)
                                                         for s in streams[:5])
    group = make_group_connectome(n_rois, n_networks, rng_group, config)
    subjects = draw_subjects(n_subjects, n_sites, rng_subjects, config)
    true_sc, counts, lengths = subject_connectomes(group, subjects, rng_sc, config)

    site_names = [f"site-{k + 1}" for k in range(n_sites)]
    conditions = ("pre", "post")[:sessions]
    scans = pd.DataFrame([
        {"subject": row.subject, "session": str(k + 1), "site": site_names[row.site],
         "site_index": row.site, "tr": site_trs[row.site], "age": row.age, "sex": row.sex,
         "score": row.score, "diagnosis": int(row.diagnosis), "condition": condition}
        for row in subjects.itertuples(index=False) for k, condition in enumerate(conditions)
    ])
    coupling, a, omega = _dynamics_parameters(group, subjects, scans, true_sc, rng_dyn, config)

    bold = _acquire(scans["site_index"].to_numpy(), site_trs, coupling, a, omega,
                    n_timepoints=n_timepoints, seed=seed, rng=rng_acq, config=config,
                    progress=progress)
    scans = scans.drop(columns="site_index")
    source = {"name": "simulated", "generator": "bsym.data.simulate", "seed": int(seed),
              "n_subjects": n_subjects, "n_rois": n_rois, "n_timepoints": n_timepoints,
              "n_networks": n_networks, "n_sites": n_sites, "site_trs": list(site_trs),
              "sessions": sessions, "config": config.to_dict()}
    return SimulatedCohort(scans=scans, bold=bold, subjects=subjects, sc=counts,
                           lengths=lengths, group=group, config=config, source=source)


def simulate_cohort(out, *, n_subjects=200, n_rois=100, n_timepoints=1200, n_networks=7,
                    n_sites=3, site_trs=None, sessions=2, seed=0, config=None,
                    overwrite=False, progress=True, roi_order="original", roi_seed=0):
    """Simulate the built-in cohort and write it as a cohort store.

    Parameters
    ----------
    out : str or Path
        Store directory to create.
    n_subjects : int
        Subjects (each with one SC and ``sessions`` fMRI scans).
    n_rois : int
        ROIs (>= ``n_networks``), split over two hemispheres.
    n_timepoints : int
        BOLD samples per scan, at the site's TR (>= 2).
    n_networks : int
        Networks (Yeo-7 names when 7, ``Network1``... otherwise).
    n_sites : int
        Acquisition sites; subjects are spread evenly over them.
    site_trs : sequence of float, optional
        TR (s) of each site; default cycles through :data:`DEFAULT_SITE_TRS`.
    sessions : {1, 2}
        2: a "pre" and a "post" scan per subject; 1: "pre" only.
    seed : int
        Same seed and arguments give bit-identical arrays (on CPU).
    config : SimulationConfig, optional
        Model constants and effect sizes; recorded in the manifest.
    overwrite : bool
        Replace an existing store at ``out`` (only a store bsym wrote; anything else
        there is refused).
    progress : bool
        Show a progress bar over integration steps.
    roi_order : {"original", "shuffled"}
        Store the ROIs in the source's order, or in a fixed permutation drawn from
        ``roi_seed`` (recorded in the manifest; see :class:`bsym.data.store.CohortWriter`).
    roi_seed : int
        Seed of the shuffled order.

    Returns
    -------
    Cohort
        The store, opened.

    Examples
    --------
    >>> cohort = simulate_cohort("data/sim", n_subjects=20, n_rois=30,
    ...                          n_timepoints=200, progress=False)  # doctest: +SKIP
    >>> cohort.subjects[["subject", "condition", "age", "sex"]].head()  # doctest: +SKIP
    """
    from bsym.data.store import CohortWriter, check_store_output, open_cohort

    out = Path(out)
    check_store_output(out, overwrite=overwrite)  # before minutes of simulation
    sim = simulate(n_subjects=n_subjects, n_rois=n_rois, n_timepoints=n_timepoints,
                   n_networks=n_networks, n_sites=n_sites, site_trs=site_trs,
                   sessions=sessions, seed=seed, config=config, progress=progress)
    rois = sim.group.rois_table()
    preprocessing = {"units": "percent signal change x site scale",
                     "sc": "streamline counts", "lengths": "mm"}
    with CohortWriter(out, source=sim.source, atlas=f"simulated-{n_rois}",
                      preprocessing=preprocessing, overwrite=overwrite, roi_order=roi_order,
                      roi_seed=roi_seed) as writer:
        writer.set_rois(rois["name"], networks=rois["network"],
                        coords=rois[["x", "y", "z"]].to_numpy())
        for row, bold in zip(sim.scans.itertuples(index=False), sim.bold):
            writer.add_scan(subject=row.subject, session=row.session, site=row.site,
                            tr=row.tr, bold=bold, age=row.age, sex=row.sex, score=row.score,
                            diagnosis=row.diagnosis, condition=row.condition)
        for s, subject in enumerate(sim.subjects["subject"]):
            writer.add_matrix("sc", subject, sim.sc[s])
            writer.add_matrix("lengths", subject, sim.lengths[s])
    return open_cohort(out)
