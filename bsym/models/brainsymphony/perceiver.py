"""Perceiver distillation of the fMRI streams, with factorised cell attention.

Each (ROI r, time t) cell is a key/value token ``u_rt = Linear([e_r | tau_t | c_rt])``
(``e`` spatial-stream ROI embeddings, ``tau`` temporal-stream embeddings, ``c``
the context convolution), and R learnable latents query the R*T cells. A linear
map of a concatenation is a sum of maps, ``u_rt = A e_r + B tau_t + C c_rt + b``,
and the context convolution is linear in its input window, ``c_rt = W x_r[t-2:t+3]
+ w0``, so for a query ``q`` (per head)::

    q . k_rt = q . ka_r + q . kb_t + (Mk^T q) . x_r[t-2:t+3]

with ``ka = Wk A e`` (per ROI), ``kb = Wk (B tau + C w0 + b)`` (per time) and
``Mk = Wk C W`` a (head_dim x kernel) matrix. The attention output is likewise
``Pr @ va + Pt @ vb + Pu @ Mv^T``, where ``Pr`` and ``Pt`` are the softmax
weights summed over time and over ROIs and ``Pu`` the weights contracted with
the input windows. Nothing of size R*T*width is ever built: the logits cost
O(R*T*kernel) per latent instead of O(R*T*width), and
:class:`FactorisedCellSoftmax` streams them in chunks of key ROIs with an online
(log-sum-exp) merge and recomputes them in the backward pass, so memory is
O(chunk), like a flash-attention kernel. The result is exact, not an
approximation (see ``tests/test_brainsymphony.py``).

On CUDA the default is instead to build K and V (B, H, R*T, head_dim) from the
same factors and call the fused :func:`torch.nn.functional.scaled_dot_product_attention`,
which is faster there than a Python loop of elementwise kernels.

On CPU, ``attention="fused"`` (opt-in) computes the same marginals with a C++
kernel (:mod:`~bsym.models.brainsymphony.fused`) that keeps each query's logits in
registers instead of streaming chunks through memory: about twice as fast a
training step at paper size, equal to float32 rounding, not bit for bit. Under
autocast the logits and the softmax stay in float32 on every path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bsym.models.brainsymphony import fused
from bsym.models.layers import MLP, TransformerEncoder

ATTENTION_IMPLS = ("auto", "factorised", "fused", "sdpa", "naive")


def _chunk_rois(batch_heads_queries, n_timepoints, n_rois, budget):
    per_roi = max(1, batch_heads_queries * n_timepoints)
    return max(1, min(n_rois, budget // per_roi))


class _Chunks:
    """Iterates over chunks of key ROIs, holding what the chunks share.

    The per-ROI logit term is folded into the matrix product: a chunk's cells
    (rc*T, m) get rc one-hot columns marking their ROI, and the query side gets
    that chunk's per-ROI terms, so ``[q_cell | a_roi] @ [cells | onehot]^T``
    gives ``q_cell . cells + a_roi`` in one pass; contracting weights with the
    same block returns their sums per ROI alongside. One flat buffer holds the
    logits of every chunk (a fresh multi-MB allocation per chunk would cost page
    faults that are a sizeable part of the time).
    """

    def __init__(self, q_cell, cells, rc, n_buffers=1):
        b, h, n_q, m = q_cell.shape
        self.b, self.rows, self.m = b, h * n_q, m
        self.shape = (b, h, n_q)
        self.n_r, self.n_t, self.rc = cells.shape[1], cells.shape[2], rc
        self.cells = cells
        self.q_cell = q_cell.reshape(b, self.rows, m)
        roi = torch.arange(rc, device=cells.device).repeat_interleave(self.n_t)
        self.onehot = F.one_hot(roi, rc).to(cells.dtype)                # (rc*T, rc)
        size = b * self.rows * rc * self.n_t
        self.buffers = [cells.new_empty(size) for _ in range(n_buffers)]

    def __iter__(self):
        for r0 in range(0, self.n_r, self.rc):
            r1 = min(self.n_r, r0 + self.rc)
            n = (r1 - r0) * self.n_t
            cells = self.cells[:, r0:r1].reshape(self.b, n, self.m)
            onehot = self.onehot[:n, : r1 - r0].expand(self.b, n, r1 - r0)
            yield r0, r1, torch.cat([cells, onehot], dim=-1)

    def product(self, left, block, buffer=0):
        """``left @ block^T`` as (B, H, L, rc, T), into a reused buffer."""
        n = block.shape[1]
        out = self.buffers[buffer][: self.b * self.rows * n].view(self.b, self.rows, n)
        torch.bmm(left, block.transpose(1, 2), out=out)
        return out.view(*self.shape, n // self.n_t, self.n_t)

    def left(self, per_cell, per_roi, r0, r1):
        """Query side (B, H*L, m + rc): per-cell coefficients and this chunk's ROI terms."""
        return torch.cat([per_cell.reshape(self.b, self.rows, -1),
                          per_roi[..., r0:r1].reshape(self.b, self.rows, -1)], dim=-1)

    def contract(self, weights, block):
        """Sums over the chunk's cells of weights * [cells | onehot]: (B, H, L, m + rc)."""
        flat = weights.view(self.b, self.rows, -1)
        # computed as (block^T @ weights^T)^T: MKL is ~4x faster with the narrow side as rows
        out = torch.bmm(block.transpose(1, 2), flat.transpose(1, 2))
        return out.transpose(1, 2).view(*self.shape, -1)


