"""Signed graph transformer for structural connectivity, and its masked-edge head.

Signed attention (BrainSymphony): with scores ``S = (Q K^T / sqrt(d_h)) * W``,
``W`` the structure (the SC matrix, or a multi-hop / diffusion version of it),
the weights are::

    P_ij = sign(S_ij) exp|S_ij| / sum_k exp|S_ij|

so a negative score subtracts its neighbour's value instead of adding it.

*Absent edges*: where ``W_ij = 0`` the score is exactly 0, so ``sign(S_ij) = 0``
and the edge gets exactly zero weight and zero gradient. It still adds
``exp|0| = 1`` to the row's normaliser, as in the paper's formula: a node with
few edges keeps that "null" mass, so its weights stay small instead of being
renormalised over its few neighbours.

*Stability*: ``exp|S|`` overflows for large scores; we subtract the row maximum
``m_i = max_j |S_ij|`` before exponentiating, which cancels exactly between
numerator and denominator (each absent edge then adds ``exp(-m_i)``).

*Cost*: :class:`SignedAttention` is batched over samples and heads (no Python
loop) and keeps only Q, K, V and one normaliser per row for the backward pass,
recomputing the (B, H, R, R) scores there instead of storing several of them
per layer.
"""

from __future__ import annotations

import torch
from torch import nn

from bsym.models.brainsymphony import fused as fused_kernels
from bsym.models.layers import MLP

STRUCTURES = ("first_hop", "multi_hop", "diffusion")
SC_POSITIONS = ("learnable", "laplacian")


def _t_matmul(a, b):
    """``a^T @ b`` for square ``a`` (.., N, N), computed as ``(b^T @ a)^T``: several times
    faster in MKL than multiplying by a transposed view of the large matrix."""
    return torch.matmul(b.transpose(-1, -2), a).transpose(-1, -2)


def _weights(q, k, w):
    s = torch.matmul(q, k.transpose(-1, -2)).mul_(w)
    a = s.abs()
    row_max = a.amax(-1, keepdim=True)
    e = a.sub_(row_max).exp_()
    return s, e, row_max


