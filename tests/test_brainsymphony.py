"""BrainSymphony: interface, objectives, exactness of the fast kernels, sizes."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bsym.models import build, get_spec, masking
from bsym.models.brainsymphony.perceiver import conv_windows, factorised_cell_attention
from bsym.models.brainsymphony.signed_graph import (
    signed_attention,
    signed_attention_weights,
    structure_matrices,
)
from bsym.models.gradients import fc_gradients, group_fc, laplacian_eigenvectors
from bsym.testing import toy_batch

R, T = 12, 24
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_batch(b=3, n_rois=R, n_timepoints=T, seed=0, sc=True):
    """ROIs mixing three shared rhythms (masked cells are predictable) and a sparse SC."""
    return toy_batch(b, n_rois, n_timepoints, sc=sc, seed=seed)


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return build("brainsymphony", n_rois=R, n_timepoints=T, **overrides)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- interface ------------------------------------------------------------------------------
def test_views_have_the_documented_shapes():
    model = tiny().eval()
    views = model.embed(make_batch())
    assert set(views) == {"fmri", "sc", "fusion"}
    for e in views.values():
        assert e.subject.shape == (3, 32) and e.roi.shape == (3, R, 32)
        torch.testing.assert_close(e.subject, e.roi.mean(dim=1))
    assert set(model.embed(make_batch(sc=False))) == {"fmri"}  # fMRI-only use of the fusion model
    assert set(tiny(branches="fmri").embed(make_batch())) == {"fmri"}
    assert set(tiny(branches="sc").embed(make_batch())) == {"sc"}


def test_attention_maps():
    model = tiny().eval()
    maps = model.attention(make_batch(b=2))
    assert maps["spatial"].shape == (2, 2, 2, R, R)
    assert maps["perceiver_roi"].shape == (2, 2, R, R)
    assert maps["perceiver_time"].shape == (2, 2, R, T)
    torch.testing.assert_close(maps["perceiver_roi"].sum(-1), torch.ones(2, 2, R))
    torch.testing.assert_close(maps["perceiver_time"].sum(-1), torch.ones(2, 2, R))
    assert maps["sc"].shape == (2, 2, 2, R, R)
    assert maps["gate"].shape == (2, R, 32)


@pytest.mark.parametrize("branches", ["fmri", "sc"])  # "both": tests/test_model_contract.py
def test_every_stage_of_one_branch_gives_a_finite_scalar(branches):
    model = tiny(branches=branches)
    assert model.stages() == (("encoders",) if branches == "sc" else
                              ("encoders", "perceiver", "joint"))
    for stage in model.stages():
        loss = model.pretrain_loss(make_batch(), generator=gen(), stage=stage)
        assert loss.ndim == 0 and torch.isfinite(loss)


def test_stage_parameters_and_frozen_encoders():
    model = tiny()
    assert model.stages() == ("encoders", "perceiver", "joint")
    encoders = {id(p) for p in model.stage_parameters("encoders")}
    perceiver = {id(p) for p in model.stage_parameters("perceiver")}
    assert encoders and perceiver and not encoders & perceiver
    for stage in model.stages():  # each stage's parameters, and only they, get gradients
        model.zero_grad(set_to_none=True)
        model.pretrain_loss(make_batch(), generator=gen(), stage=stage).backward()
        listed = {id(p) for p in model.stage_parameters(stage)}
        with_grad = {id(p) for p in model.parameters() if p.grad is not None}
        assert listed == with_grad, stage
    assert model.gate.gate.weight.grad is not None  # the joint stage trains the gate
    assert encoders | perceiver | {id(p) for p in model.gate.parameters()} == \
        {id(p) for p in model.parameters()}
    with pytest.raises(ValueError, match="unknown stage 'perceiver'.*stages: encoders"):
        tiny(branches="sc").pretrain_loss(make_batch(), stage="perceiver")


def test_loss_falls_within_a_few_steps():
    model = tiny()
    batch = make_batch(b=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = model.pretrain_loss(batch, generator=gen(1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_state_dict_round_trip_keeps_gradients_buffer():
    model = tiny(spatial_position="gradient")
    model.set_gradients(torch.randn(R, 10))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(99)
    clone = build("brainsymphony", **model.config)
    clone.load_state_dict(torch.load(buffer))
    batch = make_batch()
    model.eval(), clone.eval()
    for name, view in model.embed(batch).items():
        torch.testing.assert_close(clone.embed(batch)[name].roi, view.roi, rtol=0, atol=0)


def test_input_validation_names_expected_and_received():
    model = tiny()
    with pytest.raises(ValueError, match=r"\(B, 12, 24\).*received shape \(3, 12, 20\)"):
        model.embed(make_batch(n_timepoints=20, sc=False))
    with pytest.raises(ValueError, match=r"\(B, 12, 12\).*received shape \(3, 10, 10\)"):
        model.embed({**make_batch(), "sc": torch.zeros(3, 10, 10)})
    with pytest.raises(ValueError, match="needs SC.*branches='fmri'"):
        model.pretrain_loss(make_batch(sc=False), stage="joint")
    with pytest.raises(ValueError, match="no 'sc'"):
        tiny(branches="sc").embed(make_batch(sc=False))
    with pytest.raises(ValueError, match="dim .* divisible"):
        build("brainsymphony", dim=30, heads=4)
    with pytest.raises(ValueError, match="branches must be one of"):
        build("brainsymphony", branches="eeg")
    with pytest.raises(ValueError, match="mask_ratio"):
        build("brainsymphony", mask_ratio=1.5)


def test_gradient_positional_encoding_from_group_fc():
    rng = np.random.default_rng(0)
    series = [rng.standard_normal((R, 80)) for _ in range(4)]
    for method in ("diffusion", "pca"):
        g = fc_gradients(group_fc(series), 10, method=method)
        assert g.shape == (R, 10) and np.isfinite(g).all()
    model = tiny(spatial_position="gradient")
    with pytest.raises(RuntimeError, match="set_gradients"):
        model.embed(make_batch())
    model.set_gradients(g)
    assert model.spatial.position.alpha.item() == pytest.approx(0.1)
    assert torch.isfinite(model.pretrain_loss(make_batch(), generator=gen()))


def test_laplacian_position_and_structures_run():
    a = make_batch()["sc"]
    vec = laplacian_eigenvectors(a, 5)
    assert vec.shape == (3, R, 5)
    torch.testing.assert_close(vec.transpose(1, 2) @ vec, torch.eye(5).expand(3, 5, 5),
                               atol=1e-4, rtol=0)
    for structure in ("multi_hop", "diffusion"):
        model = tiny(sc_position="laplacian", sc_structure=structure, sc_position_dim=5)
        assert torch.isfinite(model.pretrain_loss(make_batch(), generator=gen()))


# -- masking and leakage ----------------------------------------------------------------------
def test_masks_are_exact_and_seeded():
    m = masking.fmri_masks(4, R, T, 0.25, gen(0))
    assert (m["roi"].sum(1) == 3).all() and (m["time"].sum(1) == 6).all()
    assert (m["cell"].flatten(1).sum(1) == round(0.25 * R * T)).all()
    assert torch.equal(m["union"], m["cell"] | m["roi"][:, :, None] | m["time"][:, None, :])
    assert torch.equal(masking.fmri_masks(4, R, T, 0.25, gen(0))["cell"], m["cell"])
    e = masking.edge_mask(2, R, 0.2, gen(0))
    assert torch.equal(e, e.transpose(1, 2)) and not e.diagonal(dim1=1, dim2=2).any()
    assert (e.flatten(1).sum(1) == 2 * round(0.2 * R * (R - 1) / 2)).all()


def test_masked_edge_targets_never_reach_the_predictions():
    model = tiny(branches="sc", sc_position="laplacian", sc_position_dim=4).eval()
    a = make_batch()["sc"]
    hidden = masking.edge_mask(3, R, 0.2, gen(2))
    pred, target = model.predict_masked_edges(a, hidden)
    assert pred.shape == target.shape == (3 * round(0.2 * R * (R - 1) / 2),)
    noise = torch.rand(a.shape, generator=gen(3))
    changed = torch.where(hidden, (noise + noise.transpose(1, 2)) * 4, a)
    pred2, target2 = model.predict_masked_edges(changed, hidden)
    torch.testing.assert_close(pred2, pred, rtol=0, atol=0)
    assert not torch.equal(target2, target)
    # the full objective draws the same mask from the same seed and, whatever the hidden
    # values, decodes the same predictions: only the targets move
    hidden = model._edge_mask(a, gen(4))
    changed = torch.where(hidden, changed.flip(0), a)
    pred, _ = model.predict_masked_edges(a, hidden)
    _, target = model.predict_masked_edges(changed, hidden)
    loss = model.pretrain_loss({"sc": changed}, generator=gen(4))
    torch.testing.assert_close(loss, F.mse_loss(pred, target))


def test_fmri_reconstruction_ignores_masked_values():
    model = tiny(branches="fmri").eval()
    batch = make_batch(sc=False)
    masks = masking.fmri_masks(3, R, T, 0.15, gen(7))
    latents = model._fmri_latents(batch["bold"], masks)[0]
    noisy = torch.where(masks["union"], batch["bold"] + 5.0, batch["bold"])
    torch.testing.assert_close(model._fmri_latents(noisy, masks)[0], latents, rtol=0, atol=0)


# -- signed attention ------------------------------------------------------------------------
def naive_signed(q, k, v, w):
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) * w
    p = torch.sign(s) * torch.exp(s.abs()) / torch.exp(s.abs()).sum(-1, keepdim=True)
    return p @ v, p


def signed_inputs(dtype=torch.float64):
    g = gen(11)
    q, k, v = (torch.randn(2, 2, 6, 4, generator=g, dtype=dtype, requires_grad=True)
               for _ in range(3))
    w = torch.randn(2, 1, 6, 6, generator=g, dtype=dtype)
    w = torch.where(w.abs() < 0.6, torch.zeros((), dtype=dtype), w)  # absent and negative edges
    return q, k, v, w


def test_signed_attention_matches_naive_reference():
    q, k, v, w = signed_inputs()
    out, _ = naive_signed(q, k, v, w)
    ours = signed_attention(q, k, v, w)
    torch.testing.assert_close(ours, out)
    grads = torch.autograd.grad(ours.square().sum(), (q, k, v))
    expected = torch.autograd.grad(out.square().sum(), (q, k, v))
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b)
    torch.autograd.gradcheck(signed_attention, (q, k, v, w), fast_mode=True)


def test_signed_attention_gives_absent_edges_zero_weight():
    q, k, _, w = signed_inputs()
    p = signed_attention_weights(q, k, w)
    absent = (w == 0).expand_as(p)
    assert absent.any() and (p[absent] == 0).all()
    assert (p[~absent] != 0).all()
    _, reference = naive_signed(q, k, k, w)
    torch.testing.assert_close(p, reference)


def test_signed_attention_is_finite_for_huge_scores():
    q, k, v, w = signed_inputs(torch.float32)
    big = (q.detach() * 1e4).requires_grad_()
    assert not torch.isfinite(naive_signed(big, k, v, w)[0]).all()  # the naive form overflows
    out = signed_attention(big, k, v, w)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(big.grad).all()
    assert torch.isfinite(signed_attention_weights(big, k, w)).all()


def test_chunked_edge_head_equals_plain_autograd():
    model = tiny(branches="sc").double()
    head = model.edge_head
    head.chunk = 7  # several chunks, the last one partial
    h = torch.randn(2, R, 32, dtype=torch.float64, requires_grad=True)
    b, i, j = (masking.edge_mask(2, R, 0.2, gen(9)) & torch.ones(R, R, dtype=torch.bool)
               .triu(1)).nonzero(as_tuple=True)
    ours, reference = head(h, b, i, j), head.reference(h, b, i, j)
    torch.testing.assert_close(ours, reference)
    params = [h, *head.parameters()]
    for a, c in zip(torch.autograd.grad(ours.square().sum(), params),
                    torch.autograd.grad(reference.square().sum(), params)):
        torch.testing.assert_close(a, c)


def test_structure_matrices_keep_the_masked_edges_out():
    a = make_batch()["sc"]
    hidden = masking.edge_mask(3, R, 0.2, gen(1))
    w = structure_matrices(masking.remove_edges(a, hidden))[0]
    assert (w[:, 0][hidden] == 0).all()


# -- the factorised Perceiver cross-attention ---------------------------------------------------
def test_factorised_cell_softmax_is_exact_and_differentiable():
    g = gen(12)
    shapes = [(2, 2, 3, 5), (2, 2, 3, 4), (2, 2, 3, 3), (2, 5, 4, 3)]
    a_roi, a_time, q_cell, cells = (torch.randn(s, generator=g, dtype=torch.float64,
                                                requires_grad=True) for s in shapes)
    logits = a_roi[..., :, None] + a_time[..., None, :] + torch.einsum(
        "bhqk,brtk->bhqrt", q_cell, cells)
    p = torch.softmax(logits.flatten(-2), -1).view_as(logits)
    for budget in (1, 40, 1 << 20):  # one key ROI per chunk, a few, all at once
        p_roi, p_time, p_cell = factorised_cell_attention(a_roi, a_time, q_cell, cells, budget)
        torch.testing.assert_close(p_roi, p.sum(-1))
        torch.testing.assert_close(p_time, p.sum(-2))
        torch.testing.assert_close(p_cell, torch.einsum("bhqrt,brtk->bhqk", p, cells))
        torch.autograd.gradcheck(lambda *x, b=budget: factorised_cell_attention(*x, b),
                                 (a_roi, a_time, q_cell, cells), fast_mode=True)
    huge = factorised_cell_attention(a_roi * 1e4, a_time * 1e4, q_cell, cells, 40)
    assert all(torch.isfinite(x).all() for x in huge)


def naive_cross_attention(perceiver, context, queries, roi_emb, time_emb, x):
    """The textbook form: concatenate [roi | time | conv] per cell, project, attend."""
    b, r, t = x.shape
    conv = context(x)                                                     # (B, R, T, C)
    cells = torch.cat([roi_emb[:, :, None].expand(b, r, t, -1),
                       time_emb[:, None].expand(b, r, t, -1), conv], dim=-1).flatten(1, 2)
    tokens = perceiver.cell_in(cells)                                     # (B, R*T, d)
    h, dh = perceiver.heads, perceiver.head_dim
    q = perceiver.q(queries).unflatten(-1, (h, dh)).transpose(1, 2)
    k = perceiver.k(tokens).unflatten(-1, (h, dh)).transpose(1, 2)
    v = perceiver.v(tokens).unflatten(-1, (h, dh)).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
    return perceiver.out((weights @ v).transpose(1, 2).flatten(2))


@pytest.mark.parametrize("impl", ["factorised", "sdpa"])
def test_perceiver_attention_equals_the_materialised_form(impl):
    model = tiny(branches="fmri", chunk_elements=500).double()
    perceiver, context = model.perceiver, model.context
    perceiver.attention_impl = impl
    g = gen(13)
    x = torch.randn(2, R, T, generator=g, dtype=torch.float64)
    roi_emb = torch.randn(2, R, 32, generator=g, dtype=torch.float64)
    time_emb = torch.randn(2, T, 32, generator=g, dtype=torch.float64)
    queries = torch.randn(2, R, 32, generator=g, dtype=torch.float64)
    ours, _ = perceiver.cross_attention(queries, roi_emb, time_emb, x, context.weight,
                                        context.conv.bias)
    reference = naive_cross_attention(perceiver, context, queries, roi_emb, time_emb, x)
    torch.testing.assert_close(ours, reference)
    params = [perceiver.cell_in.weight, perceiver.k.weight, perceiver.v.bias,
              context.conv.weight, context.conv.bias]
    for a, b in zip(torch.autograd.grad(ours.square().sum(), params),
                    torch.autograd.grad(reference.square().sum(), params)):
        torch.testing.assert_close(a, b)


def test_context_conv_windows_match_the_convolution():
    model = tiny(branches="fmri")
    x = torch.randn(2, R, T)
    features = model.context(x)
    windows = conv_windows(x, 5)
    torch.testing.assert_close(windows @ model.context.weight.T + model.context.conv.bias,
                               features, atol=1e-5, rtol=1e-5)


# -- size ------------------------------------------------------------------------------------------
PAPER = {"fmri": 3.6e6, "sc": 2.0e6, "both": 5.6e6}


@pytest.mark.parametrize("branches", sorted(PAPER))
def test_paper_preset_parameter_counts_within_15_percent(branches):
    with torch.device("meta"):  # sizes only: nothing allocated
        model = build("brainsymphony", preset="paper", branches=branches)
    total = model.param_counts()["total"]
    assert abs(total - PAPER[branches]) / PAPER[branches] < 0.15, total
    assert get_spec("brainsymphony").presets["paper"]["n_rois"] == 450


def test_mse_only_on_masked_entries():
    model = tiny(branches="fmri")
    batch = make_batch(sc=False)
    masks = masking.fmri_masks(3, R, T, model.mask_ratio, gen(8))
    latents = model._fmri_latents(batch["bold"], masks)[0]
    recon = model.perceiver.reconstruct(latents)
    expected = F.mse_loss(recon[masks["union"]], batch["bold"][masks["union"]])
    got = model.pretrain_losses(batch, generator=gen(8), stage="perceiver")["fmri_cells"]
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("stage", ["encoders", "perceiver", "joint"])
def test_bf16_autocast_on_cpu_runs_every_stage(stage):
    # the chunked edge head reuses float32 buffers: autocast must not hand it bf16 inputs
    model = tiny()
    batch = make_batch(b=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.pretrain_loss(batch, generator=gen(), stage=stage)
    loss.float().backward()
    reference = tiny().pretrain_loss(batch, generator=gen(), stage=stage)
    assert abs(loss.item() - reference.item()) < 0.05 * reference.item()
    assert all(torch.isfinite(p.grad).all() for p in model.stage_parameters(stage)
               if p.grad is not None)
