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
4. :func:`bsym.data.dynamics.integrate`: Stuart-Landau (Hopf normal form) oscillators
   coupled by the biological SC, integrated by Euler-Maruyama (the uncoupled linear part
   exactly) for batches of scans at once (batched matmul), feeding a Balloon-Windkessel
   hemodynamic model integrated alongside and sampled at the site's TR after a burn-in;
   then site noise and scale are applied.

A store is written subject by subject and batch by batch (:func:`simulate_cohort`), so
the memory it takes does not grow with the number of subjects.

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
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from bsym.data.dynamics import (  # noqa: F401  (BalloonWindkessel, simulate_bold: public)
    BalloonWindkessel,
    Group,
    Workers,
    integrate,
    integration_schedule,
    simulate_bold,
)
from bsym.errors import UsageError
from bsym.io import disk_error

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

def connectome_stream(group, subjects, rng, config=None):
    """Biological and measured SC of each subject in turn (what :func:`subject_connectomes`
    stacks); one subject in memory at a time.

    Yields
    ------
    true_sc : ndarray, shape (n_rois, n_rois)
        Biological weights (what the dynamics see), float64.
    counts : ndarray, shape (n_rois, n_rois)
        Measured streamline counts (rounded, non-negative), float32.
    lengths : ndarray, shape (n_rois, n_rois)
        Fibre lengths (mm) where a streamline was counted, float32.
    """
    config = config or SimulationConfig()
    n_rois = group.n_rois
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
    for row in subjects.itertuples(index=False):
        net_offset = config.sc_network_sd * rng.standard_normal(n_net)
        log_s = (log_w + config.sc_individual_sd * _symmetric_normal(rng, n_rois)
                 + np.where(within, net_offset[group.network][:, None], 0.0)
                 - config.age_sc_loss * row.age_sc * long_range
                 + config.score_sc * row.score_sc * pattern
                 - config.diagnosis_sc_loss * row.severity * dx_edges)
        true_sc = np.where(edges, np.exp(log_s), 0.0)
        measured = true_sc * np.exp(config.sc_scale_sd * rng.standard_normal()
                                    + config.sc_measurement_sd * _symmetric_normal(rng, n_rois))
        counts = _mirror_upper(np.round(measured)).astype(np.float32)
        jitter = np.exp(0.03 * _symmetric_normal(rng, n_rois))
        lengths = _mirror_upper(np.where(counts > 0, group.lengths * jitter, 0.0))
        yield true_sc, counts, lengths.astype(np.float32)


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
    parts = list(zip(*connectome_stream(group, subjects, rng, config)))
    n_rois = group.n_rois
    if not parts:
        return (np.empty((0, n_rois, n_rois)),
                *(np.empty((0, n_rois, n_rois), dtype=np.float32) for _ in range(2)))
    return tuple(np.stack(p) for p in parts)


# -- 4. dynamics --------------------------------------------------------------------------

@dataclass
class _Dynamics:
    """What the dynamics of every scan need besides the SC, drawn before it.

    ``gain`` is each subject's global coupling times the local gain of each ROI (the
    coupling of a subject is ``gain[:, None] * true_sc / norm``); ``bifurcation`` is per
    scan, ``omega`` per subject (float32, as integrated).
    """

    gain: np.ndarray
    norm: float
    omega: np.ndarray
    bifurcation: np.ndarray
    subject_of_scan: np.ndarray

    def coupling(self, s, true_sc):
        """Coupling weights of subject ``s`` (float32, as integrated)."""
        return (self.gain[s][:, None] * true_sc / self.norm).astype(np.float32)