class SignedAttention(torch.autograd.Function):
    """``P @ v`` with signed weights ``P = sign(S) exp|S| / sum exp|S|``, ``S = (q k^T) * w``.

    ``q`` must already carry the ``1/sqrt(d_h)`` scale. Shapes: q, k, v
    (B, H, N, d_h); w (B, 1 or H, N, N).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, q, k, v, w):
        s, e, _ = _weights(q, k, w)
        norm = e.sum(-1, keepdim=True)
        p = e.mul_(s.sign_()).div_(norm)
        ctx.save_for_backward(q, k, v, w, norm)
        return torch.matmul(p, v)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        q, k, v, w, norm = ctx.saved_tensors
        s, e, _ = _weights(q, k, w)
        p = e.mul_(s.sign()).div_(norm)
        d_v = torch.matmul(p.transpose(-1, -2), grad) if ctx.needs_input_grad[2] else None
        d_p = torch.matmul(grad, v.transpose(-1, -2))
        dot = (d_p * p).sum(-1, keepdim=True)
        # dP/dS: |P| dP - P * sum_k(dP_k P_k); both terms vanish where S = 0 (absent edges)
        d_s = d_p.mul_(p.abs()).sub_(p.mul_(dot))
        d_w = None
        if ctx.needs_input_grad[3]:
            d_w = d_s * torch.matmul(q, k.transpose(-1, -2))
            if w.shape[1] == 1:
                d_w = d_w.sum(1, keepdim=True)
        d_qk = d_s.mul_(w)
        d_q = torch.matmul(d_qk, k) if ctx.needs_input_grad[0] else None
        d_k = torch.matmul(d_qk.transpose(-1, -2), q) if ctx.needs_input_grad[1] else None
        return d_q, d_k, d_v, d_w


class FusedSignedAttention(torch.autograd.Function):
    """:class:`SignedAttention` by the fused kernels (:mod:`~bsym.models.brainsymphony.fused`).

    Same inputs (``q`` already scaled) and output; float32 on CPU, and no gradient
    with respect to the structure ``w``.
    """

    @staticmethod
    def _weights(q, k, w):
        p = torch.matmul(q, k.transpose(-1, -2))
        fused_kernels.extension().signed_weights_(p, w)
        return p

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, q, k, v, w):
        w = w.contiguous()
        ctx.save_for_backward(q, k, v, w)
        return torch.matmul(FusedSignedAttention._weights(q, k, w), v)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        q, k, v, w = ctx.saved_tensors
        p = FusedSignedAttention._weights(q, k, w)
        d_v = _t_matmul(p, grad) if ctx.needs_input_grad[2] else None
        d_qk = torch.matmul(grad, v.transpose(-1, -2))
        fused_kernels.extension().signed_grad_(d_qk, p, w)
        d_q = torch.matmul(d_qk, k) if ctx.needs_input_grad[0] else None
        d_k = _t_matmul(d_qk, q) if ctx.needs_input_grad[1] else None
        return d_q, d_k, d_v, None


def signed_attention(q, k, v, w, fused=False):
    """Functional form of :class:`SignedAttention` (q unscaled: the scale is applied here).

    ``fused``: by the fused CPU kernels (:mod:`~bsym.models.brainsymphony.fused`) when
    the inputs are on CPU and ``w`` needs no gradient.
    """
    q = q * q.shape[-1] ** -0.5
    if fused and q.device.type == "cpu" and not w.requires_grad and fused_kernels.available():
        return FusedSignedAttention.apply(q, k, v, w)
    return SignedAttention.apply(q, k, v, w)


def signed_attention_weights(q, k, w):
    """The weights P (B, H, N, N) explicitly (for attention maps; q unscaled)."""
    s, e, _ = _weights(q * q.shape[-1] ** -0.5, k, w)
    norm = e.sum(-1, keepdim=True)
    return e.mul_(s.sign_()).div_(norm)


def structure_matrices(adjacency, kind="first_hop", hops=2, theta=0.1, terms=10):
    """Structure matrices W (list of (B, 1, R, R)) for the signed attention.

    ``first_hop``: A itself. ``multi_hop``: A, A^2, ..., A^hops, each power
    after the first divided by its Frobenius norm (the layer averages their
    attention). ``diffusion``: ``sum_{k<terms} theta^k (D^-1/2 A D^-1/2)^k``.
    """
    a = adjacency
    if kind == "first_hop":
        mats = [a]
    elif kind == "multi_hop":
        mats, power = [a], a
        for _ in range(1, hops):
            power = power @ a
            power = power / power.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
            mats.append(power)
    elif kind == "diffusion":
        inv_sqrt = a.abs().sum(-1).clamp_min(1e-12).rsqrt()
        a_norm = inv_sqrt[:, :, None] * a * inv_sqrt[:, None, :]
        total = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a).clone()
        power = a_norm
        for step in range(1, terms):
            total = total + theta ** step * power
            power = power @ a_norm
        mats = [total]
    else:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {kind!r}")
    return [m[:, None] for m in mats]


class SignedGraphLayer(nn.Module):
    """Pre-LN layer: ``x + SignedAttn(LN(x); W)`` then ``x + MLP(LN(x))`` (``fused``: see
    :func:`signed_attention`)."""

    def __init__(self, dim, heads, mlp_dim, dropout=0.0, fused=False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"SC width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim, self.fused = heads, dim // heads, fused
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, activation="relu")
        self.drop = nn.Dropout(dropout)

    def _qkv(self, x):
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, self.head_dim).permute(
            2, 0, 3, 1, 4)
        # the fused path multiplies contiguous blocks: MKL is several times slower on views
        return qkv.contiguous() if self.fused else qkv

    def forward(self, x, structures):
        q, k, v = self._qkv(x)
        y = sum(signed_attention(q, k, v, w, self.fused) for w in structures) / len(structures)
        x = x + self.drop(self.out(y.transpose(1, 2).flatten(2)))
        return x + self.drop(self.mlp(self.norm2(x)))

    def weights(self, x, structures):
        """Signed attention weights (B, H, N, N), averaged over structures."""
        q, k, _ = self._qkv(x)
        return sum(signed_attention_weights(q, k, w) for w in structures) / len(structures)


class _PairChunk:
    """Reused buffers of the pair MLP for ``size`` pairs, and its middle-layer products.

    The activations stay in the weights' dtype; the three (pairs x hidden) matrix
    products per chunk run in ``dtype`` (the weights' dtype, or bfloat16 under CPU
    autocast, where the AMX units multiply several times faster).
    """

    def __init__(self, size, left, w2, dtype):
        h1, h2 = left.shape[1], w2.shape[0]
        self.a1, self.z2 = left.new_empty(size, h1), left.new_empty(size, h2)
        self.g1 = left.new_empty(size, h1)   # right-hand rows, then the first layer's gradient
        self.low = dtype != w2.dtype
        self.dtype = dtype
        self.w2 = w2.to(dtype) if self.low else w2

    def hidden(self, left, right, i, j, b1, b2):
        """First-layer activations ``a`` (c, h1), its low-precision copy, and ``W2 a + b2``."""
        n = i.shape[0]
        a1, z2 = self.a1[:n], self.z2[:n]
        torch.index_select(left, 0, i, out=a1)
        a1.add_(torch.index_select(right, 0, j, out=self.g1[:n])).add_(b1).relu_()
        if not self.low:
            return a1, a1, torch.addmm(b2, a1, self.w2.T, out=z2)
        a_low = a1.to(self.dtype)
        return a1, a_low, z2.copy_(a_low @ self.w2.T).add_(b2)

    def weight_grad(self, g_w2, g_z2, a_low):
        """``g_w2 += g_z2^T a``."""
        if not self.low:
            return g_w2.addmm_(g_z2.T, a_low)
        return g_w2.add_(g_z2.to(self.dtype).T @ a_low)

    def input_grad(self, g_z2):
        """``g_z2 W2`` (c, h1), in the reused buffer."""
        out = self.g1[: g_z2.shape[0]]
        if not self.low:
            return torch.mm(g_z2, self.w2, out=out)
        return out.copy_(g_z2.to(self.dtype) @ self.w2)


class _PairMLP(torch.autograd.Function):
    """``w3 . relu(W2 relu(left[i] + right[j] + b1) + b2) + b3`` for each pair, in chunks.

    Pairs are processed ``chunk`` at a time through reused buffers, and only the
    per-node inputs are kept for the backward pass, which recomputes each chunk:
    the (pairs x hidden) activations are never stored (they are the largest
    tensors of the SC branch) at the price of one more pass of the middle layer.
    ``dtype`` is the dtype of the middle layer's matrix products (:class:`_PairChunk`).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, left, right, i, j, b1, w2, b2, w3, b3, chunk, dtype):
        n_pairs = i.shape[0]
        out = left.new_empty(n_pairs)
        bufs = _PairChunk(min(chunk, n_pairs), left, w2, dtype)
        for c0 in range(0, n_pairs, chunk):
            c1 = min(n_pairs, c0 + chunk)
            _, _, z = bufs.hidden(left, right, i[c0:c1], j[c0:c1], b1, b2)
            torch.addmv(b3, z.relu_(), w3[0], out=out[c0:c1])
        ctx.save_for_backward(left, right, i, j, b1, w2, b2, w3)
        ctx.chunk, ctx.dtype = chunk, dtype
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        left, right, i, j, b1, w2, b2, w3 = ctx.saved_tensors
        n_pairs = i.shape[0]
        g_left, g_right = torch.zeros_like(left), torch.zeros_like(right)
        g_b1, g_w2, g_b2 = torch.zeros_like(b1), torch.zeros_like(w2), torch.zeros_like(b2)
        g_w3 = torch.zeros_like(w3)
        bufs = _PairChunk(min(ctx.chunk, n_pairs), left, w2, ctx.dtype)
        for c0 in range(0, n_pairs, ctx.chunk):
            c1 = min(n_pairs, c0 + ctx.chunk)
            a, a_low, z = bufs.hidden(left, right, i[c0:c1], j[c0:c1], b1, b2)
            g = grad[c0:c1]
            g_w3 += (g @ z.relu_())[None]
            # the ReLU masks, as sign() of the activations (in place): 1 where active, else 0
            g_z2 = (g[:, None] * w3).mul_(z.sign_())                 # (c, h2)
            bufs.weight_grad(g_w2, g_z2, a_low)
            g_b2 += g_z2.sum(0)
            g_a1 = bufs.input_grad(g_z2).mul_(a.sign_())
            g_b1 += g_a1.sum(0)
            g_left.index_add_(0, i[c0:c1], g_a1)
            g_right.index_add_(0, j[c0:c1], g_a1)
        return (g_left, g_right, None, None, g_b1, g_w2, g_b2, g_w3, grad.sum()[None], None,
                None)


