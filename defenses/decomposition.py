"""Torch linear algebra for the detectors: top principal directions (via a small eigh), PCA and FastICA.

All run on whatever device the input tensor lives on. The principal directions come from the eigendecomposition
of the smaller of the D x D scatter and the N x N Gram matrix, never from a full SVD of the data.
"""

from __future__ import annotations

import torch


def principal_directions(centered: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`k` right singular vectors (D, k) and their squared singular values (k,) of a centred (N, D) matrix."""
    n, d = centered.shape
    if n >= d:
        evals, evecs = torch.linalg.eigh(centered.T @ centered)
        return evecs[:, -k:].flip(1), evals[-k:].flip(0).clamp_min(0)
    evals, u = torch.linalg.eigh(centered @ centered.T)
    evals, u = evals[-k:].flip(0).clamp_min(0), u[:, -k:].flip(1)
    v = centered.T @ u
    return v / v.norm(dim=0, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny), evals


def pca(x: torch.Tensor, k: int) -> torch.Tensor:
    """Project (N, D) data on its top-`k` principal components: (N, k) scores."""
    centered = x - x.mean(0)
    directions, _ = principal_directions(centered, k)
    return centered @ directions


def _sym_decorrelation(w: torch.Tensor) -> torch.Tensor:
    s, u = torch.linalg.eigh(w @ w.T)
    return (u * s.clamp_min(torch.finfo(w.dtype).tiny).rsqrt()) @ u.T @ w


def fast_ica(
    x: torch.Tensor, k: int, generator: torch.Generator, max_iter: int = 200, tol: float = 1e-4
) -> tuple[torch.Tensor, bool]:
    """Parallel FastICA (logcosh contrast) of (N, D) data to `k` unit-variance sources: ((N, k), converged).

    Same algorithm as scikit-learn's ``FastICA(whiten="unit-variance")``: PCA whitening to `k` dimensions, then
    symmetric fixed-point updates from a seeded random unmixing matrix.
    """
    n = x.shape[0]
    centered = x - x.mean(0)
    directions, evals = principal_directions(centered, k)
    scale = (evals / n).clamp_min(torch.finfo(x.dtype).tiny).rsqrt()
    white = (centered @ directions) * scale
    w = _sym_decorrelation(torch.randn(k, k, generator=generator, dtype=torch.float64).to(x))
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
    return sources / sources.std(0, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny), converged
