"""bsym's fit/transform/predict classes are scikit-learn estimators: check_estimator, clone,
Pipeline, GridSearchCV, cross_val_score; connectivity by nilearn equals the old numbers."""

from __future__ import annotations

import numpy as np
import pytest
from nilearn.connectome import ConnectivityMeasure
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from bsym.data.features import ConnectomeFeatures, fc_matrix, fisher_z, upper_triangle
from bsym.data.preprocess import RobustScaler
from bsym.evaluate.embeddings import feature_embeddings
from bsym.evaluate.rowspace import BinaryLogistic, RowSpace
from bsym.models.linear import ConnectomeClassifier, ConnectomeRegressor
from bsym.testing import write_toy_store

ESTIMATORS = [
    RobustScaler(),
    ConnectomeFeatures(),
    ConnectomeFeatures(kind="partial correlation"),
    ConnectomeFeatures(kind="tangent"),
    ConnectomeClassifier(Cs=(0.1, 1.0), inner_folds=3),
    ConnectomeRegressor(alphas=(1.0, 10.0), inner_folds=3),
    RowSpace(),
    BinaryLogistic(),
]

# A scan is a (time points x ROIs) table, so check_estimator's 2-D arrays reach
# ConnectomeFeatures as one scan: one output row, not one per input row. Only the checks
# that need a row per input row fail (strictly: one that passes fails the test); every
# other check runs on those tables.
ONE_SCAN = ("a 2-D array is one scan (time points x ROIs): its rows are time points, not "
            "samples, and it gives one row of connectivity")
SCAN_CHECKS = ("check_transformer_general", "check_transformer_data_not_an_array",
               "check_methods_sample_order_invariance", "check_methods_subset_invariance",
               "check_transformers_unfitted_stateless")


def expected_failed_checks(estimator):
    if isinstance(estimator, ConnectomeFeatures):
        return dict.fromkeys(SCAN_CHECKS, ONE_SCAN)
    return {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks,
                         xfail_strict=True)  # a listed check that passes is an error
def test_scikit_learn_compatible(estimator, check):
    check(estimator)


# -- data ----------------------------------------------------------------------------------
def planted_scans(n=24, n_rois=6, n_timepoints=60, seed=0):
    """Scans (n, time, ROIs) whose class sets which pair of ROIs shares a signal."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    scans = rng.normal(size=(n, n_timepoints, n_rois))
    common = rng.normal(size=(n, n_timepoints))
    for i in range(n):
        scans[i, :, 2 * y[i]:2 * y[i] + 2] += 2.0 * common[i, :, None]
    return scans * 3.0 + 10.0, y


def old_fc_matrix(bold):
    """bsym's hand-rolled Pearson FC before nilearn computed it (ROIs x time)."""
    x = np.asarray(bold, dtype=np.float64)
    x = x - x.mean(axis=-1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=-1, keepdims=True))
    x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    r = np.clip(x @ np.swapaxes(x, -1, -2), -1.0, 1.0)
    diagonal = np.arange(r.shape[-1])
    r[..., diagonal, diagonal] = 1.0
    return r


# -- scikit-learn composition --------------------------------------------------------------
PIPELINES = {
    # estimator under test: (pipeline, a parameter grid of it, data kind)
    "RobustScaler": (lambda: make_pipeline(RobustScaler(), ConnectomeFeatures(),
                                           LogisticRegression()),
                     {"robustscaler__quantile_range": [(25.0, 75.0), (10.0, 90.0)]}, "scans"),
    "ConnectomeFeatures": (lambda: make_pipeline(ConnectomeFeatures(), StandardScaler(),
                                                 LogisticRegression()),
                           {"connectomefeatures__kind": ["correlation", "tangent"]}, "scans"),
    "ConnectomeClassifier": (lambda: make_pipeline(
        RobustScaler(), ConnectomeClassifier(ConnectomeFeatures(), Cs=(0.1, 1.0),
                                             inner_folds=3)),
        {"connectomeclassifier__Cs": [(0.1,), (0.1, 1.0)]}, "scans"),
    "ConnectomeRegressor": (lambda: make_pipeline(StandardScaler(), ConnectomeRegressor(
        alphas=(1.0, 10.0), inner_folds=3)), {"connectomeregressor__inner_folds": [2, 3]},
        "table"),
    "RowSpace": (lambda: make_pipeline(StandardScaler(), RowSpace(), LogisticRegression()),
                 {"rowspace__tol": [1e-10, 1e-6]}, "wide"),
    "BinaryLogistic": (lambda: make_pipeline(StandardScaler(), RowSpace(), BinaryLogistic()),
                       {"binarylogistic__C": [0.1, 1.0]}, "wide"),
}


