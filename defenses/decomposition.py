"""Torch linear algebra for the detectors: top principal directions (via a small eigh), PCA and FastICA.

All run on the given device. The principal directions come from the eigendecomposition of the smaller of the
D x D scatter and the N x N Gram matrix, never from a full SVD of the data. A label group's rows are read from the
(N, D) feature array in float64 chunks of about ``CHUNK_ELEMENTS`` values (the scatter is summed chunk by chunk),
so memory stays O(chunk + D^2) whatever the group's size: 200k x 512 features need no float64 copy of themselves.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

CHUNK_ELEMENTS = 1 << 22
"""Values per float64 chunk (32 MiB): 8192 rows of 512-d features."""


def principal_directions(centered: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`k` right singular vectors (D, k) and their squared singular values (k,) of a centred (N, D) matrix."""
    n, d = centered.shape
    if n >= d:
        return _top_eigenpairs(centered.T @ centered, k)
    evals, u = torch.linalg.eigh(centered @ centered.T)
    evals, u = evals[-k:].flip(0).clamp_min(0), u[:, -k:].flip(1)
    v = centered.T @ u
    return v / v.norm(dim=0, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny), evals


def _top_eigenpairs(scatter: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    evals, evecs = torch.linalg.eigh(scatter)
    return evecs[:, -k:].flip(1), evals[-k:].flip(0).clamp_min(0)


def row_chunks(feats: np.ndarray, rows: np.ndarray, device: torch.device) -> Iterator[torch.Tensor]:
    """``feats[rows]`` as float64 tensors on `device`, a chunk of rows at a time."""
    step = max(1, CHUNK_ELEMENTS // max(1, feats.shape[1]))
    for start in range(0, rows.shape[0], step):
        yield torch.as_tensor(feats[rows[start : start + step]], dtype=torch.float64, device=device)


def group_pca(
    feats: np.ndarray, rows: np.ndarray, k: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (D,), top-`k` principal directions (D, k) and squared singular values (k,) of ``feats[rows]``.

    Two streamed passes (mean, then the centred D x D scatter); a group with fewer rows than D is small enough to
    hold in float64 and goes through the N x N Gram matrix instead.
    """
    n, d = rows.shape[0], feats.shape[1]
    if n < d:
        x = torch.as_tensor(feats[rows], dtype=torch.float64, device=device)
        mean = x.mean(0)
        return mean, *principal_directions(x - mean, k)
    total = torch.zeros(d, dtype=torch.float64, device=device)
    for chunk in row_chunks(feats, rows, device):
        total += chunk.sum(0)
    mean = total / n
    scatter = torch.zeros(d, d, dtype=torch.float64, device=device)
    for chunk in row_chunks(feats, rows, device):
        chunk -= mean
        scatter.addmm_(chunk.T, chunk)
    return mean, *_top_eigenpairs(scatter, k)


def project(feats: np.ndarray, rows: np.ndarray, mean: torch.Tensor, directions: torch.Tensor,
            device: torch.device) -> torch.Tensor:
    """``(feats[rows] - mean) @ directions``: (N, k), computed chunk by chunk."""
    return torch.cat([(chunk - mean) @ directions for chunk in row_chunks(feats, rows, device)])


def pca(feats: np.ndarray, rows: np.ndarray, k: int, device: torch.device) -> torch.Tensor:
    """Project the (N, D) rows ``feats[rows]`` on their top-`k` principal components: (N, k) scores."""
    mean, directions, _ = group_pca(feats, rows, k, device)
    return project(feats, rows, mean, directions, device)


def _sym_decorrelation(w: torch.Tensor) -> torch.Tensor:
    s, u = torch.linalg.eigh(w @ w.T)
    return (u * s.clamp_min(torch.finfo(w.dtype).tiny).rsqrt()) @ u.T @ w


def fast_ica(
    feats: np.ndarray, rows: np.ndarray, k: int, generator: torch.Generator, device: torch.device,
    max_iter: int = 200, tol: float = 1e-4,
) -> tuple[torch.Tensor, bool]:
    """Parallel FastICA (logcosh contrast) of the (N, D) rows ``feats[rows]`` to `k` unit-variance sources:
    ((N, k), converged).

    Same algorithm as scikit-learn's ``FastICA(whiten="unit-variance")``: PCA whitening to `k` dimensions, then
    symmetric fixed-point updates from a seeded random unmixing matrix.
    """
    n = rows.shape[0]
    mean, directions, evals = group_pca(feats, rows, k, device)
    scale = (evals / n).clamp_min(torch.finfo(evals.dtype).tiny).rsqrt()
    white = project(feats, rows, mean, directions, device) * scale
    w = _sym_decorrelation(torch.randn(k, k, generator=generator, dtype=torch.float64).to(white))
    converged = False
    for _ in range(max_iter):
        proj = white @ w.T
        g = torch.tanh(proj)
        g_prime = (1.0 - g**2).mean(0)
        w_new = _sym_decorrelation(g.T @ white / n - g_prime[:, None] * w)
        change = ((w_new * w).sum(1).abs() - 1.0).abs().max()
        w = w_new
        if change < tol:
            converged = True
            break
    sources = white @ w.T
    return sources / sources.std(0, keepdim=True).clamp_min(torch.finfo(white.dtype).tiny), converged
