"""SPECTRE (Hayase, Kong, Somani, Oh, ICML 2021): per label group, project the features on their top principal
directions, estimate the clean rows' mean and covariance robustly, whiten with them and flag the rows with the largest
QUantum Entropy (QUE) scores. Torch on the chosen device; the group's rows are streamed for the projection, and the
robust filter's small dense eigensolves run in LAPACK (SciPy, on the CPU).

By default every step that changes which rows are flagged is the authors' released code (SewoongLab/spectre-defense,
Julia: ``quantum_filters.jl``, ``dkk17.jl``, ``util.jl``): the filter of Diakonikolas et al. (2017) with its tail
test and stopping rule, the k grid 1, 4, ..., 100, whitening about all rows' mean, 1.5·eps·n rounded to the nearest
integer. artmed's earlier choices remain as options (``robust_filter="capped"``, ``max_components=64, k_steps=8``,
``whitening="artmed"``, ``rounding="floor"``); all four together give its earlier results bit for bit."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits

from artmed.defenses.base import (
    DEFAULT_GROUPING,
    GROUPING_RULE,
    Defense,
    DetectionResult,
    EvaluationContext,
    LabelGroups,
    check_finite,
    share_count,
)
from artmed.defenses.decomposition import RowStream, group_pca
from artmed.device import one_cpu_thread, resolve_device
from artmed.params import Choice, Int, OrNone, Real, Text

AUTO_K_STEPS = 10
"""Candidate dimensions of the automatic choice (the default of ``k_steps``): round(linspace(1, sqrt(k_max), 10)^2),
so 1, 4, 9, ..., 100 for k_max = 100, the released code's grid (``rcov_auto_quantum_filter``). The ports in
backdoor-toolbox and BackdoorBench, and artmed before, take 8 steps to 64 (``k_steps=8, max_components=64``)."""
POWER_STEPS = 10
"""Power-iteration steps per round of the capped filter (``robust_filter="capped"``) for the fourth-moment direction
(warm-started from the previous round)."""
TAU = 0.1
"""The released filter's confidence tau: rows with squared whitened norm >= 10·k·log(m / tau) are cut at once."""
TAIL_SHIFT = 3.0
"""The released filter's shift: a row is only cut when its |p_i - median p| exceeds the threshold by this much."""


@dataclass
class KFit:
    """One candidate dimension `k` of a group: QUE scores (n,) and the rows the robust covariance kept (n,)."""

    k: int
    scores: torch.Tensor
    kept: torch.Tensor


