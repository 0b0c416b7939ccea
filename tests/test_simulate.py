"""The built-in simulated cohort and the connectome features.

Mechanics (the store, determinism, arguments, features) run on small cohorts. The tests
of meaning (the dynamics, and every planted label read from the modality that carries it
and not from the other one) run on the cohort a user gets by default (the session fixture
``default_cohort``: 200 subjects x 100 ROIs x 1200 time points, two sessions, three sites)
at the simulator's default effect sizes (``SimulationConfig()``), with a plain linear model:
StandardScaler + logistic regression (AUROC) or ridge (Pearson r), 5-fold CV with the
sessions of a subject in one fold. Each threshold is commented with the value measured on
that cohort (seed 0) and, in brackets, on the default cohort of seeds 1 and 2.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bsym.data import CohortError, open_cohort
from bsym.data.features import (
    connectome_features,
    fc_matrix,
    fisher_z,
    log_sc,
    upper_triangle,
)
from bsym.data.simulate import (
    YEO7_NETWORKS,
    SimulationConfig,
    make_group_connectome,
    simulate,
    simulate_cohort,
    strength_neutral_pattern,
)

pytestmark = pytest.mark.usefixtures("one_blas_thread")
SMALL = dict(n_subjects=8, n_rois=20, n_timepoints=60, progress=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return simulate_cohort(tmp_path_factory.mktemp("sim") / "store", seed=3, **SMALL)


@pytest.fixture(scope="module")
def features(default_cohort):
    """FC (one row per scan) and SC (one row per subject) features of the default cohort."""
    fc, scans = connectome_features(default_cohort, "fc")
    sc, subjects = connectome_features(default_cohort, "sc")
    return {"fc": (fc, scans), "sc": (sc, subjects)}


# -- the store ----------------------------------------------------------------------------

def test_store_validates_with_labels_networks_and_shapes(store):
    cohort = open_cohort(store.path, verify=True)
    table = cohort.subjects
    assert len(table) == 2 * SMALL["n_subjects"]
    for column in ("subject", "session", "site", "tr", "age", "sex", "score", "diagnosis",
                   "condition"):
        assert column in table.columns
        assert table[column].notna().all()
    assert set(cohort.labels) >= {"age", "sex", "score", "diagnosis", "condition"}
    assert set(table["sex"]) <= {"F", "M"}
    assert set(table["diagnosis"]) <= {0, 1}
    assert sorted(table["condition"].unique()) == ["post", "pre"]
    assert (table.groupby("subject")["condition"].nunique() == 2).all()
    assert (table.groupby("subject")["age"].nunique() == 1).all()
    assert set(cohort.rois["network"]) == set(YEO7_NETWORKS)
    coords = cohort.rois[["x", "y", "z"]].to_numpy()
    assert np.abs(coords).max() < 100 and np.ptp(coords[:, 0]) > 60
    scan = cohort.scans[0]
    assert cohort.bold(scan).shape == (SMALL["n_rois"], SMALL["n_timepoints"])
    assert cohort.bold(scan).dtype == np.float32
    subject = table["subject"].iloc[0]
    assert cohort.sc(subject).shape == (SMALL["n_rois"],) * 2
    assert cohort.matrix("lengths", subject).shape == (SMALL["n_rois"],) * 2
    source = cohort.manifest["source"]
    assert source["seed"] == 3 and source["config"]["coupling"] == SimulationConfig().coupling


def test_sc_is_streamline_count_like(store):
    sc = np.stack([np.asarray(store.sc(s)) for s in store.subjects["subject"].unique()])
    assert (sc >= 0).all() and np.array_equal(sc, np.round(sc))
    assert np.allclose(sc, sc.transpose(0, 2, 1))
    lengths = np.asarray(store.matrix("lengths", store.subjects["subject"].iloc[0]))
    assert ((lengths > 0) == (sc[0] > 0)).all()


def test_same_seed_same_store(store, tmp_path):
    again = simulate_cohort(tmp_path / "again", seed=3, **SMALL)
    assert again.manifest["arrays"] == store.manifest["arrays"]
    other = simulate_cohort(tmp_path / "other", seed=4, **SMALL)
    digests = {v["sha256"] for v in other.manifest["arrays"].values()}
    assert not digests & {v["sha256"] for v in store.manifest["arrays"].values()}


def test_same_seed_identical_arrays():
    a, b = simulate(seed=5, **SMALL), simulate(seed=5, **SMALL)
    assert all(np.array_equal(x, y) for x, y in zip(a.bold, b.bold))
    assert np.array_equal(a.sc, b.sc) and a.scans.equals(b.scans)
    c = simulate(seed=6, **SMALL)
    assert not np.array_equal(a.sc, c.sc)
    assert not np.array_equal(a.bold[0], c.bold[0])


def test_existing_store_is_not_replaced_without_overwrite(store):
    with pytest.raises(CohortError, match="already exists"):
        simulate_cohort(store.path, **SMALL)


def test_store_holds_the_cohort_simulated_in_memory(store):
    sim = simulate(seed=3, **SMALL)
    cohort = open_cohort(store.path)
    order = cohort.rois["source_index"].to_numpy()
    for scan, bold in zip(cohort.scans, sim.bold):
        np.testing.assert_array_equal(cohort.bold(scan), bold[order])
    for subject, sc in zip(sim.subjects["subject"], sim.sc):
        np.testing.assert_array_equal(cohort.sc(subject), sc[np.ix_(order, order)])
    assert not list(store.path.parent.glob(".*coupling*"))  # the scratch file is gone


def test_batches_integrated_together_or_apart_give_the_same_scans():
    import torch

    from bsym.data.dynamics import Group, integrate

    config = SimulationConfig()
    rng = np.random.default_rng(0)

    def groups():  # three sites: different steps, lengths and batch sizes
        made = []
        for k, (tr, n) in enumerate(((0.72, 3), (2.0, 2), (0.8, 4))):
            coupling = rng.random((n, 10, 10)) / 10
            made.append(Group(torch.as_tensor(coupling + coupling.transpose(0, 2, 1),
                                              dtype=torch.float32),
                              torch.full((n, 10), -0.02), torch.full((n, 10), 0.3), tr,
                              torch.Generator().manual_seed(k)))
        return made

    state = rng.bit_generator.state
    apart = [integrate([g], n_timepoints=40, config=config, threads=False)[0] for g in groups()]
    rng.bit_generator.state = state
    together = integrate(groups(), n_timepoints=40, config=config)
    for a, b in zip(apart, together):
        np.testing.assert_array_equal(a, b)
    one = simulate(seed=9, sessions=1, threads=False, **SMALL)
    assert all(np.array_equal(a, b) for a, b in zip(one.bold, simulate(seed=9, sessions=1,
                                                                        **SMALL).bold))


def test_one_session_sites_and_trs():
    sim = simulate(sessions=1, n_sites=2, site_trs=(1.0, 2.5), **SMALL)
    assert list(sim.scans["condition"].unique()) == ["pre"]
    assert sim.scans.groupby("site")["tr"].unique().map(list).to_dict() == {
        "site-1": [1.0], "site-2": [2.5]}
    assert len(sim.bold) == SMALL["n_subjects"]


def test_progress_bar_over_integration_steps(capsys):
    simulate(n_subjects=2, n_rois=10, n_timepoints=20, n_sites=1, progress=True)
    assert "simulating BOLD" in capsys.readouterr().err


def test_generic_network_names():
    sim = simulate(n_networks=4, **SMALL)
    names = set(sim.group.rois_table()["network"])
    assert names == {"Network1", "Network2", "Network3", "Network4"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_rois=5, n_networks=7), "n_rois must be >= n_networks"),
    (dict(n_timepoints=1), "n_timepoints must be an integer >= 2"),
    (dict(n_subjects=0), "n_subjects must be an integer >= 1"),
    (dict(sessions=3), "sessions must be 1"),
    (dict(n_sites=2, site_trs=(0.72,)), "one TR per site"),
    (dict(site_trs=(0.72, 0.0, 2.0)), "0 < TR <= 30"),
])
def test_bad_arguments(kwargs, message):
    args = {**SMALL, **kwargs}
    with pytest.raises(ValueError, match=message):
        simulate(**args)


# -- the group connectome --------------------------------------------------------------------

def test_group_connectome_is_modular_and_heavy_tailed():
    group = make_group_connectome(100, 7, np.random.default_rng(0))
    w, edges = group.weights, group.edges
    assert np.allclose(w, w.T) and (w >= 0).all() and not np.diag(w).any()
    sizes = np.bincount(group.network)
    assert sizes.sum() == 100 and sizes.min() < sizes.max() / 2
    assert set(group.hemisphere) == {"LH", "RH"}
    assert (np.sign(group.coords[:, 0]) == np.where(group.hemisphere == "RH", 1, -1)).all()
    same = group.network[:, None] == group.network[None]
    off = ~np.eye(100, dtype=bool)
    assert edges[same & off].mean() > 2 * edges[~same].mean()
    log_w = np.log(w[edges])
    assert np.exp(log_w).max() / np.median(np.exp(log_w)) > 10
    assert np.corrcoef(log_w, group.distance[edges])[0, 1] < -0.2
    assert (group.lengths[edges] >= group.distance[edges] * 0.8).all()
    assert edges.sum(1).min() >= SimulationConfig().nearest_neighbours


def test_strength_neutral_pattern():
    group = make_group_connectome(40, 7, np.random.default_rng(1))
    pattern = strength_neutral_pattern(group.weights, np.random.default_rng(2))
    assert np.allclose(pattern, pattern.T)
    assert not pattern[~group.edges].any()
    assert np.sqrt(np.mean(pattern[group.edges] ** 2)) == pytest.approx(1.0)
    scale = np.abs(group.weights * pattern).sum(1)
    assert np.abs((group.weights * pattern).sum(1)).max() < 1e-6 * scale.max()


# -- the dynamics -----------------------------------------------------------------------------

@pytest.mark.slow
def test_fc_within_networks_exceeds_between(default_cohort):
    fc = np.mean([fc_matrix(np.asarray(default_cohort.bold(s))) for s in default_cohort.scans],
                 axis=0)
    net = default_cohort.rois["network"].to_numpy()
    same = (net[:, None] == net[None]) & ~np.eye(len(net), dtype=bool)
    within, between = fc[same].mean(), fc[net[:, None] != net[None]].mean()
    print(f"mean FC within networks {within:.3f}, between {between:.3f}")
    assert within > between + 0.08  # measured 0.340 vs 0.175 (0.336 vs 0.188, 0.344 vs 0.192)


@pytest.mark.slow
def test_structure_function_coupling(features):
    (fc, scans), (sc, subjects) = features["fc"], features["sc"]
    sc_of_scan = sc[subjects.set_index("subject").index.get_indexer(scans["subject"])]
    r = np.array([np.corrcoef(f, s)[0, 1] for f, s in zip(fc, sc_of_scan)])
    group = np.corrcoef(fc.mean(0), sc.mean(0))[0, 1]
    print(f"FC-SC r per scan: mean {r.mean():.3f}, min {r.min():.3f}; group {group:.3f}")
    assert r.mean() > 0.4   # measured 0.590 (0.576, 0.606); edges permuted: 0.00
    assert r.min() > 0.3    # measured 0.497 (0.457, 0.481); edges permuted: |r| < 0.05
    assert group > 0.5      # measured 0.662 (0.655, 0.696)


# -- planted labels -----------------------------------------------------------------------------

def _score(x, y, groups, kind, seed=0):
    """5-fold CV score with the sessions of a subject in one fold."""
    if kind == "binary":
        folds = StratifiedGroupKFold(5, shuffle=True, random_state=seed)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1e-3, max_iter=500))
    else:
        folds = GroupKFold(5, shuffle=True, random_state=seed)
        model = make_pipeline(StandardScaler(), Ridge(alpha=float(x.shape[1])))
    predicted = np.zeros(len(y))
    for train, test in folds.split(x, y, groups):
        model.fit(x[train], y[train])
        predicted[test] = (model.predict_proba(x[test])[:, 1] if kind == "binary"
                           else model.predict(x[test]))
    if kind == "binary":
        return roc_auc_score(y, predicted)
    return np.corrcoef(y, predicted)[0, 1]


def _shuffle(y, groups, within, rng):
    """Permute labels within subjects (``within``) or between subjects."""
    out = y.copy()
    subjects = np.unique(groups)
    donors = rng.permutation(subjects)
    for subject, donor in zip(subjects, donors):
        rows = groups == subject
        out[rows] = rng.permutation(y[rows]) if within else y[groups == donor][0]
    return out


def _task(features, label, modality):
    x, table = features[modality]
    if label == "condition":  # within subject: each subject's mean scan removed
        x = x.copy()
        for subject in table["subject"].unique():
            rows = (table["subject"] == subject).to_numpy()
            x[rows] -= x[rows].mean(0)
    values = table[label]
    if label == "sex":
        return x, (values == "M").to_numpy().astype(int), table, "binary"
    if label == "condition":
        return x, (values == "post").to_numpy().astype(int), table, "binary"
    kind = "binary" if label == "diagnosis" else "continuous"
    return x, values.to_numpy().astype(float), table, kind


#: Lowest score that counts as recovered, per (label, modality): AUROC for binary labels,
#: Pearson r for continuous ones. Measured on the default cohort, seed 0 (seeds 1, 2);
#: labels shuffled (3 per seed): AUROC 0.39-0.61, r -0.20-0.07.
RECOVERED = {
    ("age", "fc"): 0.35,        # r 0.579 (0.653, 0.692)
    ("age", "sc"): 0.35,        # r 0.516 (0.545, 0.609)
    ("sex", "fc"): 0.65,        # AUROC 0.798 (0.733, 0.722)
    ("score", "sc"): 0.35,      # r 0.556 (0.598, 0.552)
    ("diagnosis", "fc"): 0.65,  # AUROC 0.839 (0.760, 0.733)
    ("diagnosis", "sc"): 0.65,  # AUROC 0.832 (0.771, 0.783)
    ("condition", "fc"): 0.75,  # AUROC 0.903 (0.917, 0.896), within-subject shuffles <= 0.61
}


@pytest.mark.slow
@pytest.mark.parametrize("label, modality", list(RECOVERED))
def test_planted_label_is_recovered_by_its_modality(features, label, modality):
    x, y, table, kind = _task(features, label, modality)
    groups = table["subject"].to_numpy()
    real = _score(x, y, groups, kind)
    rng = np.random.default_rng(0)
    shuffled = [_score(x, _shuffle(y, groups, label == "condition", rng), groups, kind)
                for _ in range(3)]
    print(f"{label} from {modality}: {real:.3f}, shuffled {np.round(shuffled, 3)}")
    assert real > RECOVERED[label, modality], (label, modality, real)
    assert real > max(shuffled) + 0.15, (label, modality, real, shuffled)


@pytest.mark.slow
@pytest.mark.parametrize("label, modality, tolerance", [
    ("sex", "sc", 0.12),    # AUROC 0.437 (0.528, 0.478); from FC: 0.798
    ("score", "fc", 0.2),   # r 0.039 (-0.012, 0.025); from SC: 0.556
])
def test_label_not_carried_by_modality_is_near_chance(features, label, modality, tolerance):
    x, y, table, kind = _task(features, label, modality)
    score = _score(x, y, table["subject"].to_numpy(), kind)
    chance = 0.5 if kind == "binary" else 0.0
    print(f"{label} from {modality}: {score:.3f}")
    assert abs(score - chance) < tolerance, (label, modality, score)


# -- features -----------------------------------------------------------------------------------

def test_fc_matrix_matches_numpy():
    x = np.random.default_rng(0).standard_normal((2, 6, 50))
    fc = fc_matrix(x)
    assert np.allclose(fc[1], np.corrcoef(x[1]))
    assert fc.shape == (2, 6, 6)
    x[0, 2] = 3.0
    assert fc_matrix(x[0])[2, 0] == 0.0 and fc_matrix(x[0])[2, 2] == 1.0
    with pytest.raises(ValueError, match="ROIs x time"):
        fc_matrix(np.zeros(5))


def test_triangle_fisher_and_log():
    m = np.arange(16.0).reshape(4, 4)
    assert upper_triangle(m).tolist() == [1, 2, 3, 6, 7, 11]
    assert upper_triangle(np.stack([m, m]), k=0).shape == (2, 10)
    assert np.isfinite(fisher_z(np.array([-1.0, 0.0, 1.0]))).all()
    assert fisher_z(0.5) == pytest.approx(np.arctanh(0.5))
    assert log_sc(np.array([0.0, 9.0]), base=10).tolist() == pytest.approx([0.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        log_sc(np.array([-1.0]))
    with pytest.raises(ValueError, match="square"):
        upper_triangle(np.zeros((3, 4)))


def test_connectome_features_from_store(store):
    fc, rows = connectome_features(store, "fc")
    n = SMALL["n_rois"]
    assert fc.shape == (len(store.subjects), n * (n - 1) // 2)
    assert rows["scan"].tolist() == store.scans
    sc, rows = connectome_features(store, "sc")
    assert sc.shape == (SMALL["n_subjects"], n * (n - 1) // 2)
    assert rows["subject"].is_unique
    with pytest.raises(ValueError, match="kind"):
        connectome_features(store, "dti")
