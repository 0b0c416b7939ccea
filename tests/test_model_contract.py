"""The contract every registered model keeps, checked once for all of them.

Parametrised over :func:`bsym.models.available` (built-ins, installed plugins and the
tests' ``toy-mae``); each model is built at its ``tiny`` preset and fed a batch sized by
that preset (its ``n_rois`` and, where it fixes one, ``n_timepoints``). What a model's
loss means, its masks, views and published sizes are tested in its own test file.
"""

from __future__ import annotations

import inspect
import io
import math

import pytest
import torch
import toy_models  # noqa: F401  registers "toy-mae": the model list is the same in any test order

from bsym.data.dataset import WindowDataset
from bsym.models import BrainModel, Embeddings, available, build, get_spec
from bsym.testing import toy_batch, write_toy_store
from bsym.train import TrainConfig, train

B = 3             # samples per batch (BatchNorm needs 2)
FREE_WINDOW = 24  # time points for models whose preset fixes none (FC-based models)
PLAIN = (int, float, str, bool, type(None))
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_sizes(name):
    """``(n_rois, n_timepoints)`` of the tiny preset, constructor defaults filling gaps."""
    spec = get_spec(name)
    defaults = {key: p.default for key, p in inspect.signature(spec.factory).parameters.items()
                if p.default is not p.empty}
    config = {**defaults, **spec.presets["tiny"]}
    if config.get("n_rois") is None:
        pytest.fail(f"model {name!r}: its tiny preset (or constructor) must set n_rois")
    return config["n_rois"], config.get("n_timepoints") or FREE_WINDOW


def objective_of(name):
    factory = get_spec(name).factory
    return getattr(factory, "objective", None) or build(name).objective


MODELS = available()
SELF_SUPERVISED = [n for n in MODELS if objective_of(n) == "self_supervised"]
SUPERVISED = [n for n in MODELS if objective_of(n) == "supervised"]


def make(name, seed=0, **overrides):
    torch.manual_seed(seed)
    return build(name, **overrides)


def batch_for(name, n=B, seed=0):
    return toy_batch(n, *tiny_sizes(name), seed=seed)


def targets(model):
    """Labels of a batch: class indices, or ages for a regression model."""
    if model.config.get("task", "classification") == "classification":
        return torch.arange(B) % model.config["n_classes"]
    return torch.linspace(20.0, 40.0, B)


def objective_loss(model, batch, *, stage=None, seed=0):
    """The model's training loss; the global RNG (dropout) and masks seeded by ``seed``."""
    torch.manual_seed(seed)
    if model.objective == "supervised":
        return model.supervised_loss(batch, targets(model))
    return model.pretrain_loss(batch, generator=torch.Generator().manual_seed(seed), stage=stage)


def views(embeddings):
    return embeddings if isinstance(embeddings, dict) else {"": embeddings}


def assert_finite_scalar_with_gradients(loss, trained):
    assert loss.ndim == 0 and torch.isfinite(loss), loss
    loss.backward()
    grads = [p.grad for p in trained if p.grad is not None]
    assert grads, "no trained parameter got a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# -- building --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_builds_from_its_tiny_preset_and_rebuilds_from_its_config(name):
    model = make(name)
    assert isinstance(model, BrainModel)
    assert (model.name, model.preset) == (name, "tiny")
    assert model.config == get_spec(name).presets["tiny"]
    assert model.objective in ("self_supervised", "supervised")
    for key, value in model.config.items():  # plain values: checkpoints and logs hold them
        items = value if isinstance(value, (list, tuple)) else [value]
        assert all(isinstance(v, PLAIN) for v in items), (key, value)
    rebuilt = make(name, seed=1, **model.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    counts = model.param_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters()) > 0
    assert all(isinstance(v, int) and v >= 0 for v in counts.values())


# -- objectives ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SELF_SUPERVISED)
def test_every_pretraining_stage_gives_a_finite_scalar_and_gradients(name):
    model = make(name)
    stages = model.stages()
    assert stages and len(set(stages)) == len(stages)
    for stage in stages:
        model.zero_grad(set_to_none=True)
        loss = objective_loss(model, batch_for(name), stage=stage)
        assert_finite_scalar_with_gradients(loss, model.stage_parameters(stage))


