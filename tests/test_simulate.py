"""The built-in simulated cohort and the connectome features."""

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
    fc_features,
    fc_matrix,
    fisher_z,
    log_sc,
    sc_features,
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

SMALL = dict(n_subjects=8, n_rois=20, n_timepoints=60, progress=False)
#: Larger effects than the defaults (calibrated for 100 ROIs x 1200 time points), so that
#: a 120-subject x 40-ROI x 300-point cohort carries every label clearly.
STRONG = SimulationConfig(
    age_latent_sd=0.4, age_sc_loss=0.4, age_coupling=0.25, sex_frequency_hz=0.02,
    score_sc=0.15, score_latent_sd=0.4, diagnosis_sc_loss=0.6, diagnosis_gain=0.4,
    condition_excitability=0.08,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return simulate_cohort(tmp_path_factory.mktemp("sim") / "store", seed=3, **SMALL)


@pytest.fixture(scope="module")
def cohort():
    """A cohort big enough to recover every planted label (about 3 s)."""
    return simulate(n_subjects=120, n_rois=40, n_timepoints=300, seed=11, config=STRONG,
                    progress=False)


@pytest.fixture(scope="module")
def features(cohort):
    fc = fc_features(np.stack(cohort.bold))
    sc = sc_features(cohort.sc)
    return fc, sc


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

def test_fc_within_networks_exceeds_between(cohort):
    fc = fc_matrix(np.stack(cohort.bold)).mean(0)
    net = cohort.group.network
    same = (net[:, None] == net[None]) & ~np.eye(len(net), dtype=bool)
    assert fc[same].mean() > fc[net[:, None] != net[None]].mean() + 0.05


def test_structure_function_coupling(cohort, features):
    fc, sc = features
    subject_of_scan = cohort.scans["subject"].map(
        {s: i for i, s in enumerate(cohort.subjects["subject"])}).to_numpy()
    r = [np.corrcoef(fc[i], sc[subject_of_scan[i]])[0, 1] for i in range(len(fc))]
    assert np.mean(r) > 0.2 and np.mean(np.array(r) > 0) > 0.95
    assert np.corrcoef(fc.mean(0), sc.mean(0))[0, 1] > 0.4


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


def _task(cohort, features, label, modality):
    fc, sc = features
    if modality == "sc":
        table, x = cohort.subjects, sc
    else:
        table, x = cohort.scans, fc
    if label == "condition":
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


@pytest.mark.parametrize("label, modality", [
    ("age", "fc"), ("age", "sc"), ("sex", "fc"), ("score", "sc"),
    ("diagnosis", "fc"), ("diagnosis", "sc"), ("condition", "fc"),
])
def test_planted_label_is_recovered_by_its_modality(cohort, features, label, modality):
    x, y, table, kind = _task(cohort, features, label, modality)
    groups = table["subject"].to_numpy()
    real = _score(x, y, groups, kind)
    rng = np.random.default_rng(0)
    shuffled = [_score(x, _shuffle(y, groups, label == "condition", rng), groups, kind)
                for _ in range(5)]
    chance = 0.5 if kind == "binary" else 0.0
    assert real > chance + 0.1, (label, modality, real)
    assert real > max(shuffled) + 0.05, (label, modality, real, shuffled)


@pytest.mark.parametrize("label, modality", [("sex", "sc"), ("score", "fc")])
def test_label_not_carried_by_modality_is_near_chance(cohort, features, label, modality):
    x, y, table, kind = _task(cohort, features, label, modality)
    score = _score(x, y, table["subject"].to_numpy(), kind)
    chance = 0.5 if kind == "binary" else 0.0
    assert abs(score - chance) < 0.2, (label, modality, score)


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
