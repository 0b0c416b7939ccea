"""Supervised baselines (BNT, BrainNetCNN, BrainGNN, transformer) and connectome + linear."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from conftest import write_toy_store
from sklearn.exceptions import NotFittedError

from bsym.data.dataset import WindowDataset
from bsym.data.features import fc_matrix
from bsym.models import build, get_spec
from bsym.models.bnt import orthonormal_rows
from bsym.models.braingnn import pooling_scores
from bsym.models.heads import pearson_fc
from bsym.train.engine import TrainConfig, train

torch.set_num_threads(1)

R, T = 16, 40
NEURAL = ("bnt", "brainnetcnn", "braingnn", "transformer")
# Parameter counts (millions) the BrainSymphony paper lists for the baselines
# (shared/reference/brainsymphony_hcpa.csv, params_millions).
PUBLISHED_M = {"bnt": 17.0, "brainnetcnn": 2.0, "transformer": 4.4, "braingnn": 4.0}


def planted(n=24, n_classes=2, task="classification", seed=0, n_rois=R, n_timepoints=T):
    """Noise series where the label sets which block of 4 ROIs shares a common signal
    (classification) or how strongly block 0 shares it (regression)."""
    gen = torch.Generator().manual_seed(seed)
    bold = torch.randn(n, n_rois, n_timepoints, generator=gen)
    common = torch.randn(n, 1, n_timepoints, generator=gen)
    if task == "classification":
        y = torch.arange(n) % n_classes
        for i in range(n):
            block = slice(4 * int(y[i]), 4 * int(y[i]) + 4)
            bold[i, block] += 1.5 * common[i]
    else:
        y = torch.rand(n, generator=gen)
        bold[:, :4] += 2.0 * y.view(n, 1, 1) * common
    a = torch.rand(n, n_rois, n_rois, generator=gen)
    sc = torch.log1p(10 * (a + a.transpose(1, 2)))
    return {"bold": bold, "sc": sc, "subject": [f"s{i}" for i in range(n)]}, y


def tiny(name, seed=0, **overrides):
    torch.manual_seed(seed)
    return build(name, **overrides)


# -- registry and sizes -----------------------------------------------------------------------
def test_every_baseline_is_registered_with_tiny_and_paper_presets():
    for name in (*NEURAL, "connectome"):
        spec = get_spec(name)
        assert {"tiny", "paper"} <= set(spec.presets)
        assert spec.presets["paper"]["n_rois"] == 450
        model = build(name)
        assert model.name == name and model.preset == "tiny"
        assert model.objective == ("none" if name == "connectome" else "supervised")


@pytest.mark.parametrize("name", ["bnt", "brainnetcnn", "transformer"])
def test_paper_presets_match_the_published_sizes(name):
    total = build(name, preset="paper").param_counts()["total"]
    assert abs(total / 1e6 - PUBLISHED_M[name]) <= 0.15 * PUBLISHED_M[name], total


def test_braingnn_size_at_450_rois_is_the_public_configuration():
    # 0.17M: far below the ~4M the BrainSymphony paper lists (see the BrainGNN docstring).
    assert build("braingnn", preset="paper").param_counts()["total"] == 169_282


# -- interface --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NEURAL)
@pytest.mark.parametrize("task, n_classes", [("classification", 3), ("regression", None)])
def test_outputs_have_the_documented_shapes(name, task, n_classes):
    model = tiny(name, task=task, n_classes=n_classes).eval()
    batch, y = planted(6, n_classes or 2, task)
    n_out = 3 if task == "classification" else 1
    assert model(batch).shape == (6, n_out)
    assert model.predict(batch).shape == (6,)
    if task == "classification":
        torch.testing.assert_close(model.predict_proba(batch).sum(-1), torch.ones(6))
    loss = model.supervised_loss(batch, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    e = model.embed(batch)
    assert e.subject.ndim == 2 and e.subject.shape[0] == 6
    assert e.roi.shape[:2] == (6, R)


def test_attention_maps():
    batch, _ = planted(3)
    maps = tiny("bnt").eval().attention(batch)
    assert maps["layers"].shape == (2, 3, 4, R, R)
    torch.testing.assert_close(maps["layers"].sum(-1), torch.ones(2, 3, 4, R))
    assert maps["assignment"].shape == (3, R, 4)
    assert tiny("transformer").eval().attention(batch)["layers"].shape == (2, 3, 4, R, R)
    scores = tiny("braingnn").eval().attention(batch)["roi_scores"]
    assert scores.shape == (3, R) and ((scores > 0) & (scores < 1)).all()
    with pytest.raises(NotImplementedError):
        tiny("brainnetcnn").attention(batch)


@pytest.mark.parametrize("name", NEURAL)
def test_sc_input(name):
    batch, y = planted(4)
    model = tiny(name, input="sc").eval()
    assert model(batch).shape == (4, 2)
    with pytest.raises(ValueError, match="needs batch\\['sc'\\]"):
        model({"bold": batch["bold"]})


def test_transformer_readouts():
    batch, _ = planted(4)
    concat = tiny("transformer", readout="concat", reduce_dim=3).eval()
    assert concat.embed(batch).subject.shape == (4, 3 * R)
    assert tiny("transformer").eval().embed(batch).subject.shape == (4, R)


@pytest.mark.parametrize("name", NEURAL)
def test_wrong_shapes_name_expected_and_received(name):
    model = tiny(name)
    bad, _ = planted(2, n_rois=R + 1)
    with pytest.raises(ValueError, match=f"\\(B, {R}, T >= 2\\).*received shape \\(2, {R + 1}, "):
        model(bad)
    batch, _ = planted(2)
    with pytest.raises(ValueError, match="expected targets of shape \\(2,\\)"):
        model.supervised_loss(batch, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="class indices must lie in \\[0, 2\\)"):
        model.supervised_loss(batch, torch.tensor([0, 2]))


@pytest.mark.parametrize("name, kwargs, message", [
    ("bnt", {"heads": 3}, "heads \\(3\\) must divide n_rois \\(16\\)"),
    ("bnt", {"n_clusters": 17}, "must not exceed n_rois"),
    ("transformer", {"readout": "max"}, "readout must be one of"),
    ("brainnetcnn", {"e2e_channels": (8, 0)}, "e2e_channels\\[1\\] must be an int >= 1"),
    ("braingnn", {"pool_ratio": 1.0}, "pool_ratio must lie in"),
    ("braingnn", {"task": "ordinal"}, "task must be one of"),
    ("bnt", {"n_classes": 1}, "n_classes must be an int >= 2"),
])
def test_bad_arguments_are_refused(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(name, **kwargs)


# -- learning, determinism, state ---------------------------------------------------------------
@pytest.mark.parametrize("name", NEURAL)
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_loss_falls_on_a_planted_signal(name, task):
    batch, y = planted(16, task=task)
    model = tiny(name, task=task)
    if task == "regression":
        model.set_target_scaling(float(y.mean()), float(y.std()))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = model.supervised_loss(batch, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", NEURAL)
def test_deterministic_per_seed_and_state_dict_round_trip(name):
    batch, y = planted(6)
    a, b, c = tiny(name, seed=1), tiny(name, seed=1), tiny(name, seed=2)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert torch.equal(a.supervised_loss(batch, y), b.supervised_loss(batch, y))
    assert not torch.equal(a.eval()(batch), c.eval()(batch))
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    c.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(c.eval()(batch), a.eval()(batch), rtol=0, atol=0)


def test_regression_target_scaling_round_trips():
    batch, y = planted(6, task="regression")
    model = tiny("transformer", task="regression")
    model.set_target_scaling(40.0, 10.0)
    other = tiny("transformer", task="regression", seed=5)
    other.load_state_dict(model.state_dict())
    model.eval()
    other.eval()
    torch.testing.assert_close(other.predict(batch), model.predict(batch))
    assert abs(float(model.predict(batch).mean()) - 40.0) < 30.0
    with pytest.raises(ValueError, match="regression models only"):
        tiny("bnt").set_target_scaling(0.0, 1.0)


@pytest.mark.parametrize("name", NEURAL)
def test_supervised_training_through_the_engine(tmp_path, name):
    cohort = write_toy_store(tmp_path / "toy", n_subjects=6, n_rois=8, n_timepoints=40)
    data = WindowDataset(cohort, 20, labels=["sex"])
    model = tiny(name, n_rois=8)
    result = train(model, data, TrainConfig(steps=3, batch_size=4, label="sex", warmup_steps=0,
                                            progress=False, log_every=1))
    assert len(result.history["loss"]) == 3
    assert all(np.isfinite(result.history["loss"]))


def test_engine_regression_label(tmp_path):
    cohort = write_toy_store(tmp_path / "toy", n_subjects=6, n_rois=8, n_timepoints=40)
    data = WindowDataset(cohort, 20, labels=["age"])
    model = tiny("brainnetcnn", n_rois=8, task="regression")
    model.set_target_scaling(27.5, 5.0)
    result = train(model, data, TrainConfig(steps=2, batch_size=4, label="age",
                                            warmup_steps=0, progress=False))
    assert np.isfinite(result.final_loss)


# -- pieces ---------------------------------------------------------------------------------------
def test_pearson_fc_matches_numpy():
    bold = torch.randn(3, 6, 20, dtype=torch.float64)
    bold[1, 2] = 4.0  # a constant ROI
    torch.testing.assert_close(pearson_fc(bold), torch.from_numpy(fc_matrix(bold.numpy())))


def test_ocread_centres_start_orthonormal():
    centres = orthonormal_rows(5, 9)
    torch.testing.assert_close(centres @ centres.T, torch.eye(5), atol=1e-6, rtol=0)
    model = tiny("bnt")
    c = model.readout.centres
    assert not c.requires_grad
    torch.testing.assert_close(c @ c.T, torch.eye(4), atol=1e-6, rtol=0)


def test_braingnn_graph_convolution_and_regularisers():
    model = tiny("braingnn").eval()
    batch, y = planted(4)
    graphs = model.graphs(model.connectivity(batch))
    assert graphs.num_graphs == 4 and graphs.num_nodes == 4 * R
    assert graphs.edge_index.shape[1] == 4 * R * model.k_neighbours
    conv = model.convs[0]
    roi = graphs.roi
    explicit = torch.einsum("ni,nio->no", graphs.x, conv.node_kernels(roi))
    torch.testing.assert_close(conv.transform(graphs.x, roi), explicit, atol=1e-5, rtol=1e-5)
    h = conv(graphs.x, graphs.edge_index, graphs.edge_attr, roi)
    assert len(model.pools[0](h, graphs.edge_index, graphs.edge_attr, graphs.batch)[4]) == 4 * 8
    torch.testing.assert_close(  # the scores we regularise are those TopKPooling ranks
        pooling_scores(model.pools[0], h).view(4, R).sort(1, descending=True).values[:, :8],
        model.pools[0](h, graphs.edge_index, graphs.edge_attr, graphs.batch)[5].view(4, 8))
    terms = model.regularisers(batch, y)
    assert set(terms) == {"unit", "topk", "consistency"}
    assert all(torch.isfinite(v) and v >= 0 for v in terms.values())
    plain = tiny("braingnn", unit_weight=0.0, topk_weight=0.0, consistency_weight=0.0).eval()
    regularised = tiny("braingnn").eval()
    difference = regularised.supervised_loss(batch, y) - plain.supervised_loss(batch, y)
    expected = 0.1 * sum(terms.values())
    torch.testing.assert_close(difference, expected, atol=1e-5, rtol=1e-5)
    same = torch.full((3, 5), 0.3)
    assert float(model.consistency_loss(same, torch.tensor([0, 0, 1]))) == 0.0


# -- connectome + linear ----------------------------------------------------------------------
def test_connectome_cannot_be_pretrained_or_trained_by_the_engine(tmp_path):
    model = build("connectome", n_rois=8)
    cohort = write_toy_store(tmp_path / "toy", n_subjects=4, n_rois=8, n_timepoints=40)
    data = WindowDataset(cohort, 20)
    with pytest.raises(ValueError, match="objective 'none'"):
        train(model, data, TrainConfig(steps=1, batch_size=2, progress=False))
    with pytest.raises(TypeError, match="call model.fit"):
        model.supervised_loss({}, None)
    with pytest.raises(TypeError, match="no pretraining"):
        model.pretrain_loss({})


def test_connectome_beats_chance_on_a_planted_fc_signal():
    train_batch, y_train = planted(60, seed=1)
    test_batch, y_test = planted(40, seed=2)
    model = build("connectome").fit(train_batch, y_train.numpy())
    assert model.score(test_batch, y_test.numpy()) > 0.8
    proba = model.predict_proba(test_batch)
    assert proba.shape == (40, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert model.decision_function(test_batch).shape == (40,)
    assert set(model.predict(test_batch)) <= {0, 1}


def test_connectome_text_labels_and_regression():
    batch, y = planted(40, seed=3)
    names = np.array(["ctrl", "patient"])[y.numpy()]
    model = build("connectome").fit(batch, names)
    assert list(model.classes_) == ["ctrl", "patient"]
    assert set(model.predict(batch)) <= {"ctrl", "patient"}
    reg_train, y_train = planted(60, task="regression", seed=4)
    reg_test, y_test = planted(40, task="regression", seed=5)
    ridge = build("connectome", task="regression").fit(reg_train, y_train.numpy())
    r = np.corrcoef(ridge.predict(reg_test), y_test.numpy())[0, 1]
    assert r > 0.5, r
    with pytest.raises(ValueError, match="task='classification'"):
        ridge.predict_proba(reg_test)


def test_connectome_regularisation_is_chosen_on_inner_folds_of_the_training_data():
    batch, y = planted(36, seed=6)
    batch["subject"] = [f"s{i // 2}" for i in range(36)]  # two windows per subject
    model = build("connectome").fit(batch, y.numpy())
    fitted = model.estimator_                              # the scikit-learn estimator
    grid = fitted.param_grid_
    assert fitted.cv_scores_.shape == (len(grid), 3)
    assert fitted.best_param_ == grid[np.argmax(fitted.cv_scores_.mean(1))]
    assert fitted.pipeline_.named_steps["model"].C == fitted.best_param_
    subjects = np.asarray(batch["subject"])
    seen = np.zeros(36, dtype=int)
    for tr, va in fitted.cv_splits_:
        assert not set(subjects[tr]) & set(subjects[va])  # no subject straddles a split
        assert max(tr.max(), va.max()) < 36                # indices into the training data
        seen[va] += 1
    assert (seen == 1).all()


def test_tangent_reference_comes_from_training_subjects_only():
    train_batch, y_train = planted(30, seed=7)
    test_a, _ = planted(10, seed=8)
    test_b, _ = planted(10, seed=9)
    model = build("connectome", features="tangent").fit(train_batch, y_train.numpy())
    reference = model.estimator_.features_.measure_.mean_.copy()
    first = model.embed(test_a).subject
    mixed = {k: (list(v[:5]) + list(test_b[k][5:]) if k == "subject" else
                 torch.cat([v[:5], test_b[k][5:]])) for k, v in test_a.items()}
    model.predict(test_b)
    np.testing.assert_array_equal(model.estimator_.features_.measure_.mean_, reference)
    # a test subject's features do not depend on which other test subjects come along
    torch.testing.assert_close(model.embed(mixed).subject[:5], first[:5])
    refit = build("connectome", features="tangent").fit(train_batch, y_train.numpy())
    np.testing.assert_array_equal(refit.estimator_.features_.measure_.mean_, reference)
    with pytest.raises(NotFittedError, match="fit the model on training subjects first"):
        build("connectome", features="tangent").embed(test_a)


def test_connectome_feature_kinds_and_embeddings():
    batch, y = planted(12, seed=10)
    edges = R * (R - 1) // 2
    for features, width in (("fc", edges), ("partial", edges), ("sc", edges),
                            ("fc+sc", 2 * edges)):
        e = build("connectome", features=features).embed(batch)
        assert e.subject.shape == (12, width) and e.subject.dtype == torch.float32
        assert e.roi is None
    assert build("connectome", features="tangent").fit(batch, y.numpy()).embed(
        batch).subject.shape == (12, R * (R + 1) // 2)
    np.testing.assert_allclose(build("connectome", features="sc").transform(batch)[0],
                               batch["sc"][0].numpy()[np.triu_indices(R, 1)], rtol=1e-6)
    scans = {"bold": [np.random.default_rng(0).normal(size=(R, t)) for t in (30, 50, 70)]}
    assert build("connectome").transform(scans).shape == (3, edges)  # scans of any length


def test_connectome_checks_its_inputs_and_round_trips_by_pickle():
    batch, y = planted(20, seed=11)
    model = build("connectome")
    with pytest.raises(ValueError, match="expects 16 ROIs; received 17"):
        model.fit(planted(20, n_rois=17)[0], y.numpy())
    with pytest.raises(ValueError, match="needs 'sc'"):
        build("connectome", features="fc+sc").fit({"bold": batch["bold"]}, y.numpy())
    with pytest.raises(NotFittedError, match="not fitted yet"):
        model.predict(batch)
    model.fit(batch, y.numpy())
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.predict_proba(batch), model.predict_proba(batch))
    assert model.param_counts()["total"] == R * (R - 1) // 2 + 1
