"""BrainSymphony encodes a subject's SC once per run of windows sharing it, bit for bit."""

from __future__ import annotations

import pytest
import torch

from bsym.evaluate.embeddings import compute_embeddings
from bsym.models import build
from bsym.models.brainsymphony import model as model_module
from bsym.testing import toy_batch, write_toy_store

R, T = 12, 24
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(n_rois=R, n_timepoints=T, **overrides):
    torch.manual_seed(0)
    return build("brainsymphony", n_rois=n_rois, n_timepoints=n_timepoints, **overrides)


def shared_sc_batch():
    """Six windows whose SC repeats in runs (0, 0, 0), (1, 1), (0): three runs."""
    batch = toy_batch(6, R, T, seed=1)
    batch["sc"] = toy_batch(2, R, T, seed=2)["sc"][[0, 0, 0, 1, 1, 0]]
    return batch


def encoded_sizes(model):
    """Batch sizes the SC encoder receives (a list filled by a forward hook)."""
    sizes = []
    model.sc.register_forward_hook(lambda module, args, out: sizes.append(len(args[0])))
    return sizes


def no_sharing(monkeypatch):
    """Every sample its own run: the SC encoder sees the whole batch, as before sharing."""
    monkeypatch.setattr(model_module, "_sc_runs",
                        lambda a: (torch.arange(len(a)), torch.arange(len(a))))


def assert_same_bits(x, y):
    assert x.dtype == y.dtype and x.shape == y.shape
    assert torch.equal(x.view(torch.int32), y.view(torch.int32))


def test_sc_runs_are_bitwise_consecutive_repeats():
    a = torch.zeros(5, 3, 3)
    a[2, 0, 1] = 1.0
    a[3, 0, 1] = 1.0
    a[4, 0, 1] = -0.0  # equal to 0.0 as a number, not as bits
    first, run = model_module._sc_runs(a)
    assert first.tolist() == [0, 2, 4]
    assert run.tolist() == [0, 0, 1, 1, 2]


@pytest.mark.parametrize("method", ["embed", "attention"])
def test_shared_sc_is_encoded_once_per_run_with_identical_outputs(method, monkeypatch):
    model = tiny().eval()
    sizes = encoded_sizes(model)
    batch = shared_sc_batch()
    with torch.no_grad():
        shared = getattr(model, method)(batch)
        no_sharing(monkeypatch)
        reference = getattr(model, method)(batch)
    assert sizes == [3, 6]
    assert shared.keys() == reference.keys() and "sc" in shared
    for name, value in shared.items():
        if method == "embed":
            assert_same_bits(value.subject, reference[name].subject)
            assert_same_bits(value.roi, reference[name].roi)
        else:
            assert_same_bits(value, reference[name])


@pytest.mark.parametrize("mode", ["train", "grad"])
def test_training_and_gradients_encode_every_window(mode):
    model = tiny().train(mode == "train")
    sizes = encoded_sizes(model)
    with torch.no_grad() if mode == "train" else torch.enable_grad():
        model.embed(shared_sc_batch())
    model.pretrain_loss(shared_sc_batch(), generator=torch.Generator().manual_seed(0))
    assert sizes == [6, 6]


@pytest.mark.parametrize("structure, position", [("first_hop", "learnable"),
                                                 ("diffusion", "laplacian")])
def test_embeddings_of_a_store_are_the_same_with_and_without_sharing(structure, position,
                                                                      tmp_path, monkeypatch):
    cohort = write_toy_store(tmp_path / "toy", n_subjects=4, sessions=2)
    model = tiny(n_rois=8, n_timepoints=20, sc_structure=structure, sc_position=position,
                 sc_position_dim=4)
    sizes = encoded_sizes(model)
    shared = compute_embeddings(model, cohort, window=20, batch_size=5, progress=False)
    shared_sizes = sizes.copy()
    sizes.clear()
    no_sharing(monkeypatch)
    reference = compute_embeddings(model, cohort, window=20, batch_size=5, progress=False)
    # the last call of each encodes the all-zero input of the position-only embeddings
    assert sum(shared_sizes[:-1]) < sum(sizes[:-1]) == reference.scans["n_windows"].sum()
    assert shared.views.keys() == reference.views.keys() == {"fmri", "sc", "fusion"}
    for name, arrays in shared.views.items():
        for level, value in arrays.items():
            expected = reference.views[name][level]
            assert value.dtype == expected.dtype and value.shape == expected.shape
            assert value.tobytes() == expected.tobytes(), (name, level)