# Chunks are exponentiated against a running reference that is raised only when a
# chunk's maximum exceeds it by more than this margin, so the accumulators are rarely
# rescaled; the weights stay below exp(margin), far from float32 overflow.
_RESCALE_MARGIN = 8.0


def _marginals(a_roi, a_time, q_cell, cells, budget):
    """Forward pass of :class:`FactorisedCellSoftmax`, plus the log-sum-exp and chunk size."""
    b, h, n_q, n_r = a_roi.shape
    n_t, m = a_time.shape[-1], q_cell.shape[-1]
    rc = _chunk_rois(b * h * n_q, n_t, n_r, budget)
    chunks = _Chunks(q_cell, cells, rc)
    reference = None
    run_sum = a_roi.new_zeros(b, h, n_q)
    p_time = a_roi.new_zeros(b, h, n_q, n_t)
    p_cell = a_roi.new_zeros(b, h, n_q, m)
    p_roi = torch.empty_like(a_roi)
    chunk_ref = torch.empty_like(a_roi)
    for r0, r1, block in chunks:
        s = chunks.product(chunks.left(q_cell, a_roi, r0, r1), block)
        s.add_(a_time[..., None, :])
        top = s.amax(dim=(-1, -2))
        if reference is None:
            reference = top
        elif bool((top > reference + _RESCALE_MARGIN).any()):
            # online softmax: raise the reference, rescale what was accumulated under it
            raised = torch.maximum(reference, top)
            scale = (reference - raised).exp_()
            run_sum.mul_(scale)
            p_time.mul_(scale[..., None])
            p_cell.mul_(scale[..., None])
            reference = raised
        s.sub_(reference[..., None, None]).exp_()
        sums = chunks.contract(s, block)                    # [sum p*cells | sum_t p]
        p_roi[..., r0:r1] = sums[..., m:]
        chunk_ref[..., r0:r1] = reference[..., None]
        run_sum += sums[..., m:].sum(-1)
        p_time += s[..., 0, :] if r1 - r0 == 1 else s.sum(-2)
        p_cell += sums[..., :m]
    p_roi.mul_(chunk_ref.sub_(reference[..., None]).exp_().div_(run_sum[..., None]))
    p_time.div_(run_sum[..., None])
    p_cell.div_(run_sum[..., None])
    return p_roi, p_time, p_cell, reference + run_sum.log(), rc


def centred_roi_grad(p_roi, p_time, p_cell, g_roi, g_time, g_cell):
    """``g_roi - D`` with ``D = sum p * g_p`` over the three marginals (per query).

    The gradient w.r.t. a logit is ``p * (g_p - D)``, ``g_p`` the gradient w.r.t. the
    marginals at that cell: ``g_roi[r] + g_time[t] + g_cell . cells[r, t]``.
    """
    dot = (p_roi * g_roi).sum(-1) + (p_time * g_time).sum(-1) + (p_cell * g_cell).sum(-1)
    return g_roi - dot[..., None]


