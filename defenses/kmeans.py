"""Seeded multi-start k-means (k-means++ initialisation, Lloyd iterations) and a silhouette score, in torch."""

from __future__ import annotations

from dataclasses import dataclass

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
    first = torch.randint(n, (1,), generator=generator).item()
    centers = [x[first]]
    closest = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        cumulative = closest.cumsum(0)
        total = float(cumulative[-1])
        if total <= 0:
            pick = torch.randint(n, (1,), generator=generator).item()
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


def _lloyd(x: torch.Tensor, centers: torch.Tensor, max_iter: int, tol: float) -> KMeansFit:
    """Lloyd iterations from `centers`. Assignment uses -2 x.c + |c|^2 (the squared distance less the per-row
    |x|^2, which does not change the argmin): one matrix product per step, no pairwise-distance kernel; with two
    clusters, one matrix-vector product against the bisecting hyperplane and one for the sums."""
    k = centers.shape[0]
    converged = False
    labels = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
    total = x.sum(0)
    for _ in range(max_iter):
        if k == 2:
            new_labels, counts, sums = _two_way_step(x, centers, total)
        else:
            new_labels, counts, sums = _step(x, centers)
        new_centers = sums / counts[:, None].to(x.dtype)
        shift = ((new_centers - centers) ** 2).sum()
        stable = torch.equal(new_labels, labels)
        centers, labels = new_centers, new_labels
        if stable or shift <= tol:
            converged = True
            break
    inertia = float(((x - centers[labels]) ** 2).sum(dtype=torch.float64))
    return KMeansFit(labels, centers, inertia, converged)


def _step(x: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assign every row to its nearest centre: (labels, counts, per-cluster sums), no cluster left empty."""
    k = centers.shape[0]
    partial = torch.addmm((centers * centers).sum(1), x, centers.T, alpha=-2.0)
    labels = partial.argmin(1)
    counts = torch.bincount(labels, minlength=k)
    if bool((counts == 0).any()):
        labels, counts = _fill_empty(x, partial, labels, counts)
    return labels, counts, torch.zeros_like(centers).index_add_(0, labels, x)


def _two_way_step(x: torch.Tensor, centers: torch.Tensor, total: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_step` for two centres: a row goes to centre 1 when x.(c1 - c0) > (|c1|^2 - |c0|^2) / 2."""
    norms = (centers * centers).sum(1)
    ones = (x @ (centers[1] - centers[0])) > (norms[1] - norms[0]) / 2
    n_ones = int(ones.sum())
    if n_ones in (0, x.shape[0]):
        return _step(x, centers)
    sum_ones = ones.to(x.dtype) @ x
    counts = torch.tensor([x.shape[0] - n_ones, n_ones], device=x.device)
    return ones.long(), counts, torch.stack([total - sum_ones, sum_ones])


def _fill_empty(x: torch.Tensor, partial: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor
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
    best: KMeansFit | None = None
    for start in starts:
        fit = _lloyd(sample, start, max_iter, abs_tol)
        if best is None or fit.inertia < best.inertia:
            best = fit
    return best if sample is x else _lloyd(x, best.centers, max_iter, abs_tol)


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
