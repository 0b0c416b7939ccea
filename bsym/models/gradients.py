"""Positional encodings from connectivity.

* :func:`fc_gradients`: connectivity gradients (Margulies et al. 2016) of a group
  functional connectivity matrix, by diffusion-map embedding (default) or PCA,
  for BrainSymphony's spatial positional encoding. Compute them on the
  *training* cohort only (:func:`group_fc`) and hand them to the model.
* :func:`laplacian_eigenvectors`: eigenvectors of the normalised graph Laplacian
  of (batched) structural connectivity, for the signed graph transformer.
"""

from __future__ import annotations

import numpy as np
import torch

GRADIENT_METHODS = ("diffusion", "pca")


def group_fc(series, *, fisher=True):
    """Mean functional connectivity over scans.

    Parameters
    ----------
    series : iterable of array-like (R, T)
        One ROI x time array per scan (e.g. ``WindowDataset.iter_series()`` of the
        training set).
    fisher : bool
        Average Fisher z-transformed correlations and transform back.

    Returns
    -------
    ndarray (R, R)
    """
    total, count = None, 0
    for x in series:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"each series must be ROIs x time, got shape {x.shape}")
        fc = np.corrcoef(x)
        if not np.isfinite(fc).all():
            raise ValueError(f"scan {count} has a constant ROI: its correlation is undefined")
        if fisher:
            fc = np.arctanh(np.clip(fc, -0.999999, 0.999999))
        if total is not None and fc.shape != total.shape:
            raise ValueError(f"scan {count} has {fc.shape[0]} ROIs, earlier scans "
                             f"{total.shape[0]}")
        total = fc if total is None else total + fc
        count += 1
    if not count:
        raise ValueError("group_fc needs at least one series")
    mean = total / count
    return np.tanh(mean) if fisher else mean


def _sign_fix(vectors):
    """Flip each column so its largest-magnitude entry is positive (determinism)."""
    idx = np.abs(vectors).argmax(axis=0)
    signs = np.sign(vectors[idx, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1
    return vectors * signs


def fc_gradients(fc, n_components=10, *, method="diffusion", sparsity=0.9, alpha=0.5):
    """Connectivity gradients of an FC matrix: one row of coordinates per ROI.

    Parameters
    ----------
    fc : array-like (R, R)
        Symmetric functional connectivity (e.g. from :func:`group_fc`).
    n_components : int
        Gradients to keep (BrainSymphony uses 10).
    method : {"diffusion", "pca"}
        Diffusion-map embedding of a normalised-angle affinity between
        row-thresholded FC profiles (as BrainSpace), or principal components of
        the thresholded profiles.
    sparsity : float in [0, 1)
        Fraction of the smallest entries of each FC row set to zero.
    alpha : float in [0, 1]
        Diffusion-map anisotropy (0.5: Fokker-Planck normalisation).

    Returns
    -------
    ndarray (R, n_components), float32; columns ordered by explained structure.
    """
    fc = np.array(fc, dtype=np.float64)
    if fc.ndim != 2 or fc.shape[0] != fc.shape[1]:
        raise ValueError(f"fc must be a square matrix, got shape {fc.shape}")
    if method not in GRADIENT_METHODS:
        raise ValueError(f"method must be one of {GRADIENT_METHODS}, got {method!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity!r}")
    n = fc.shape[0]
    if not 1 <= n_components < n:
        raise ValueError(f"n_components must lie in [1, {n - 1}] for {n} ROIs, "
                         f"got {n_components!r}")
    if not np.isfinite(fc).all():
        raise ValueError("fc contains NaN or Inf")
    np.fill_diagonal(fc, 1.0)
    keep = max(1, int(np.ceil((1.0 - sparsity) * n)))
    threshold = np.sort(fc, axis=1)[:, -keep][:, None]
    profiles = np.where(fc >= threshold, fc, 0.0)
    if method == "pca":
        centred = profiles - profiles.mean(axis=0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        return _sign_fix(u[:, :n_components] * s[:n_components]).astype(np.float32)
    unit = profiles / np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)
    cosine = np.clip(unit @ unit.T, -1.0, 1.0)
    affinity = 1.0 - np.arccos(cosine) / np.pi
    degree = affinity.sum(axis=1)
    kernel = affinity / np.outer(degree ** alpha, degree ** alpha)
    d = kernel.sum(axis=1)
    sym = kernel / np.sqrt(np.outer(d, d))
    values, vectors = np.linalg.eigh(sym)
    order = np.argsort(values)[::-1][: n_components + 1]
    values, vectors = values[order], vectors[:, order]
    psi = vectors / vectors[:, [0]]
    lam = np.clip(values[1:], 0.0, 1.0 - 1e-12)
    embedding = psi[:, 1:] * (lam / (1.0 - lam))
    return _sign_fix(embedding).astype(np.float32)


def laplacian_eigenvectors(adjacency, k):
    """First ``k`` non-trivial eigenvectors of the normalised Laplacian, batched.

    Parameters
    ----------
    adjacency : Tensor (..., R, R)
        Connectivity; its absolute value, symmetrised, is the graph.
    k : int
        Eigenvectors kept (smallest eigenvalues after the first); zero-padded
        when ``R - 1 < k``.

    Returns
    -------
    Tensor (..., R, k), each column's largest-magnitude entry positive.
    """
    a = adjacency.abs()
    a = 0.5 * (a + a.transpose(-1, -2))
    n = a.shape[-1]
    inv_sqrt = a.sum(-1).clamp_min(1e-12).rsqrt()
    lap = torch.eye(n, dtype=a.dtype, device=a.device) - inv_sqrt[..., :, None] * a \
        * inv_sqrt[..., None, :]
    work = lap.double() if lap.dtype in (torch.float16, torch.bfloat16, torch.float32) else lap
    _, vectors = torch.linalg.eigh(work)
    vectors = vectors[..., 1:k + 1].to(adjacency.dtype)
    idx = vectors.abs().argmax(dim=-2, keepdim=True)
    signs = torch.gather(vectors, -2, idx).sign()
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
    if vectors.shape[-1] < k:
        pad = vectors.new_zeros(*vectors.shape[:-1], k - vectors.shape[-1])
        vectors = torch.cat([vectors, pad], dim=-1)
    return vectors