class FactorisedCellSoftmax(torch.autograd.Function):
    """Marginals of a softmax over R*T cells with factorised logits.

    For logits ``s[q, r, t] = a_roi[q, r] + a_time[q, t] + q_cell[q] . cells[r, t]``
    and ``p = softmax_{r,t}(s)``, returns ``Pr = sum_t p`` (B, H, L, R),
    ``Pt = sum_r p`` (B, H, L, T) and ``Pu = sum_{r,t} p * cells[r, t]``
    (B, H, L, m). ``a_roi`` (B, H, L, R), ``a_time`` (B, H, L, T), ``q_cell``
    (B, H, L, m), ``cells`` (B, R, T, m). ``budget`` bounds the elements of one
    chunk of logits. The backward pass recomputes the logits chunk by chunk
    from the saved log-sum-exp.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, a_roi, a_time, q_cell, cells, budget):
        p_roi, p_time, p_cell, lse, rc = _marginals(a_roi, a_time, q_cell, cells, budget)
        ctx.save_for_backward(a_roi, a_time, q_cell, cells, lse, p_roi, p_time, p_cell)
        ctx.rc = rc
        return p_roi, p_time, p_cell

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, g_roi, g_time, g_cell):
        a_roi, a_time, q_cell, cells, lse, p_roi, p_time, p_cell = ctx.saved_tensors
        m = q_cell.shape[-1]
        g_roi = torch.zeros_like(p_roi) if g_roi is None else g_roi
        g_time = torch.zeros_like(p_time) if g_time is None else g_time
        g_cell = torch.zeros_like(p_cell) if g_cell is None else g_cell
        g_roi_centred = centred_roi_grad(p_roi, p_time, p_cell, g_roi, g_time, g_cell)
        a_time_lse = a_time - lse[..., None]
        d_roi = torch.empty_like(a_roi)
        d_time = torch.zeros_like(a_time)
        d_cell = torch.zeros_like(q_cell)
        need_cells = ctx.needs_input_grad[3]
        d_cells = torch.zeros_like(cells) if need_cells else None
        chunks = _Chunks(q_cell, cells, ctx.rc, n_buffers=2)
        for r0, r1, block in chunks:
            p = chunks.product(chunks.left(q_cell, a_roi, r0, r1), block)
            p.add_(a_time_lse[..., None, :]).exp_()
            ds = chunks.product(chunks.left(g_cell, g_roi_centred, r0, r1), block, buffer=1)
            ds.add_(g_time[..., None, :]).mul_(p)
            sums = chunks.contract(ds, block)
            d_cell += sums[..., :m]
            d_roi[..., r0:r1] = sums[..., m:]
            d_time += ds[..., 0, :] if r1 - r0 == 1 else ds.sum(-2)
            if need_cells:
                rows = chunks.rows
                part = torch.bmm(chunks.q_cell.transpose(1, 2), ds.reshape(chunks.b, rows, -1))
                part += torch.bmm(g_cell.reshape(chunks.b, rows, m).transpose(1, 2),
                                  p.reshape(chunks.b, rows, -1))
                d_cells[:, r0:r1] = part.transpose(1, 2).reshape(chunks.b, r1 - r0, -1, m)
        return d_roi, d_time, d_cell, d_cells, None


@torch.compiler.disable  # a loop over chunks with data-dependent rescaling: left eager
def factorised_cell_attention(a_roi, a_time, q_cell, cells, budget=1 << 21):
    """Functional form of :class:`FactorisedCellSoftmax`."""
    return FactorisedCellSoftmax.apply(a_roi, a_time, q_cell, cells, int(budget))


def _padded_series(cells):
    """The zero-padded series (B, R, T + k - 1) that the windows ``cells`` (B, R, T, k) view."""
    return torch.cat([cells[..., 0], cells[:, :, -1, 1:]], dim=-1).contiguous()


class FusedCellSoftmax(torch.autograd.Function):
    """:class:`FactorisedCellSoftmax` by the fused kernel (:mod:`~bsym.models.brainsymphony.fused`).

    Same inputs and outputs (without ``budget``); float32 on CPU, and no gradient
    with respect to ``cells`` (the windows of the input series).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, a_roi, a_time, q_cell, cells):
        b, h, n_q, _ = a_roi.shape
        rows = [x.reshape(b * h * n_q, -1).contiguous() for x in (a_roi, a_time, q_cell)]
        series = _padded_series(cells)
        p_roi, p_time, p_cell, lse = fused.extension().forward(*rows, series, h * n_q)
        ctx.save_for_backward(*rows, series, lse, p_roi, p_time, p_cell)
        ctx.shapes = (a_roi.shape, a_time.shape, q_cell.shape)
        return tuple(p.view(shape) for p, shape in zip((p_roi, p_time, p_cell), ctx.shapes))

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, g_roi, g_time, g_cell):
        a_roi, a_time, q_cell, series, lse, p_roi, p_time, p_cell = ctx.saved_tensors
        g_roi, g_time, g_cell = (torch.zeros_like(p) if g is None else g.reshape(p.shape)
                                 for g, p in zip((g_roi, g_time, g_cell), (p_roi, p_time, p_cell)))
        g_roi = centred_roi_grad(p_roi, p_time, p_cell, g_roi, g_time, g_cell)
        grads = fused.extension().backward(a_roi, a_time, q_cell, series, lse,
                                           g_roi.contiguous(), g_time.contiguous(),
                                           g_cell.contiguous(), ctx.shapes[0][1] * ctx.shapes[0][2])
        return (*(d.view(shape) for d, shape in zip(grads, ctx.shapes)), None)