def _draw_dynamics(group, subjects, scans, rng, config):
    """Coupling gain, Hopf parameters and frequencies: every subject, then every scan."""
    n_net, net = len(group.network_names), group.network
    roi_freq = config.frequency_hz + config.frequency_roi_sd_hz * rng.standard_normal(len(net))
    sex_nets = [_network_index(k, n_net, "sex_networks") for k in config.sex_networks]
    dx_net = _network_index(config.diagnosis_network, n_net, "diagnosis_network")
    cond_net = _network_index(config.condition_network, n_net, "condition_network")
    shape = (len(subjects), len(net))
    gain, a_subject, omega = np.empty(shape), np.empty(shape), np.empty(shape, np.float32)
    response = np.empty(len(subjects))
    for s, row in enumerate(subjects.itertuples(index=False)):
        freq = (roi_freq + config.frequency_subject_sd_hz * rng.standard_normal(len(net))
                + config.frequency_network_sd_hz * rng.standard_normal(n_net)[net])
        if row.sex == "M":
            freq = freq + config.sex_frequency_hz * (
                (net == sex_nets[0]).astype(float) - (net == sex_nets[-1]).astype(float))
        a_subject[s] = (config.bifurcation
                        + config.excitability_network_sd * rng.standard_normal(n_net)[net])
        g = config.coupling * math.exp(config.coupling_sd * rng.standard_normal()
                                       - config.age_coupling * row.age_fmri)
        gain[s] = g * (1.0 - config.diagnosis_gain * row.severity * (net == dx_net))
        response[s] = config.condition_excitability * max(
            0.0, 1.0 + config.condition_response_sd * rng.standard_normal())
        omega[s] = 2 * math.pi * freq
    index = {subject: s for s, subject in enumerate(subjects["subject"])}
    subject_of_scan = scans["subject"].map(index).to_numpy()
    bifurcation = np.empty((len(scans), len(net)), dtype=np.float32)
    for j, (s, condition) in enumerate(zip(subject_of_scan, scans["condition"])):
        a_scan = a_subject[s] + config.excitability_session_sd * rng.standard_normal(n_net)[net]
        if condition == "post":
            a_scan = a_scan + response[s] * (net == cond_net)
        bifurcation[j] = a_scan
    return _Dynamics(gain=gain, norm=group.weights.sum(1).mean(), omega=omega,
                     bifurcation=bifurcation, subject_of_scan=subject_of_scan)


class _Couplings:
    """Each subject's coupling matrix, kept in memory or in an open scratch file."""

    def __init__(self, n_subjects, n_rois, scratch=None):
        self.shape = (n_subjects, n_rois, n_rois)
        self.scratch = scratch
        self.array = None if scratch is not None else np.empty(self.shape, dtype=np.float32)
        self.n = 0
        self.strength = np.empty(n_subjects)

    def append(self, coupling):
        if self.scratch is not None:
            self.scratch.write(coupling.tobytes())
        else:
            self.array[self.n] = coupling
        self.strength[self.n] = float(torch.as_tensor(coupling).sum(1).max())
        self.n += 1

    def take(self, subjects):
        """The coupling matrices of ``subjects`` (indices), as one float32 array."""
        if self.scratch is None:
            return self.array[subjects]
        self.scratch.flush()
        mapped = np.memmap(self.scratch, dtype=np.float32, mode="r", shape=self.shape)
        try:
            return np.array(mapped[subjects])
        finally:
            del mapped  # unmapped: the pages read do not stay in this process's memory


def _usable_cores():
    """Cores this process may run on (its CPU affinity where the platform tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _batches(site_of_scan, n_sites, max_batch):
    """``(site, part, scans)`` of every batch: each site's scans, ``max_batch`` at a time."""
    batches = []
    for k in range(n_sites):
        index = np.flatnonzero(site_of_scan == k)
        for part, start in enumerate(range(0, len(index), max_batch)):
            batches.append((k, part, index[start:start + max_batch]))
    return batches


def _waves(batches, max_scans):
    """Consecutive batches integrated together, at most ``max_scans`` scans per wave."""
    waves, size = [], 0
    for batch in batches:
        if waves and size + len(batch[2]) <= max_scans:
            waves[-1].append(batch)
            size += len(batch[2])
        else:
            waves.append([batch])
            size = len(batch[2])
    return waves


