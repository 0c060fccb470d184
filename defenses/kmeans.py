"""Seeded multi-start k-means (k-means++ initialisation, Lloyd iterations) and a silhouette score, in torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from artmed.defenses.decomposition import sample_rows


@dataclass
class KMeansFit:
    """The best of several k-means runs: labels (N,), centres (k, D), inertia and whether Lloyd converged."""

    labels: torch.Tensor
    centers: torch.Tensor
    inertia: float
    converged: bool


def _kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding. Each draw takes one uniform number from the (CPU) `generator` and inverts the cumulative
    squared distances on x's device: the same picks on any device, and no per-row data leaves it."""
    n = x.shape[0]
    first = cast(int, torch.randint(n, (1,), generator=generator).item())  # an int64 draw
    centers = [x[first]]
    closest = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        cumulative = closest.cumsum(0)
        total = float(cumulative[-1])
        if total <= 0:
            pick = cast(int, torch.randint(n, (1,), generator=generator).item())
        else:
            u = torch.rand((), generator=generator, dtype=torch.float64).item()
            pick = min(int(torch.searchsorted(cumulative, u * total, right=True)), n - 1)
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


def _lloyd_all(x: torch.Tensor, starts: torch.Tensor, max_iter: int, tol: float) -> list[KMeansFit]:
    """Lloyd iterations from each of the (S, k, D) centre sets in `starts`, all runs advanced together (one
    product per step for every run still moving; each stops on its own criterion), one fit per start.

    Assignment uses -2 c.x + |c|^2 (the squared distance less the per-row |x|^2, which does not change the
    argmin), computed run-major as (runs, k, N) so every per-run slice is contiguous."""
    n_starts, k, d = starts.shape
    n = x.shape[0]
    columns = x.T.contiguous()
    centers = starts.clone()
    labels = torch.full((n_starts, n), -1, dtype=torch.long, device=x.device)
    converged = [False] * n_starts
    active = list(range(n_starts))
    total = x.sum(0)
    for _ in range(max_iter):
        if not active:
            break
        idx = torch.tensor(active, device=x.device)
        c = centers[idx]
        partial = torch.addmm((c * c).sum(2).reshape(-1, 1), c.reshape(-1, d), columns, alpha=-2.0)
        partial = partial.view(len(active), k, n)
        new = (partial[:, 1] < partial[:, 0]).long() if k == 2 else partial.argmin(1)
        counts, sums = _cluster_sums(x, new, k, total)
        for j in torch.nonzero((counts == 0).any(1)).flatten().tolist():
            new[j], counts[j] = _fill_empty(x, partial[j].T, new[j].clone(), counts[j])
            sums[j] = torch.zeros_like(sums[j]).index_add_(0, new[j], x)
        moved = sums / counts[..., None].to(x.dtype)
        shift = ((moved - c) ** 2).sum((1, 2))
        stable = (new == labels[idx]).all(1)
        centers[idx] = moved
        labels[idx] = new
        done = (stable | (shift <= tol)).tolist()
        for j, finished in zip(active, done):
            converged[j] = converged[j] or finished
        active = [j for j, finished in zip(active, done) if not finished]
    fits = []
    for j in range(n_starts):
        inertia = float(((x - centers[j][labels[j]]) ** 2).sum(dtype=torch.float64))
        fits.append(KMeansFit(labels[j].clone(), centers[j].clone(), inertia, converged[j]))
    return fits


def _cluster_sums(
    x: torch.Tensor, labels: torch.Tensor, k: int, total: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per run and cluster, the member count (S, k) and the sum of members (S, k, D) for labels (S, N)."""
    if k == 2:
        n_ones = labels.sum(1)
        sum_ones = labels.to(x.dtype) @ x
        return torch.stack([x.shape[0] - n_ones, n_ones], 1), torch.stack([total - sum_ones, sum_ones], 1)
    onehot = torch.nn.functional.one_hot(labels, k).to(x.dtype)
    return onehot.sum(1).long(), torch.einsum("snk,nd->skd", onehot, x)


def _fill_empty(
    x: torch.Tensor, partial: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Give each empty cluster the point farthest from its own centre."""
    dist = partial.gather(1, labels[:, None]).squeeze(1) + (x * x).sum(1)
    for empty in torch.nonzero(counts == 0).flatten().tolist():
        far = dist.argmax()
        labels[far] = empty
        dist[far] = -float("inf")
    return labels, torch.bincount(labels, minlength=counts.shape[0])


def kmeans(
    x: torch.Tensor,
    k: int,
    n_init: int,
    generator: torch.Generator,
    axis_starts: bool = False,
    fit_rows: int | None = None,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> KMeansFit:
    """Cluster (N, D) `x` into `k` groups: `n_init` seeded k-means++ starts, plus (``axis_starts``, two clusters)
    one `axis_split_starts` start per column; the run with the lowest inertia wins. With `fit_rows`, the starts
    run on a seeded sample of at most that many rows and the winner is then iterated on every row. `tol` is
    relative to the mean per-feature variance (as in scikit-learn). Empty clusters are re-seeded with the point
    farthest from its centre.
    """
    n = x.shape[0]
    abs_tol = tol * float(x.var(0).mean()) if n > 1 else 0.0
    sample = x if fit_rows is None or n <= fit_rows else x[sample_rows(n, fit_rows, generator, x.device)]
    starts = [_kmeans_pp(sample, k, generator) for _ in range(n_init)]
    if axis_starts and k == 2:
        starts += axis_split_starts(sample)
    fits = _lloyd_all(sample, torch.stack(starts), max_iter, abs_tol)
    best = min(fits, key=lambda fit: fit.inertia)
    return best if sample is x else _lloyd_all(x, best.centers[None], max_iter, abs_tol)[0]


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