def _data(kind):
    scans, y = planted_scans()
    if kind == "scans":
        return scans, y
    features = ConnectomeFeatures().fit_transform(scans)          # 15 edges
    if kind == "wide":
        rng = np.random.default_rng(1)
        return np.hstack([features, rng.normal(size=(len(y), 40))]), y  # features > rows
    return features, features[:, 0] - features[:, -1]              # a regression target


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_in_pipeline_grid_search_and_cross_val_score(name):
    make, grid, kind = PIPELINES[name]
    x, y = _data(kind)
    pipeline = make()
    assert any(type(step).__name__ == name for _, step in pipeline.steps)
    scores = cross_val_score(pipeline, x, y, cv=3)
    assert np.isfinite(scores).all()
    assert scores.mean() > (0.8 if is_classifier(pipeline) else 0.5), scores
    search = GridSearchCV(make(), grid, cv=3).fit(x, y)
    assert search.best_params_.keys() == grid.keys()
    assert search.predict(x[:4]).shape == (4,)
    refit = clone(search.best_estimator_)            # clones unfitted, same parameters
    assert refit.get_params().keys() == search.best_estimator_.get_params().keys()
    with pytest.raises(NotFittedError):
        refit.predict(x[:4])
    assert is_classifier(pipeline) or is_regressor(pipeline)


def test_estimators_clone_with_their_parameters_and_refuse_unfitted_use():
    scans, y = planted_scans(12)
    for estimator in ESTIMATORS:
        copy = clone(estimator.set_params())
        assert copy.get_params() == estimator.get_params() and copy is not estimator
    with pytest.raises(NotFittedError):
        ConnectomeFeatures(kind="tangent").transform(scans)
    with pytest.raises(NotFittedError):
        ConnectomeClassifier().predict(scans.reshape(12, -1))
    # stateless kinds transform each scan on its own, before fit as after
    np.testing.assert_array_equal(ConnectomeFeatures().transform(scans),
                                  ConnectomeFeatures().fit(scans[:2]).transform(scans))


# -- input forms ---------------------------------------------------------------------------
def test_scans_as_a_stack_a_list_or_one_table_give_the_same_numbers():
    scans, _ = planted_scans(5)
    ragged = [scans[0], scans[1][:40], scans[2][:50]]          # lengths may differ
    for kind in ("correlation", "partial correlation", "tangent"):
        features = ConnectomeFeatures(kind=kind).fit(scans)
        stacked = features.transform(scans)
        np.testing.assert_allclose(features.transform(list(scans)), stacked)
        np.testing.assert_allclose(features.transform(scans[3]), stacked[3:4])
        assert features.transform(ragged).shape == (3, stacked.shape[1])
    scaler = RobustScaler().fit(ragged)
    pooled = RobustScaler().fit(np.concatenate(ragged))        # one table of every time point
    np.testing.assert_array_equal(scaler.center_, pooled.center_)
    np.testing.assert_array_equal(scaler.scale_, pooled.scale_)
    assert scaler.n_scans_ == 3 and scaler.n_features_in_ == 6
    out = scaler.transform(ragged)
    assert isinstance(out, list) and [o.shape for o in out] == [r.shape for r in ragged]
    assert scaler.transform(scans).shape == scans.shape and scaler.transform(scans).dtype == np.float32
    np.testing.assert_array_equal(scaler.transform(scans)[1], scaler.transform(scans[1]))
    np.testing.assert_array_equal(scaler.scale_windows(scans[1].T), scaler.transform(scans[1]).T)


def test_wrong_scans_are_refused_with_the_reason():
    scans, _ = planted_scans(4)
    fitted = ConnectomeFeatures(kind="tangent").fit(scans)
    with pytest.raises(ValueError, match="X has 5 features, but ConnectomeFeatures is expecting 6"):
        fitted.transform(scans[:, :, :5])
    with pytest.raises(ValueError, match="scan 1 has 1 dimension"):
        ConnectomeFeatures().fit([scans[0], scans[1][0]])
    with pytest.raises(ValueError, match="received no scans"):
        RobustScaler().fit([])
    with pytest.raises(ValueError, match="kind must be one of"):
        ConnectomeFeatures(kind="covariance").fit(scans)
    with pytest.raises(ValueError, match="expected .*6 ROIs"):
        RobustScaler().fit(scans).scale_windows(scans[0])     # time x ROIs, not ROIs x time