def _acquire(plan, couplings, *, progress, threads=None):
    """Yield ``(scan index, BOLD)`` of every scan: integrate the batches (several at once
    while they fit in ``max_batch`` scans), add site noise and scale, batch after batch."""
    config, dyn = plan.config, plan.dynamics
    if threads is None:
        threads = _usable_cores() >= 2
    batches = _batches(plan.scans["site_index"].to_numpy(), len(plan.site_trs), config.max_batch)
    steps = sum(_batch_steps(plan, couplings, k, rows) for k, _, rows in batches)
    with tqdm(total=steps, desc="simulating BOLD", unit="step", disable=not progress,
              mininterval=0.5) as bar, Workers(threads) as workers:
        for wave in _waves(batches, config.max_batch):
            groups = []
            for k, part, rows in wave:
                state = np.random.SeedSequence(plan.seed, spawn_key=(5, k, part)).generate_state(1)
                subjects = dyn.subject_of_scan[rows]
                groups.append(Group(coupling=torch.from_numpy(couplings.take(subjects)),
                                    bifurcation=torch.from_numpy(dyn.bifurcation[rows]),
                                    omega=torch.from_numpy(dyn.omega[subjects]),
                                    tr=plan.site_trs[k],
                                    generator=torch.Generator().manual_seed(int(state[0]))))
            clean = integrate(groups, n_timepoints=plan.n_timepoints, config=config,
                              progress=bar.update, workers=workers)
            for (k, _, rows), batch in zip(wave, clean):
                yield from _site_noise(batch, rows, k, plan.rng_acq, config)


def _batch_steps(plan, couplings, k, rows):
    """Integration steps of one batch (for the progress bar)."""
    strength = couplings.strength[plan.dynamics.subject_of_scan[rows]].max()
    _, per_tr, burn = integration_schedule(plan.site_trs[k], plan.n_timepoints, strength,
                                           plan.config)
    return burn + per_tr * plan.n_timepoints


def _site_noise(clean, rows, site, rng, config):
    """Yield ``(scan index, BOLD)``: ``clean`` with the site's noise and scale."""
    noise = config.site_noise[site % len(config.site_noise)]
    scale = config.site_scale[site % len(config.site_scale)]
    reference = float(np.median(clean.std(axis=2)))
    for j, i in enumerate(rows):
        noisy = clean[j] + noise * reference * rng.standard_normal(clean[j].shape)
        yield int(i), (scale * noisy).astype(np.float32)


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




@dataclass
class _Plan:
    """Everything drawn before the SC and the dynamics, and the streams left to draw."""

    group: GroupConnectome
    subjects: pd.DataFrame
    scans: pd.DataFrame
    dynamics: _Dynamics
    site_trs: tuple
    n_timepoints: int
    seed: int
    config: SimulationConfig
    source: dict
    rng_sc: np.random.Generator
    rng_acq: np.random.Generator


def _plan(*, n_subjects, n_rois, n_timepoints, n_networks, n_sites, site_trs, sessions, seed,
          config):
    config = config or SimulationConfig()
    n_subjects, n_rois, n_timepoints, n_networks, n_sites, site_trs = _check_arguments(
        n_subjects, n_rois, n_timepoints, n_networks, n_sites, site_trs, sessions)
    streams = np.random.SeedSequence(seed).spawn(5)
    rng_group, rng_subjects, rng_sc, rng_dyn, rng_acq = (np.random.default_rng(s)
                                                         for s in streams[:5])
    group = make_group_connectome(n_rois, n_networks, rng_group, config)
    subjects = draw_subjects(n_subjects, n_sites, rng_subjects, config)
    site_names = [f"site-{k + 1}" for k in range(n_sites)]
    conditions = ("pre", "post")[:sessions]
    scans = pd.DataFrame([
        {"subject": row.subject, "session": str(k + 1), "site": site_names[row.site],
         "site_index": row.site, "tr": site_trs[row.site], "age": row.age, "sex": row.sex,
         "score": row.score, "diagnosis": int(row.diagnosis), "condition": condition}
        for row in subjects.itertuples(index=False) for k, condition in enumerate(conditions)
    ])
    dynamics = _draw_dynamics(group, subjects, scans, rng_dyn, config)
    source = {"name": "simulated", "generator": "bsym.data.simulate", "seed": int(seed),
              "n_subjects": n_subjects, "n_rois": n_rois, "n_timepoints": n_timepoints,
              "n_networks": n_networks, "n_sites": n_sites, "site_trs": list(site_trs),
              "sessions": sessions, "config": config.to_dict()}
    return _Plan(group=group, subjects=subjects, scans=scans, dynamics=dynamics,
                 site_trs=site_trs, n_timepoints=n_timepoints, seed=seed, config=config,
                 source=source, rng_sc=rng_sc, rng_acq=rng_acq)


