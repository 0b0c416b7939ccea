"""BrainSymphony's CPU fast paths: the opt-in fused kernels and bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from bsym.models import build
from bsym.models.brainsymphony import fused
from bsym.models.brainsymphony.perceiver import (
    conv_windows,
    factorised_cell_attention,
    fused_cell_attention,
)
from bsym.models.brainsymphony.signed_graph import EdgeHead, signed_attention
from bsym.testing import toy_batch

R, T = 12, 24
STAGES = ("encoders", "perceiver", "joint")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def kernels():
    """The fused kernels, built once (about 30 s the first time on a machine)."""
    try:
        return fused.extension()
    except RuntimeError as err:
        pytest.skip(f"the fused kernels cannot be built here: {err}")


def rel_err(out, ref):
    return float((out - ref).norm() / ref.norm())


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return build("brainsymphony", n_rois=R, n_timepoints=T, **overrides)


def loss_and_grads(model, stage, autocast=False, seed=1):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model.pretrain_loss(toy_batch(4, R, T, sc=True, seed=seed),
                                   generator=torch.Generator().manual_seed(7), stage=stage)
    loss.float().backward()
    grads = torch.cat([p.grad.flatten() for p in model.stage_parameters(stage)
                       if p.grad is not None])
    return loss.item(), grads


def run(fn, inputs, grads):
    """Outputs and input gradients of ``fn`` at leaf copies of ``inputs``."""
    leaves = [x.clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    out = out if isinstance(out, tuple) else (out,)
    torch.autograd.backward(out, grads)
    return [o.detach() for o in out] + [x.grad for x in leaves]


# -- fused kernels ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kernel", [1, 3, 5, 9])
def test_fused_cell_attention_matches_the_chunked_kernel(kernels, kernel):
    gen = torch.Generator().manual_seed(kernel)
    b, h, n_q, n_r, n_t = 2, 2, 7, 9, 13
    inputs = [torch.randn(b, h, n_q, n_r, generator=gen) * 2,
              torch.randn(b, h, n_q, n_t, generator=gen) * 2,
              torch.randn(b, h, n_q, kernel, generator=gen)]
    inputs[0][..., 0] -= 30   # the first ROI far below the rest: the reference is raised
    cells = conv_windows(torch.randn(b, n_r, n_t, generator=gen), kernel)
    grads = [torch.randn_like(x) for x in inputs]
    # a budget of 50 logits: several chunks and rescalings in the reference
    want = run(lambda *a: factorised_cell_attention(*a, cells, 50), inputs, grads)
    got = run(lambda *a: fused_cell_attention(*a, cells), inputs, grads)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("w_heads", [1, 3])
def test_fused_signed_attention_matches_the_default_kernel(kernels, w_heads):
    gen = torch.Generator().manual_seed(w_heads)
    b, h, n, d = 2, 3, 11, 4
    inputs = [torch.randn(b, h, n, d, generator=gen) for _ in range(3)]
    # absent (zero) and negative entries: zero weight, and subtracted neighbours
    w = torch.randn(b, w_heads, n, n, generator=gen)
    w = w * (torch.rand(b, w_heads, n, n, generator=gen) > 0.4)
    grads = [torch.randn(b, h, n, d, generator=gen)]
    want = run(lambda q, k, v: signed_attention(q, k, v, w), inputs, grads)
    got = run(lambda q, k, v: signed_attention(q, k, v, w, fused=True), inputs, grads)
    for g, x in zip(got, want):
        assert rel_err(g, x) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_fused_model_trains_like_the_default(kernels, stage):
    want_loss, want = loss_and_grads(tiny(sc_structure="multi_hop"), stage)
    got_loss, got = loss_and_grads(tiny(sc_structure="multi_hop", attention="fused"), stage)
    assert abs(got_loss - want_loss) < 1e-5 * abs(want_loss)
    assert rel_err(got, want) < 1e-5


@pytest.mark.slow
def test_fused_model_embeds_and_maps_like_the_default(kernels):
    batch = toy_batch(3, R, T, sc=True, seed=2)
    default, fast = tiny().eval(), tiny(attention="fused").eval()
    with torch.no_grad():
        want, got = default.embed(batch), fast.embed(batch)
    for view in want:
        assert rel_err(got[view].roi, want[view].roi) < 1e-5
    maps_want, maps_got = default.attention(batch), fast.attention(batch)
    for name in maps_want:
        torch.testing.assert_close(maps_got[name], maps_want[name], rtol=1e-4, atol=1e-6)


def test_without_a_compiler_fused_runs_the_default_kernels_with_a_warning(monkeypatch):
    def no_compiler():
        raise RuntimeError("attention='fused' builds C++ kernels on first use ...: no c++")

    monkeypatch.setattr(fused, "extension", no_compiler)
    fused.available.cache_clear()
    try:
        want = loss_and_grads(tiny(), "joint")
        with pytest.warns(RuntimeWarning, match=r"no c\+\+\. Running the default kernels"):
            got = loss_and_grads(tiny(attention="fused"), "joint")
        assert got[0] == want[0] and torch.equal(got[1], want[1])
    finally:
        fused.available.cache_clear()


def test_fused_rejects_an_unsupported_context_kernel():
    cells = conv_windows(torch.randn(1, 3, 8), 11)
    x = torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 2, 8), torch.zeros(1, 1, 2, 11)
    with pytest.raises(ValueError, match="context kernels"):
        fused_cell_attention(*x, cells)


# -- bf16 autocast on CPU ---------------------------------------------------------------
@pytest.mark.parametrize("stage", STAGES)
def test_bf16_autocast_loss_and_gradients_track_fp32_on_cpu(stage):
    model = tiny()
    fp32_loss, fp32 = loss_and_grads(model, stage)
    bf16_loss, bf16 = loss_and_grads(model, stage, autocast=True)
    assert abs(bf16_loss - fp32_loss) / abs(fp32_loss) < 2e-2
    assert rel_err(bf16, fp32) < 5e-2


@pytest.mark.slow
def test_bf16_autocast_with_the_fused_kernels_tracks_fp32(kernels):
    model = tiny(attention="fused")
    fp32_loss, fp32 = loss_and_grads(model, "joint")
    bf16_loss, bf16 = loss_and_grads(model, "joint", autocast=True)
    assert abs(bf16_loss - fp32_loss) / abs(fp32_loss) < 2e-2
    assert rel_err(bf16, fp32) < 5e-2


def test_softmax_kernels_stay_float32_under_cpu_autocast():
    gen = torch.Generator().manual_seed(3)
    a_roi, a_time, q_cell = (torch.randn(2, 2, 5, n, generator=gen) for n in (6, 10, 5))
    cells = conv_windows(torch.randn(2, 6, 10, generator=gen), 5)
    w = torch.randn(2, 1, 6, 6, generator=gen)
    q, k, v = (torch.randn(2, 2, 6, 4, generator=gen) for _ in range(3))
    want = (*factorised_cell_attention(a_roi, a_time, q_cell, cells, 40),
            signed_attention(q, k, v, w))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = (*factorised_cell_attention(a_roi, a_time, q_cell, cells, 40),
               signed_attention(q, k, v, w))
    for g, x in zip(got, want):
        assert g.dtype == torch.float32 and torch.equal(g, x)


def test_edge_head_under_cpu_autocast_stays_near_fp32():
    # bf16 products in the middle layer: bf16-level agreement (the node projections were
    # already bf16 under autocast and account for most of the gradient's difference)
    torch.manual_seed(0)
    head = EdgeHead(32, 128, chunk=256)
    h = torch.randn(3, 30, 32)
    b, i, j = (torch.randint(0, n, (1000,)) for n in (3, 30, 30))
    grad = [torch.randn(1000)]
    want = run(lambda x: head(x, b, i, j), [h], grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run(lambda x: head(x, b, i, j), [h], grad)
    assert got[0].dtype == torch.float32
    assert rel_err(got[0], want[0]) < 1e-2 and rel_err(got[1], want[1]) < 1e-1