# -- nilearn's ConnectivityMeasure gives the numbers bsym computed by hand -------------------
def test_connectivity_measure_equals_the_previous_numbers():
    rng = np.random.default_rng(0)
    bold = rng.normal(size=(5, 9, 40))                  # scans x ROIs x time, bsym's layout
    bold[1, 3] = 2.0                                    # a constant ROI correlates 0
    np.testing.assert_allclose(fc_matrix(bold), old_fc_matrix(bold), rtol=0, atol=1e-14)
    assert fc_matrix(bold)[1, 3, 0] == 0.0 and fc_matrix(bold)[1, 3, 3] == 1.0
    tables = np.swapaxes(bold, 1, 2)
    old_fc = fisher_z(upper_triangle(old_fc_matrix(bold)))
    np.testing.assert_allclose(ConnectomeFeatures().fit_transform(tables), old_fc,
                               rtol=0, atol=1e-12)
    # partial correlations and the tangent space were nilearn's before: same calls, same
    # numbers (the partial ones Fisher-z)
    before = ConnectivityMeasure(kind="partial correlation", vectorize=True,
                                 discard_diagonal=True).fit_transform(list(tables))
    np.testing.assert_array_equal(
        ConnectomeFeatures(kind="partial correlation").fit_transform(tables), fisher_z(before))
    reference = ConnectivityMeasure(kind="tangent", vectorize=True).fit(list(tables[:3]))
    np.testing.assert_array_equal(
        ConnectomeFeatures(kind="tangent").fit(tables[:3]).transform(tables),
        reference.transform(list(tables)))
    # pinned before the change: Pearson r of ROIs 0 and 1 of scan 0, the old formula's value
    np.testing.assert_allclose(fc_matrix(bold)[0, 0, 1], old_fc_matrix(bold)[0, 0, 1])


def test_the_connectome_baseline_embeddings_keep_their_numbers(tmp_path):
    store = write_toy_store(tmp_path / "toy", n_subjects=6, n_timepoints=30)
    emb = feature_embeddings(store, "fc")
    old = np.stack([fisher_z(old_fc_matrix(np.asarray(store.bold(s))))
                    for s in emb.scans["scan"]])
    diagonal = np.arange(old.shape[-1])
    old[:, diagonal, diagonal] = 0.0
    np.testing.assert_allclose(emb.views["fc"]["subject"], upper_triangle(old).astype(np.float32),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(emb.views["fc"]["roi"], old.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_the_classifier_fits_tangent_and_sc_features_side_by_side():
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import FunctionTransformer

    from bsym.data.features import sc_vectors

    scans, y = planted_scans(18, n_rois=6)
    rng = np.random.default_rng(2)
    a = rng.random(size=(18, 6, 6))
    sc = np.log1p(10 * (a + np.swapaxes(a, 1, 2)))
    table = pd.DataFrame({"bold": pd.Series(list(scans), dtype=object),
                          "sc": pd.Series(list(sc), dtype=object)})
    features = ColumnTransformer([("bold", ConnectomeFeatures(kind="tangent"), "bold"),
                                  ("sc", FunctionTransformer(sc_vectors), "sc")])
    model = ConnectomeClassifier(features, Cs=(0.1, 1.0), inner_folds=3).fit(table, y)
    tangent = model.features_.named_transformers_["bold"]
    expected = np.hstack([tangent.transform(scans), upper_triangle(sc)])
    np.testing.assert_allclose(model.features_.transform(table), expected)
    assert model.score(table, y) > 0.8


def test_the_probes_unvalidated_path_fits_the_same_and_still_checks_the_width():
    import sklearn

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 50)), np.arange(30) % 2
    checked = make_pipeline(RowSpace(), BinaryLogistic()).fit(x, y)
    with sklearn.config_context(assume_finite=True):      # as in the probe's inner search
        trusted = make_pipeline(RowSpace(), BinaryLogistic()).fit(x, y)
        np.testing.assert_array_equal(trusted.predict_proba(x), checked.predict_proba(x))
        with pytest.raises(ValueError, match="X has 49 features, but RowSpace is expecting 50"):
            trusted.predict(x[:, :49])
        with pytest.raises(ValueError, match="needs exactly 2 classes, received 3"):
            BinaryLogistic().fit(x, np.arange(30) % 3)