class SPECTRE(Defense):
    """SPECTRE: robust whitening plus QUE scoring per label group; flags the top `removal_share`·`eps` of each group.

    For each label group of n rows (Hayase et al. 2021, Algorithm 1 "SPECTRE", with the QUE score of Dong, Hopkins
    and Li 2019):

    1. PCA: project the centred features on the group's top-k principal directions, h_i in R^k.
    2. Robust covariance: Sigma, the covariance of the rows the filter of `robust_filter` keeps.
    3. Whitening: h~_i = Sigma^(-1/2) h_i, about all rows' mean as the released code does (``whitening="artmed"``:
       about the kept rows' mean); Sigma~ = covariance of all h~_i (> I along the directions the dropped rows, i.e. the
       poison, stretch), with n - 1 in its denominator as released (``"artmed"``: n).
    4. QUE score: tau_i = h~_i^T Q h~_i / tr(Q) with Q = exp(alpha (Sigma~ - I) / (||Sigma~||_2 - 1)) (for
       ||Sigma~||_2 <= 1, where the released formula divides by zero or turns, Q = I: the squared Mahalanobis norm);
       clean rows score about 1.
    5. Flag the round(`removal_share`·`eps`·n) rows with the largest tau (the released ``limit2 = 1.5``; ties to
       even as Julia's ``round``; ``rounding="floor"``: floor, as SS's `eps`).

    k: `k` when given, else chosen automatically as the released code does: for each k of the grid
    round(linspace(1, sqrt(k_max), `k_steps`)^2), run steps 2-5; whiten the top-k_max projection by the covariance of
    the rows that k did not flag and keep the (first) k whose whitened covariance S has the largest QUE-weighted
    spectrum tr(S M) / tr(M), M = exp(alpha (S - I) / (||S||_2 - 1)) (both covariances with n - 1 as released,
    ``whitening="artmed"``: n). k_max = min(`max_components`, D, (n - m) // 2) with m the filter's cap (at least two
    kept rows per dimension): 100, so 1, 4, ..., 100, where the group allows, as released (its ports and artmed
    before: ``max_components=64, k_steps=8``). k = 1 scores the squared projection on the top direction (the
    spectral signature, as in the released code), divided by its variance (the same order; scores compare across
    groups).

    Robust filter ``robust_filter="dkk17"`` (the default; ``dkk17.jl``, ``cov_estimation_iterate`` called as
    ``quantum_filters.jl`` does): round after round, the kept rows are whitened by their second moment about all
    rows' mean (y_i, m rows); rows with |y_i|^2 >= 10·k·log(m / 0.1) are cut at once; otherwise the top eigenpair
    (lambda, V) of T(V) = mean_i (y_i^T V y_i) y_i y_i^T - tr(V) I is found (KrylovKit's ``eigsolve`` in the
    released code; here an exact eigensolve of an (m + 1)-dimensional equivalent, `top_fourth_moment_pair`).
    lambda <= 1 + 10·eps·log(1/eps)^2 means the kept rows look Gaussian: the filter stops and keeps them all. Else,
    with p_i = (y_i^T V y_i - tr V) / sqrt(2) and d_i = |p_i - median p| in increasing order, the first i with
    d_i >= 3 and i/m >= tail(d_i - 3) (tail(T) = 1 for T <= 10·log(1/eps), else 3·eps / (T log T)^2) sets the cut:
    rows with d > d_i - 3 go; no such i stops the filter. Never more than round(`filter_share`·`eps`·n) rows go in all
    (the released ``limit1 = 2``), which also stops it.
    ``robust_filter="capped"`` (artmed before): `filter_rounds` rounds that each whiten the kept rows by their own
    mean and covariance, take V from `POWER_STEPS` warm-started power-iteration steps on T and drop the rows with the
    largest |p_i - median p| until floor(`filter_share`·`eps`·n) rows are gone: no tail test, so it always drops its
    full cap, also from clean data. The released filter costs far more: on a group of 400 rows of 128-d features it
    takes about 2 s of one CPU core against 0.14 s for the capped one (mostly k = 64-100, where the Gaussian test
    never passes on so few rows and each round runs an eigensolve and cuts only a few rows until the cap).

    Paper defaults: alpha = 4, flags 1.5·eps·n, filter cap 2·eps·n. Scores are the tau of the chosen k (clean rows
    near 1 in every group, so they compare across groups); groups under `min_group_size` rows are never flagged.
    """

    name = "spectre"
    kind = "detection"
    param_rules = {
        "eps": Real(0.0, 1.0, "(]"),
        "removal_share": Real(0.0, None, "()"),
        "filter_share": Real(0.0, None),
        "alpha": Real(0.0, None, "()"),
        "max_components": Int(1),
        "k_steps": Int(1),
        "robust_filter": Choice(("dkk17", "capped")),
        "filter_rounds": Int(1),
        "whitening": Choice(("released", "artmed")),
        "rounding": Choice(("nearest", "floor")),
        "k": OrNone(Int(1), text="None (automatic) or an integer in [1, max_components]"),
        "min_group_size": Int(4),
        "layer": Text(),
        "grouping": GROUPING_RULE,
    }

    def __init__(
        self,
        *,
        eps: float = 0.05,
        removal_share: float = 1.5,
        filter_share: float = 2.0,
        alpha: float = 4.0,
        k: int | None = None,
        max_components: int = 100,
        k_steps: int = AUTO_K_STEPS,
        robust_filter: str = "dkk17",
        filter_rounds: int = 4,
        whitening: str = "released",
        rounding: str = "nearest",
        layer: str = "image_pooled",
        device: str = "auto",
        min_group_size: int = 10,
        grouping: str = DEFAULT_GROUPING,
    ) -> None:
        self.eps = eps
        self.removal_share = removal_share
        self.filter_share = filter_share
        self.alpha = alpha
        self.k = k
        self.max_components = max_components
        self.k_steps = k_steps
        self.robust_filter = robust_filter
        self.filter_rounds = filter_rounds
        self.whitening = whitening
        self.rounding = rounding
        self.layer = layer
        self.device = device
        self.min_group_size = min_group_size
        self.grouping = grouping
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()
        if self.filter_share * self.eps > 0.5:
            raise ValueError(
                f"filter_share must be >= 0 with filter_share * eps <= 0.5 (the robust covariance keeps "
                f"at least half of each group), got {self.filter_share!r} with eps {self.eps!r}"
            )
        if self.k is not None and self.k > self.max_components:
            raise ValueError(
                f"k must be None (automatic) or an integer in [1, max_components={self.max_components}], got {self.k!r}"
            )
        resolve_device(self.device)

    def run(self, context: EvaluationContext) -> DetectionResult:
        """Score and flag every label group of `context` from its `layer` features."""
        feats = check_finite(context.features(self.layer), self.layer)
        groups = LabelGroups.split(context, feats.shape[0], self.min_group_size, self.name, self.grouping)
        device = resolve_device(self.device)
        stream = RowStream(feats, device)
        scores = np.zeros(feats.shape[0])
        flags = np.zeros(feats.shape[0], dtype=bool)
        per_group = []
        for g, idx in groups.analysed:
            n = idx.shape[0]
            n_flag = self._count(n, self.removal_share * self.eps)
            # many small k x k steps and LAPACK calls (the filter's eigensolves): threads only slow them on a busy CPU
            with one_cpu_thread(device), threadpool_limits(limits=1, user_api="blas"):
                fit, candidates, filtered = self._group(stream, idx, n_flag)
            scores[idx] = fit.scores.cpu().numpy()
            flags[idx[np.argsort(-scores[idx], kind="stable")[:n_flag]]] = True
            per_group.append(
                {
                    "group": groups.names[g],
                    "size": n,
                    "flagged": n_flag,
                    "k": fit.k,
                    "filtered": int((~fit.kept).sum()),
                    "k_selection": candidates,
                    "k_filtered": filtered,
                }
            )
        extra = {
            "layer": self.layer,
            "group_names": groups.names,
            "per_group": per_group,
            "skipped_groups": groups.skipped,
        }
        return DetectionResult(scores, flags, groups.ids, extra)

    def _count(self, n: int, share: float) -> int:
        """How many of a group's `n` rows a `share` covers: round(share·n) (ties to even, as Julia's ``round``; the
        product is first rounded to 9 decimals so that 1.5·0.05·100 is the tie 7.5) or, with ``rounding="floor"``,
        floor(share·n) (``share_count``); at most n."""
        if self.rounding == "floor":
            return share_count(n, share)
        return min(round(round(share * n, 9)), n)

    def _group(self, stream: RowStream, idx: np.ndarray, n_flag: int) -> tuple[KFit, dict[int, float], dict[int, int]]:
        """The chosen dimension's fit for the rows `idx` (of which `n_flag` are flagged), and each candidate k's
        selection value and number of rows its filter dropped (automatic k only)."""
        n = idx.shape[0]
        budget = self._count(n, self.filter_share * self.eps)
        k_max = max(1, min(self.max_components, stream.dim, (n - budget) // 2))
        h = group_pca(stream, idx, k_max).project(stream, idx)
        if self.k is not None:
            return self._fit(h[:, : min(self.k, k_max)], budget), {}, {}
        grid = sorted({max(1, round(v**2)) for v in np.linspace(1.0, math.sqrt(k_max), self.k_steps)})
        best: KFit | None = None
        best_value = -math.inf
        values: dict[int, float] = {}
        filtered: dict[int, int] = {}
        for k in grid:
            fit = self._fit(h[:, :k], budget)
            filtered[k] = int((~fit.kept).sum())
            unflagged = torch.ones(n, dtype=torch.bool, device=h.device)
            unflagged[torch.argsort(fit.scores, descending=True, stable=True)[:n_flag]] = False
            values[k] = self._selection_value(h, unflagged)
            if values[k] > best_value:
                best, best_value = fit, values[k]
        return best, values, filtered  # type: ignore[return-value]  # None only if every value is NaN: fails as before

    def _fit(self, h: torch.Tensor, budget: int) -> KFit:
        """QUE scores of the (n, k) projections `h` after whitening by the robust mean and covariance (steps 2-4)."""
        n, k = h.shape
        if k == 1:
            centred = h[:, 0] - h[:, 0].mean()
            variance = centred.square().mean().clamp_min(torch.finfo(h.dtype).tiny)
            return KFit(1, centred.square() / variance, torch.ones(n, dtype=torch.bool, device=h.device))
        if self.robust_filter == "capped":
            kept = capped_filter(h, budget, self.filter_rounds)
        else:
            kept = dkk17_filter(h, self.eps, budget)
        rows = h[kept]
        if self.whitening == "artmed":
            white = (h - rows.mean(0)) @ inverse_sqrt(covariance(rows))
            return KFit(k, que_scores(white, covariance(white), self.alpha), kept)
        white = h @ inverse_sqrt(covariance(rows))
        return KFit(k, que_scores(white, covariance(white, unbiased=True), self.alpha), kept)

    def _selection_value(self, h: torch.Tensor, unflagged: torch.Tensor) -> float:
        """tr(S M) / tr(M) of S, the covariance of all rows whitened by that of the `unflagged` ones (auto k)."""
        unbiased = self.whitening == "released"
        root = inverse_sqrt(covariance(h[unflagged], unbiased))
        eigenvalues = torch.linalg.eigvalsh(root @ covariance(h, unbiased) @ root)
        weights = que_weights(eigenvalues, self.alpha)
        return float((weights * eigenvalues).sum() / weights.sum())


def covariance(x: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Covariance (k, k) of the rows of (n, k) `x`, divided by n (by n - 1 when `unbiased`, Julia's ``cov``)."""
    centred = x - x.mean(0)
    return centred.T @ centred / (x.shape[0] - 1 if unbiased else x.shape[0])


def inverse_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Sigma^(-1/2) of a symmetric positive semi-definite matrix; eigenvalues under 1e-12 of the largest are raised
    to it (a direction without spread is not blown up)."""
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    floor = eigenvalues.max().clamp_min(torch.finfo(matrix.dtype).tiny) * 1e-12
    return (vectors * eigenvalues.clamp_min(floor).rsqrt()) @ vectors.T


def que_weights(eigenvalues: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eigenvalues of Q = exp(alpha (S - I) / (||S||_2 - 1)) for a PSD S with these `eigenvalues`, scaled by
    exp(-alpha) (a factor every use divides out); all ones when ||S||_2 <= 1."""
    top = eigenvalues.max()
    if top - 1.0 <= 1e-9:
        return torch.ones_like(eigenvalues)
    return torch.exp(alpha * (eigenvalues - 1.0) / (top - 1.0) - alpha)


def que_scores(white: torch.Tensor, sigma: torch.Tensor, alpha: float) -> torch.Tensor:
    """QUE scores tau_i = x_i^T Q x_i / tr(Q) of the whitened rows `white`, Q from their covariance `sigma`."""
    eigenvalues, vectors = torch.linalg.eigh(sigma)
    weights = que_weights(eigenvalues, alpha)
    return (white @ vectors).square() @ weights / weights.sum()


def capped_filter(h: torch.Tensor, budget: int, rounds: int) -> torch.Tensor:
    """Rows of (n, k) `h` kept by the capped fourth-moment filter (``robust_filter="capped"``): `budget` rows
    dropped over `rounds` rounds (see `SPECTRE`); a bool mask (n,)."""
    n, k = h.shape
    kept = torch.ones(n, dtype=torch.bool, device=h.device)
    direction = torch.eye(k, dtype=torch.float32, device=h.device) / math.sqrt(k)
    dropped = 0
    for r in range(rounds):
        take = budget * (r + 1) // rounds - dropped
        if take <= 0:
            continue
        positions = torch.nonzero(kept).squeeze(1)
        rows = h[positions]
        white = ((rows - rows.mean(0)) @ inverse_sqrt(covariance(rows))).to(torch.float32)
        direction = fourth_moment_direction(white, direction)
        p = (((white @ direction) * white).sum(1) - direction.trace()) / math.sqrt(2.0)
        deviation = (p - p.median()).abs()
        kept[positions[torch.topk(deviation, take).indices]] = False
        dropped += take
    return kept


def fourth_moment_direction(white: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """The unit-Frobenius symmetric V (k, k) maximising mean_i (y_i^T V y_i)^2 - tr(V)^2 over the whitened rows
    `white` (m, k): `POWER_STEPS` power-iteration steps of T(V) = mean_i (y_i^T V y_i) y_i y_i^T - tr(V) I from
    `start` (T is positive semi-definite on rows whitened by their own covariance)."""
    m, k = white.shape
    identity = torch.eye(k, dtype=white.dtype, device=white.device)
    v = start
    for _ in range(POWER_STEPS):
        quadratic = ((white @ v) * white).sum(1)
        v = (white.T * quadratic) @ white / m - v.trace() * identity
        v = (v + v.T) / 2
        v = v / v.norm().clamp_min(torch.finfo(v.dtype).tiny)
    return v


def dkk17_filter(h: torch.Tensor, eps: float, limit: int) -> torch.Tensor:
    """Rows of (n, k) `h` kept by the released filter of Diakonikolas et al. 2017 (``cov_estimation_iterate`` of
    ``dkk17.jl``, see `SPECTRE`): rounds of `dkk17_round` until one finds the kept rows Gaussian or no cut, or `limit`
    rows are gone; a bool mask (n,). `h` is centred on all its rows' mean: the rounds whiten about that point."""
    positions = torch.arange(h.shape[0], device=h.device)
    rows = h
    while limit > 0:
        select = dkk17_round(rows, eps, limit)
        if select is None or bool(select.all()):  # Julia would loop for ever on a round that cuts nothing
            break
        limit -= int((~select).sum())
        rows, positions = rows[select], positions[select]
    kept = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)
    kept[positions] = True
    return kept


def dkk17_round(rows: torch.Tensor, eps: float, limit: int) -> torch.Tensor | None:
    """One round of the released filter (``cov_estimation_filter``) on the (m, k) `rows`: the rows it keeps (bool
    (m,), at most `limit` cut), or None where it stops (the rows look Gaussian, or no row passes the tail test)."""
    m, k = rows.shape
    white = rows @ inverse_sqrt(rows.T @ rows / m)
    norms = white.square().sum(1)
    outliers = norms >= 10 * k * math.log(m / TAU)
    if bool(outliers.any()):
        return ~outliers | lowest(norms, max(0, m - limit))
    value, direction = top_fourth_moment_pair(white)
    log_eps = math.log(1.0 / eps)
    if value <= 1.0 + 10.0 * eps * log_eps**2:  # Q(V) / 2 = ||V||_F^2 = 1: the released Gaussian test
        return None
    direction = (direction + direction.T) / 2
    p = (((white @ direction) * white).sum(1) - direction.trace()) / math.sqrt(2.0)
    ordered = p.sort().values
    median = (ordered[(m - 1) // 2] + ordered[m // 2]) / 2  # Julia's median: the middle pair's mean
    deviation = (p - median).abs()
    ascending = deviation.sort().values
    excess = ascending - TAIL_SHIFT
    tail = torch.where(
        excess <= 10.0 * log_eps,
        torch.ones_like(excess),
        3.0 * eps / (excess * excess.clamp_min(torch.finfo(excess.dtype).tiny).log()).square(),
    )
    rank = torch.arange(1, m + 1, device=rows.device, dtype=excess.dtype) / m
    passing = torch.nonzero((excess > 0) & (rank >= tail))
    if passing.numel() == 0:
        return None
    cut = excess[passing[0, 0]]
    return (deviation <= cut) | lowest(deviation, max(0, m - limit))


def lowest(values: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask of the `count` smallest `values` (all values tied with the count-th too; none for 0): util.jl's
    ``k_lowest_ind``."""
    if count == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    return values <= values.sort().values[count - 1]


def top_fourth_moment_pair(white: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The top eigenvalue and unit-Frobenius eigenvector V (k, k) of T(V) = mean_i (y_i^T V y_i) y_i y_i^T - tr(V) I
    over the (m, k) rows `white`, exact to rounding: the pair the released code's KrylovKit ``eigsolve(T, ones(k^2))``
    converges to (to its tolerance; for a repeated top eigenvalue, which has no single eigenvector, its pick depends
    on the start, this one on the pivoting). The sign of V is fixed by sum(V) >= 0; no use of V sees it (p and its
    median change sign together).

    As a k^2 x k^2 matrix, T = B J B^T with B = [vec(y_1 y_1^T) / sqrt(m), ..., vec(y_m y_m^T) / sqrt(m), vec(I)] and
    J = diag(1, ..., 1, -1). So with the Gram G = B^T B ((m + 1) x (m + 1): (y_i . y_j)^2 / m, |y_i|^2 / sqrt(m), k)
    factored as G = F F^T (pivoted Cholesky, to G's numerical rank r <= min(m + 1, k (k + 1) / 2): whitening alone
    makes vec(I) the mean of the vec(y_i y_i^T)), the symmetric r x r matrix H = F^T J F has the nonzero eigenvalues
    of T, and an eigenvector z of H gives T's as v = B J F z (T v = B J G J F z = B J F H z). This needs no positive
    semi-definiteness (whitening that raised tiny eigenvalues leaves T indefinite; with no positive eigenvalue, the
    largest nonzero one is returned, and the Gaussian test passes either way) and costs one top-eigenpair solve of at
    most m + 1 rows, against a Lanczos search over k^2-dimensional products that slows with the gap."""
    m, k = white.shape
    gram = torch.empty(m + 1, m + 1, dtype=white.dtype, device=white.device)
    products = gram[:m, :m]
    torch.matmul(white, white.T, out=products)
    gram[m, :m] = gram[:m, m] = products.diagonal() / math.sqrt(m)
    products.square_().div_(m)
    gram[m, m] = k
    gram_cpu = gram.cpu().numpy()
    pstrf, lauum = scipy.linalg.lapack.get_lapack_funcs(("pstrf", "lauum"), (gram_cpu,))
    factor, pivots, rank, _ = pstrf(gram_cpu, lower=1)  # G[p][:, p] = L L^T with p = pivots - 1, L (m + 1, rank)
    factor = np.tril(factor[:, :rank])
    h, _ = lauum(factor[:rank], lower=1)  # L^T L (lower triangle): its triangular head's part plus its tail's
    h += factor[rank:].T @ factor[rank:]
    flipped = factor[np.flatnonzero(pivots == m + 1)[0]]  # the row of vec(I), which J negates
    h -= 2.0 * np.outer(flipped, flipped)
    values, vectors = scipy.linalg.eigh(h, lower=True, subset_by_index=[rank - 1, rank - 1], check_finite=False)
    weights = np.empty(m + 1, dtype=factor.dtype)
    weights[pivots - 1] = factor @ vectors[:, 0]  # F z in G's order; v = B J F z
    weights[m] = -weights[m]
    coefficients = torch.from_numpy(weights).to(white.device)
    identity = torch.eye(k, dtype=white.dtype, device=white.device)
    vector = (white.T * (coefficients[:m] / math.sqrt(m))) @ white + coefficients[m] * identity
    vector = vector / vector.norm().clamp_min(torch.finfo(vector.dtype).tiny)
    return float(values[0]), vector if bool(vector.sum() >= 0) else -vector