@torch.compiler.disable  # calls the compiled extension: left eager under torch.compile
def fused_cell_attention(a_roi, a_time, q_cell, cells):
    """Functional form of :class:`FusedCellSoftmax`."""
    if cells.shape[-1] not in fused.KERNELS:
        raise ValueError(f"attention='fused' supports context kernels {fused.KERNELS}, got "
                         f"{cells.shape[-1]}; use attention='factorised'")
    return FusedCellSoftmax.apply(a_roi, a_time, q_cell, cells)


def _wide(x):
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def conv_windows(x, kernel):
    """Zero-padded sliding windows over time: (B, R, T) -> (B, R, T, kernel)."""
    pad = kernel // 2
    return F.pad(x, (pad, pad)).unfold(-1, kernel, 1)


class Perceiver(nn.Module):
    """R latents (one per ROI) cross-attend to the R*T cells, then a latent transformer.

    Parameters
    ----------
    n_rois, n_timepoints : int
    dim : int
        Width of the streams and of the latents.
    context_channels : int
        Channels of the context convolution (per-cell features).
    heads : int
        Heads of the cross-attention and of the latent transformer.
    layers, mlp_dim : int
        Latent transformer depth and MLP width.
    dropout : float
    attention : {"auto", "factorised", "fused", "sdpa", "naive"}
        Cross-attention implementation, all exact ("auto": SDPA on CUDA,
        factorised elsewhere; "fused": a C++ kernel built on first use, CPU only,
        see :mod:`~bsym.models.brainsymphony.fused`; "naive" builds K, V and the
        whole attention matrix, for debugging).
    chunk_elements : int
        Logits per chunk for the factorised attention.
    """

    def __init__(self, n_rois, n_timepoints, dim, context_channels, heads=2, layers=2,
                 mlp_dim=512, dropout=0.0, attention="auto", chunk_elements=1 << 21):
        super().__init__()
        if dim % heads:
            raise ValueError(f"perceiver width {dim} is not divisible by {heads} heads")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.attention_impl = attention
        self.chunk_elements = chunk_elements
        self.latents = nn.Parameter(torch.randn(n_rois, dim) * 0.02)
        self.cell_in = nn.Linear(2 * dim + context_channels, dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.cross_norm = nn.LayerNorm(dim)
        self.encoder = TransformerEncoder(dim, layers, heads, mlp_dim, dropout)
        self.head = MLP(dim, 2 * dim, n_timepoints)
        self.drop = nn.Dropout(dropout)

    # -- factors -----------------------------------------------------------------------
    def _factors(self, roi_emb, time_emb, conv_weight, conv_bias):
        """Per-ROI, per-time and per-cell parts of the cell tokens u = A e + B tau + C c + b."""
        d = self.dim
        w = self.cell_in.weight
        w_roi, w_time, w_ctx = w[:, :d], w[:, d:2 * d], w[:, 2 * d:]
        u_roi = roi_emb @ w_roi.T                                      # (B, R, d)
        u_time = time_emb @ w_time.T + (self.cell_in.bias + w_ctx @ conv_bias)  # (B, T, d)
        u_cell = w_ctx @ conv_weight                                   # (d, kernel)
        return u_roi, u_time, u_cell

    def _split(self, x):
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(-2, -3)

    def _project(self, proj, u_roi, u_time, u_cell):
        """Keys or values: per-ROI (B, H, R, dh), per-time (B, H, T, dh), cell map (H, dh, k)."""
        return (self._split(u_roi @ proj.weight.T), self._split(proj(u_time)),
                (proj.weight @ u_cell).view(self.heads, self.head_dim, -1))

    def _impl(self, device):
        if self.attention_impl == "auto" or (self.attention_impl == "fused"
                                             and device.type != "cpu"):
            return "sdpa" if device.type == "cuda" else "factorised"
        return self.attention_impl

    def cross_attention(self, queries, roi_emb, time_emb, x, conv_weight, conv_bias,
                        need_weights=False):
        """Cross-attention of ``queries`` (B, R, d) over the cells of ``x`` (B, R, T).

        ``conv_weight`` (channels, kernel) and ``conv_bias`` (channels,) are the
        context convolution's. With ``need_weights`` also returns the weights
        summed over time (B, H, R, R) and over ROIs (B, H, R, T), and the output
        carries no gradient (for attention maps).
        """
        kernel = conv_weight.shape[-1]
        u_roi, u_time, u_cell = self._factors(roi_emb, time_emb, conv_weight, conv_bias)
        k_roi, k_time, k_cell = self._project(self.k, u_roi, u_time, u_cell)
        v_roi, v_time, v_cell = self._project(self.v, u_roi, u_time, u_cell)
        q = self._split(self.q(queries))                                # (B, H, L, dh)
        cells = conv_windows(x, kernel)                                 # (B, R, T, k)
        impl = self._impl(x.device)
        weights = None
        if impl in ("factorised", "fused") or need_weights:
            p_roi, p_time, p_cell = self._factorised(q, k_roi, k_time, k_cell, cells,
                                                    need_weights, use_fused=impl == "fused")
            weights = (p_roi, p_time) if need_weights else None
            y = p_roi @ v_roi + p_time @ v_time + p_cell @ v_cell.transpose(-1, -2)
        else:
            keys = self._materialise(k_roi, k_time, k_cell, cells)
            values = self._materialise(v_roi, v_time, v_cell, cells)
            if impl == "sdpa":
                y = F.scaled_dot_product_attention(q, keys, values)
            else:
                attn = torch.softmax(q @ keys.transpose(-1, -2) * self.head_dim ** -0.5, -1)
                y = attn @ values
        y = self.out(y.transpose(1, 2).flatten(2))
        return y, weights

    def _factorised(self, q, k_roi, k_time, k_cell, cells, need_weights, use_fused=False):
        """The factorised softmax's marginals; logits and softmax in float32 under autocast."""
        with torch.autocast(cells.device.type, enabled=False):
            q = _wide(q) * self.head_dim ** -0.5
            a_roi = q @ _wide(k_roi).transpose(-1, -2)
            a_time = q @ _wide(k_time).transpose(-1, -2)
            q_cell = q @ _wide(k_cell)                                  # (B, H, L, k)
            cells = _wide(cells)
            if use_fused and not need_weights and not cells.requires_grad \
                    and fused.available():
                return fused_cell_attention(a_roi, a_time, q_cell, cells)
            if not need_weights:
                return factorised_cell_attention(a_roi, a_time, q_cell, cells,
                                                 self.chunk_elements)
            with torch.no_grad():
                return _marginals(a_roi, a_time, q_cell, cells, self.chunk_elements)[:3]

    @staticmethod
    def _materialise(part_roi, part_time, part_cell, cells):
        b, h, r, dh = part_roi.shape
        t = part_time.shape[2]
        per_cell = torch.einsum("brtk,hdk->bhrtd", cells, part_cell)
        full = per_cell + part_roi[:, :, :, None, :] + part_time[:, :, None, :, :]
        return full.reshape(b, h, r * t, dh)

    def forward(self, roi_emb, time_emb, x, conv_weight, conv_bias, position,
                need_weights=False):
        """Latent ROI embeddings (B, R, d), reconstruction (B, R, T) and weights.

        ``position`` (R, d) or (B, R, d) is the spatial positional encoding added
        to the latents to form the queries.
        """
        queries = self.latents + position
        if queries.dim() == 2:
            queries = queries.expand(roi_emb.shape[0], -1, -1)
        y, weights = self.cross_attention(queries, roi_emb, time_emb, x, conv_weight,
                                          conv_bias, need_weights)
        z = self.cross_norm(queries + self.drop(y))
        z, maps = self.encoder(z, need_weights=need_weights)
        return z, weights, maps

    def reconstruct(self, latents):
        """Each ROI's series from its latent: (B, R, d) -> (B, R, T)."""
        return self.head(latents)