def _product_dtype(x, default):
    """The autocast dtype for matrix products on ``x``'s device when it is CPU, else ``default``."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return default


@torch.compiler.disable  # a loop over chunks of pairs: left eager under torch.compile
def _pair_mlp(*args):
    return _PairMLP.apply(*args)


class EdgeHead(nn.Module):
    """MLP on ``[h_i | h_j]`` predicting edge weights, evaluated on given pairs only.

    ``2d -> hidden -> hidden // 4 -> 1`` with ReLUs. The first layer is split,
    ``W [h_i | h_j] = W_a h_i + W_b h_j``, and both halves are applied once per
    node, so a pair costs an addition there, not a matrix product; the rest runs
    in chunks of ``chunk`` pairs without storing per-pair activations
    (:class:`_PairMLP`); by default 2048 pairs on CPU, 65536 on CUDA. Under CPU
    autocast the middle layer's matrix products run in the autocast dtype; on CUDA
    the pair MLP stays in float32.
    """

    CPU_CHUNK = 2048      # a chunk's activations stay in cache
    CUDA_CHUNK = 1 << 16  # fewer kernel launches; up to ~0.3 GB of reused buffers at hidden 512

    def __init__(self, dim, hidden=512, chunk=None):
        super().__init__()
        self.first = nn.Linear(2 * dim, hidden)
        self.second = nn.Linear(hidden, max(1, hidden // 4))
        self.third = nn.Linear(max(1, hidden // 4), 1)
        self.chunk = chunk

    def forward(self, h, batch_idx, i, j):
        """Predictions (n_pairs,) for pairs ``(h[batch_idx, i], h[batch_idx, j])``."""
        b, n, d = h.shape
        w = self.first.weight
        # the pair MLP's activations stay in the weights' dtype whatever the autocast dtype
        left = (h @ w[:, :d].T).flatten(0, 1).to(w.dtype)
        right = (h @ w[:, d:].T).flatten(0, 1).to(w.dtype)
        chunk = self.chunk or (self.CUDA_CHUNK if h.is_cuda else self.CPU_CHUNK)
        return _pair_mlp(left, right, batch_idx * n + i, batch_idx * n + j, self.first.bias,
                         self.second.weight, self.second.bias, self.third.weight,
                         self.third.bias, chunk, _product_dtype(h, w.dtype))

    def reference(self, h, batch_idx, i, j):
        """The same predictions by plain autograd on ``[h_i | h_j]`` (for tests)."""
        pairs = torch.cat([h[batch_idx, i], h[batch_idx, j]], dim=-1)
        hidden = torch.relu(self.second(torch.relu(self.first(pairs))))
        return self.third(hidden).squeeze(-1)


class SignedGraphTransformer(nn.Module):
    """Node features = rows of A (Linear R -> d) + positional encoding, signed layers.

    Parameters
    ----------
    n_rois, dim, layers, heads, mlp_dim : int
    dropout : float
    position : {"learnable", "laplacian"}
        Learned (R, d) table, or ``Linear(k -> d)`` of the first ``k`` Laplacian
        eigenvectors of each sample's (masked) SC.
    position_dim : int
        ``k`` for the Laplacian encoding.
    structure : {"first_hop", "multi_hop", "diffusion"}
    hops : int
    theta : float
        Diffusion decay.
    fused : bool
        Signed attention by the fused CPU kernels (opt-in; see :func:`signed_attention`).
    """

    def __init__(self, n_rois, dim, layers, heads, mlp_dim, dropout=0.0, position="learnable",
                 position_dim=16, structure="first_hop", hops=2, theta=0.1, fused=False):
        super().__init__()
        self.position_kind, self.position_dim = position, position_dim
        self.structure, self.hops, self.theta = structure, hops, theta
        self.node_in = nn.Linear(n_rois, dim)
        if position == "learnable":
            self.position = nn.Parameter(torch.randn(n_rois, dim) * 0.02)
        else:
            self.position = nn.Linear(position_dim, dim)
        self.layers = nn.ModuleList(SignedGraphLayer(dim, heads, mlp_dim, dropout, fused)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def _embed(self, adjacency):
        h = self.node_in(adjacency)
        if self.position_kind == "learnable":
            h = h + self.position
        else:
            from bsym.models.gradients import laplacian_eigenvectors

            h = h + self.position(laplacian_eigenvectors(adjacency.detach(), self.position_dim))
        return h, structure_matrices(adjacency, self.structure, self.hops, self.theta)

    def forward(self, adjacency, need_weights=False):
        """Node embeddings (B, R, d) of ``adjacency`` (B, R, R), and per-layer weights."""
        h, structures = self._embed(adjacency)
        maps = []
        for layer in self.layers:
            if need_weights:
                maps.append(layer.weights(h, structures))
            h = layer(h, structures)
        return self.norm(h), (maps if need_weights else None)