@pytest.mark.parametrize("name", SUPERVISED)
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_supervised_models_train_on_either_task(name, task):
    # what the supervised protocol sets from the data (bsym.evaluate.supervised)
    model = make(name, task=task, **({"n_classes": 3} if task == "classification" else {}))
    if task == "regression":
        model.set_target_scaling(30.0, 10.0)
    batch = batch_for(name)
    assert model(batch).shape == (B, 3 if task == "classification" else 1)
    loss = objective_loss(model, batch)
    assert_finite_scalar_with_gradients(loss, model.stage_parameters("all"))


# -- outputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_embed_gives_the_documented_shapes(name):
    model = make(name).eval()
    n_rois, _ = tiny_sizes(name)
    with torch.no_grad():
        small, large = views(model.embed(batch_for(name))), views(model.embed(batch_for(name, B + 1)))
    assert small and small.keys() == large.keys()
    for view, e in small.items():
        assert isinstance(e, Embeddings), view
        assert e.subject.ndim == 2 and e.subject.shape[0] == B and e.subject.is_floating_point()
        assert large[view].subject.shape == (B + 1, e.subject.shape[1])  # width from config
        assert torch.isfinite(e.subject).all()
        if e.roi is not None:
            assert e.roi.ndim == 3 and e.roi.shape[:2] == (B, n_rois), view
            assert torch.isfinite(e.roi).all()


@pytest.mark.parametrize("name", MODELS)
def test_attention_maps_where_offered(name):
    model = make(name).eval()
    batch = batch_for(name)
    if type(model).attention is BrainModel.attention:
        with pytest.raises(NotImplementedError):
            model.attention(batch)
        return
    with torch.no_grad():
        maps = model.attention(batch)
    maps = maps if isinstance(maps, dict) else {"": maps}
    n_rois, _ = tiny_sizes(name)
    assert maps
    for key, value in maps.items():  # (B, ...) or (layers, B, ...), one axis per ROI
        assert B in value.shape[:2] and n_rois in value.shape[1:], (key, value.shape)
        assert torch.isfinite(value).all(), key


# -- determinism and state -------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_a_seed_fixes_the_weights_and_the_loss(name):
    a, b, other = make(name, seed=1), make(name, seed=1), make(name, seed=2)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert any(not torch.equal(value, other.state_dict()[key])
               for key, value in a.state_dict().items() if value.is_floating_point())
    batch = batch_for(name)
    assert torch.equal(objective_loss(a, batch, seed=5), objective_loss(b, batch, seed=5))
    if a.objective == "self_supervised":  # the masks come from the generator
        assert not torch.equal(objective_loss(a, batch, seed=5), objective_loss(a, batch, seed=6))


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip(name):
    model = make(name, seed=0)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    clone = make(name, seed=1, **model.config)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    batch = batch_for(name, seed=3)
    model.eval(), clone.eval()
    with torch.no_grad():
        ours, theirs = views(model.embed(batch)), views(clone.embed(batch))
    for view, e in ours.items():
        assert torch.equal(e.subject, theirs[view].subject), view
        assert e.roi is None or torch.equal(e.roi, theirs[view].roi), view
    assert torch.equal(objective_loss(model, batch, seed=2), objective_loss(clone, batch, seed=2))


# -- the training engine ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """``store(n_rois, n_timepoints)``: a 4-subject toy store of one window per scan."""
    made = {}

    def store(n_rois, n_timepoints):
        if (n_rois, n_timepoints) not in made:
            path = tmp_path_factory.mktemp("contract") / f"r{n_rois}t{n_timepoints}"
            made[n_rois, n_timepoints] = write_toy_store(path, n_subjects=4, n_rois=n_rois,
                                                         n_timepoints=n_timepoints)
        return made[n_rois, n_timepoints]

    return store


@pytest.mark.parametrize("name", MODELS)
def test_engine_training_is_reproducible(name, stores):
    n_rois, window = tiny_sizes(name)
    label = "sex" if objective_of(name) == "supervised" else None
    dataset = WindowDataset(stores(n_rois, window), window, labels=[label] if label else ())
    runs = []
    for _ in range(2):
        model = make(name, seed=3)
        config = TrainConfig(steps=max(2, len(model.stages())), batch_size=2, warmup_steps=0,
                             label=label, progress=False, device="cpu", seed=7)
        result = train(model, dataset, config)
        runs.append((result.history["loss"], model.state_dict()))
    (losses, state), (again, state_again) = runs
    assert losses == again and all(math.isfinite(v) for v in losses)
    for key, value in state.items():
        assert torch.equal(value, state_again[key]), key
    initial = make(name, seed=3).state_dict()
    assert any(not torch.equal(value, initial[key]) for key, value in state.items())
