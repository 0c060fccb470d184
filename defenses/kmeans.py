"""Seeded multi-start k-means (k-means++ initialisation, Lloyd iterations) and a silhouette score, in torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class KMeansFit:
    """The best of several k-means runs: labels (N,), centres (k, D), inertia and whether Lloyd converged."""

    labels: torch.Tensor
    centers: torch.Tensor
    inertia: float
    converged: bool


def _kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=generator).item()
    centers = [x[first]]
    closest = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:
            pick = torch.randint(n, (1,), generator=generator).item()
        else:
            pick = torch.multinomial((closest / total).cpu(), 1, generator=generator).item()
        centers.append(x[pick])
        closest = torch.minimum(closest, ((x - x[pick]) ** 2).sum(1))
    return torch.stack(centers)


def axis_split_starts(x: torch.Tensor) -> list[torch.Tensor]:
    """One 2-means start per column of `x`: the centres of the best 1-D two-way split of that column.

    A small, well-separated subpopulation (a trigger's footprint) often lives on one reduced axis, where random
    k-means++ starts rarely land; starting from the optimal split along each axis finds it deterministically.
    """
    n = x.shape[0]
    order = x.argsort(0)
    counts = torch.arange(1, n, device=x.device, dtype=x.dtype)
    starts = []
    for j in range(x.shape[1]):
        values = x[order[:, j], j]
        left = values.cumsum(0)[:-1]
        gap = left / counts - (values.sum() - left) / (n - counts)
        cut = int((counts * (n - counts) * gap**2).argmax()) + 1
        rows = order[:, j]
        starts.append(torch.stack([x[rows[:cut]].mean(0), x[rows[cut:]].mean(0)]))
    return starts


def _lloyd(x: torch.Tensor, centers: torch.Tensor, max_iter: int, tol: float) -> KMeansFit:
    k = centers.shape[0]
    converged = False
    labels = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
    for _ in range(max_iter):
        dist = torch.cdist(x, centers) ** 2
        new_labels = dist.argmin(1)
        counts = torch.bincount(new_labels, minlength=k)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            far = dist.min(1).values.argmax()
            new_labels[far] = empty
            dist[far] = 0.0
        sums = torch.zeros_like(centers).index_add_(0, new_labels, x)
        new_centers = sums / torch.bincount(new_labels, minlength=k)[:, None].to(x.dtype)
        shift = ((new_centers - centers) ** 2).sum()
        stable = bool((new_labels == labels).all())
        centers, labels = new_centers, new_labels
        if stable or shift <= tol:
            converged = True
            break
    inertia = float(((x - centers[labels]) ** 2).sum())
    return KMeansFit(labels, centers, inertia, converged)


def kmeans(
    x: torch.Tensor,
    k: int,
    n_init: int,
    generator: torch.Generator,
    extra_starts: Sequence[torch.Tensor] = (),
    max_iter: int = 300,
    tol: float = 1e-4,
) -> KMeansFit:
    """Cluster (N, D) `x` into `k` groups: `n_init` seeded k-means++ starts plus `extra_starts` (k, D) centre
    sets; the run with the lowest inertia wins. `tol` is relative to the mean per-feature variance (as in
    scikit-learn). Empty clusters are re-seeded with the point farthest from its centre.
    """
    abs_tol = tol * float(x.var(0).mean()) if x.shape[0] > 1 else 0.0
    best: KMeansFit | None = None
    starts = [_kmeans_pp(x, k, generator) for _ in range(n_init)] + list(extra_starts)
    for start in starts:
        fit = _lloyd(x, start, max_iter, abs_tol)
        if best is None or fit.inertia < best.inertia:
            best = fit
    return best


def silhouette(x: torch.Tensor, labels: torch.Tensor, k: int, chunk: int = 2048) -> float:
    """Mean silhouette coefficient of a clustering of (N, D) `x` (pairwise distances computed in chunks)."""
    n = x.shape[0]
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    onehot = torch.nn.functional.one_hot(labels, k).to(x.dtype)
    values = []
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        sums = torch.cdist(x[rows], x) @ onehot
        own = labels[rows]
        own_count = counts[own]
        a = sums.gather(1, own[:, None]).squeeze(1) / (own_count - 1).clamp_min(1)
        mean_other = sums / counts.clamp_min(1)
        mean_other.scatter_(1, own[:, None], float("inf"))
        mean_other[:, counts == 0] = float("inf")
        b = mean_other.min(1).values
        s = (b - a) / torch.maximum(a, b).clamp_min(torch.finfo(x.dtype).tiny)
        values.append(torch.where(own_count > 1, s, torch.zeros_like(s)))
    return float(torch.cat(values).mean())