def _connectomes(plan, couplings):
    """Yield each subject's measured counts and lengths; keep its coupling in ``couplings``."""
    stream = connectome_stream(plan.group, plan.subjects, plan.rng_sc, plan.config)
    for s, (true_sc, counts, lengths) in enumerate(stream):
        couplings.append(plan.dynamics.coupling(s, true_sc))
        yield counts, lengths


def simulate(*, n_subjects=200, n_rois=100, n_timepoints=1200, n_networks=7, n_sites=3,
             site_trs=None, sessions=2, seed=0, config=None, progress=True,
             threads=None) -> SimulatedCohort:
    """Simulate a cohort in memory; see :func:`simulate_cohort` for the parameters."""
    plan = _plan(n_subjects=n_subjects, n_rois=n_rois, n_timepoints=n_timepoints,
                 n_networks=n_networks, n_sites=n_sites, site_trs=site_trs, sessions=sessions,
                 seed=seed, config=config)
    couplings = _Couplings(len(plan.subjects), plan.group.n_rois)
    counts, lengths = (np.stack(m) for m in zip(*_connectomes(plan, couplings)))
    bold = [None] * len(plan.scans)
    for i, series in _acquire(plan, couplings, progress=progress, threads=threads):
        bold[i] = series
    return SimulatedCohort(scans=plan.scans.drop(columns="site_index"), bold=bold,
                           subjects=plan.subjects, sc=counts, lengths=lengths, group=plan.group,
                           config=plan.config, source=plan.source)


def simulate_cohort(out, *, n_subjects=200, n_rois=100, n_timepoints=1200, n_networks=7,
                    n_sites=3, site_trs=None, sessions=2, seed=0, config=None,
                    overwrite=False, progress=True, roi_order="original", roi_seed=0,
                    threads=None):
    """Simulate the built-in cohort and write it as a cohort store.

    Subjects are written as they are simulated: memory does not grow with the cohort
    (the coupling matrices wait in a scratch file beside ``out``, deleted afterwards).

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
    threads : bool, optional
        Draw the neural noise and integrate the hemodynamics in two worker threads beside
        the oscillators (faster on two or more free cores; the same numbers either way).
        Default: when this process may run on two or more cores.

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
    plan = _plan(n_subjects=n_subjects, n_rois=n_rois, n_timepoints=n_timepoints,
                 n_networks=n_networks, n_sites=n_sites, site_trs=site_trs, sessions=sessions,
                 seed=seed, config=config)
    rois = plan.group.rois_table()
    preprocessing = {"units": "percent signal change x site scale",
                     "sc": "streamline counts", "lengths": "mm"}
    try:  # the coupling scratch file is written outside the store: its errors too
        with CohortWriter(out, source=plan.source, atlas=f"simulated-{plan.group.n_rois}",
                          preprocessing=preprocessing, overwrite=overwrite, roi_order=roi_order,
                          roi_seed=roi_seed) as writer, \
                tempfile.TemporaryFile(dir=out.parent, prefix=f".{out.name}.coupling-") as scratch:
            writer.set_rois(rois["name"], networks=rois["network"],
                            coords=rois[["x", "y", "z"]].to_numpy())
            couplings = _Couplings(len(plan.subjects), plan.group.n_rois, scratch)
            for subject, (counts, lengths) in zip(plan.subjects["subject"],
                                                  _connectomes(plan, couplings)):
                writer.add_matrix("sc", subject, counts)
                writer.add_matrix("lengths", subject, lengths)
            columns = {name: values.tolist() for name, values in
                       plan.scans.drop(columns="site_index").items()}
            for i, bold in _acquire(plan, couplings, progress=progress, threads=threads):
                writer.place_scan(i, bold=bold, **{k: v[i] for k, v in columns.items()})
    except OSError as err:
        raise disk_error(err, out, what="the cohort store") from err
    return open_cohort(out)
