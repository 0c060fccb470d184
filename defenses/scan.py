"""SCAn (Tang, Wang, Tang, Zhang, USENIX Security 2021, "Demon in the Variant"): a two-component decomposition of
the features into class identity and within-class variation, fitted on every training row, then per label group a
two-subgroup untangling whose likelihood-ratio statistic, compared across groups, says which group is infected.
Torch on the chosen device; the rows are streamed for the projection."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from artmed.defenses.base import Defense, DetectionResult, EvaluationContext, LabelGroups, check_finite
from artmed.defenses.decomposition import GroupPCA, RowStream, group_pca
from artmed.defenses.kmeans import KMeansFit, kmeans
from artmed.device import one_cpu_thread, resolve_device
from artmed.params import Bool, Int, OrNone, Real, Text

MAD_SCALE = 1.4826
"""Median absolute deviation to standard deviation for normal data (the paper's and its code's constant)."""


@dataclass
class DecompositionModel:
    """The fitted global model r = mu + e, mu ~ N(0, S_mu), e ~ N(0, S_e), in the basis `basis` (r', r') that whitens
    S_e (basis^T S_e basis = I) and diagonalises S_mu (basis^T S_mu basis = diag(`identity_variances`))."""

    basis: torch.Tensor
    identity_variances: torch.Tensor
    iterations: int
    converged: bool


class SCAn(Defense):
    """SCAn: global identity/variation decomposition, per-group untangling, MAD test of the untangling statistic.

    Model (Tang et al. 2021, Sec. 4, the two-component decomposition of a representation r of a class-k input):
    r = mu_k + e with identity mu_k ~ N(0, S_mu) and variation e ~ N(0, S_e). Global model: S_mu and S_e from every
    training row (centred features, label groups as the classes) by the paper's EM-like algorithm (that of Joint
    Bayesian face verification, Chen et al. 2012): E-step mu_k = S_mu (n_k S_mu + S_e)^(-1) sum_{i in k} r_i (the
    posterior identity of a class of n_k rows; the code's -S_e G sum r_i with G = -(n_k S_mu + S_e)^(-1) S_mu S_e^(-1)),
    e_i = r_i - mu_k; M-step S_mu = cov(mu_k(i)), S_e = cov(e_i); until the relative Frobenius change of (S_mu, S_e)
    is under `tol` or `max_iter` steps. Each step costs O(r^3 + L r^2) (L groups): the sums are taken from the
    group means and the total scatter, never from the rows again.

    Untangling (per label group of at least `min_group_size` rows): hypothesis H1 is that the group is a mixture of two
    subgroups with means mu_1, mu_2 and the shared within-class covariance S_e; the paper's hard-assignment EM puts
    row i in the subgroup nearer in the F = S_e^(-1) metric from a random start, which is 2-means in S_e-whitened
    coordinates. Here (a documented change: random starts rarely land on a subgroup of a few per cent) the 2-means
    runs on the group's top `split_components` principal directions in those coordinates, with activation
    clustering's seeded starts (`n_init` k-means++ starts plus the best split along each direction; fitted on at
    most `fit_rows` rows, then iterated on all), and mu_1, mu_2 are the subgroups' means in all dimensions. The
    statistic is the per-row log-likelihood ratio of H1 against H0 (one subgroup with the posterior identity mu_k)
    as the released code computes it,
    J_k = (1/n_k) sum_i [(r_i - mu_k)^T F (r_i - mu_k) - (r_i - mu_c(i))^T F (r_i - mu_c(i))]
    (the likelihood ratio's 1/2 factor cancels below). J*_k = (J_k - median J) / (1.4826 MAD J) over the analysed
    groups (the anomaly index; one-sided: a group untangling worse than the median is never infected, the code takes
    |J_k - median|); a group is infected when J*_k > `threshold` (paper: e^2 ~= 7.389).

    Group-size correction (`size_correction`, on by default; an addition to the paper, whose classes hold thousands
    of rows): under H0 J grows as the group shrinks, E0[J_k] = E[2-means gain of n_k standard normal rows in r
    dimensions] + sum_j 1 / (n_k (n_k lam_j + 1)) (the split overfits, and the posterior identity is shrunk towards
    0), e.g. 94 at n_k = 12, 4.7 at n_k = 400 and 1.4 at n_k = 4000 for r = 512 and lam = 0, so small label groups
    would be called infected on clean data (a clean 30-row group among 400-row ones: J* = 78 uncorrected). With the
    correction the MAD test runs on J_k - E0[J_k], the first term drawn once per group from the same seeded
    untangling (on at most `fit_rows` rows), the second exact under the fitted model. It is conservative for small
    groups (that 30-row group's corrected J* is -41): real groups split less easily than isotropic noise.

    Flags: the smaller subgroup of each infected group. Scores (for AUROC): max(J*_k, 0) times the row's posterior
    probability of belonging to its group's smaller subgroup under H1 (two unit-covariance Gaussians in S_e-whitened
    coordinates, weighted by subgroup size), so rows of the small subgroups of the most tangled groups score highest;
    0 where J*_k <= 0. ``extra["group_statistics"]`` holds each analysed group's J, J* and verdict,
    ``extra["infected_groups"]`` the names of the infected ones.

    The model works in the top `n_components` principal directions of all rows (None: every direction, at most
    N - L, the rank of the within-group scatter); the paper uses the full representation. With fewer than three
    analysed groups the MAD test has nothing to compare against: J* is 0 where the MAD is 0, and a warning says so.
    """

    name = "scan"
    kind = "detection"
    param_rules = {
        "threshold": Real(0.0, None, "()"),
        "size_correction": Bool(),
        "max_iter": Int(1),
        "split_components": Int(1),
        "n_init": Int(1),
        "n_components": OrNone(Int(1), text="None (all directions) or an integer >= 1"),
        "tol": Real(0.0, 1.0, "()"),
        "fit_rows": OrNone(Int(100), text="an integer >= 100 or None (all rows)"),
        "min_group_size": Int(4),
        "layer": Text(),
    }

    def __init__(
        self,
        *,
        threshold: float = math.exp(2.0),
        size_correction: bool = True,
        n_components: int | None = None,
        max_iter: int = 100,
        tol: float = 1e-4,
        split_components: int = 10,
        n_init: int = 10,
        fit_rows: int | None = 50_000,
        seed: int = 0,
        layer: str = "image_pooled",
        device: str = "auto",
        min_group_size: int = 10,
    ) -> None:
        self.threshold = threshold
        self.size_correction = size_correction
        self.n_components = n_components
        self.max_iter = max_iter
        self.tol = tol
        self.split_components = split_components
        self.n_init = n_init
        self.fit_rows = fit_rows
        self.seed = seed
        self.layer = layer
        self.device = device
        self.min_group_size = min_group_size
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()
        resolve_device(self.device)

    def run(self, context: EvaluationContext) -> DetectionResult:
        """Fit the global model on every training row, untangle each label group and flag the infected ones."""
        feats = check_finite(context.features(self.layer), self.layer)
        n = feats.shape[0]
        groups = LabelGroups.split(context.y_train, n, self.min_group_size, self.name)
        device = resolve_device(self.device)
        stream = RowStream(feats, device)
        members = [np.flatnonzero(groups.ids == g) for g in range(len(groups.names))]
        dims = min(self.n_components or stream.dim, stream.dim, n - len(members))
        if dims < 1:
            raise ValueError(f"{self.name}: {n} samples in {len(members)} label groups leave no within-group "
                             "variation to model")
        axes = group_pca(stream, np.arange(n), dims)
        generator = torch.Generator().manual_seed(int(self.seed))
        with one_cpu_thread(device):  # small r x r and k-means steps: threads only slow them on a busy CPU
            model = self._global_model(stream, axes, members)
            untangled = [self._untangle(stream, axes, model, idx, generator) for _, idx in groups.analysed]
        statistic = np.array([j - null for j, null, _, _ in untangled])
        index = anomaly_index(statistic, self.name)
        scores = np.zeros(n)
        flags = np.zeros(n, dtype=bool)
        group_statistics = []
        for (g, idx), (j, null, smaller, membership), j_star in zip(groups.analysed, untangled, index):
            infected = bool(j_star > self.threshold)
            flags[idx] = smaller & infected
            scores[idx] = max(j_star, 0.0) * membership
            group_statistics.append({"group": groups.names[g], "size": int(idx.shape[0]), "J": j, "J_null": null,
                                     "J_star": float(j_star), "infected": infected,
                                     "smaller_subgroup": int(smaller.sum()), "flagged": int(flags[idx].sum())})
        extra = {"layer": self.layer, "dims": dims, "em_iterations": model.iterations,
                 "em_converged": model.converged, "group_names": groups.names, "group_statistics": group_statistics,
                 "infected_groups": [entry["group"] for entry in group_statistics if entry["infected"]],
                 "skipped_groups": groups.skipped}
        return DetectionResult(scores, flags, groups.ids, extra)

    def _global_model(self, stream: RowStream, axes: GroupPCA, members: list[np.ndarray]) -> DecompositionModel:
        """S_mu and S_e by the EM-like algorithm, on every row (all label groups, however small), in PCA
        coordinates: the rows' total scatter there is diag(eigenvalues), each group's sum n_k (mean_k - mean)."""
        counts = torch.tensor([idx.shape[0] for idx in members], dtype=torch.float64, device=stream.device)
        means = torch.stack([stream.mean_of(idx) for idx in members])
        sums = counts[:, None] * ((means - axes.mean) @ axes.directions)
        return fit_decomposition(torch.diag(axes.eigenvalues), sums, counts, self.max_iter, self.tol)

    def _untangle(self, stream: RowStream, axes: GroupPCA, model: DecompositionModel, idx: np.ndarray,
                  generator: torch.Generator) -> tuple[float, float, np.ndarray, np.ndarray]:
        """J of the rows `idx`, its expectation under H0 for their number (0 without `size_correction`), which rows
        form the smaller subgroup, and each row's posterior probability of belonging to it."""
        white = axes.project(stream, idx) @ model.basis
        n = white.shape[0]
        lam = model.identity_variances
        identity = lam / (n * lam + 1.0) * white.sum(0)
        j, z, fit = self._split(white, identity, generator)
        null = self._null_statistic(n, lam, generator) if self.size_correction else 0.0
        sizes = torch.bincount(fit.labels, minlength=2)
        small = int(torch.argmin(sizes))
        log_odds = (torch.log(sizes[small].to(z.dtype) / sizes[1 - small].clamp_min(1))
                    + 0.5 * (z - fit.centers[1 - small]).square().sum(1)
                    - 0.5 * (z - fit.centers[small]).square().sum(1))
        return j, null, (fit.labels == small).cpu().numpy(), torch.sigmoid(log_odds).cpu().numpy()

    def _split(self, white: torch.Tensor, identity: torch.Tensor, generator: torch.Generator
               ) -> tuple[float, torch.Tensor, KMeansFit]:
        """Untangle the whitened rows (n, r): 2-means on their top `split_components` principal directions (seeded
        k-means++ and best-axis-split starts), then J in all r dimensions from the two subgroups' means. Returns J,
        the rows in the split's coordinates and the fit there."""
        centred = white - white.mean(0)
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        z = centred @ vectors[:, -min(self.split_components, white.shape[1]):]
        fit = kmeans(z, 2, self.n_init, generator, axis_starts=True, fit_rows=self.fit_rows)
        counts = torch.bincount(fit.labels, minlength=2).clamp_min(1).to(white.dtype)
        means = torch.zeros(2, white.shape[1], dtype=white.dtype, device=white.device)
        means = means.index_add_(0, fit.labels, white) / counts[:, None]
        j = ((white - identity).square().sum(1) - (white - means[fit.labels]).square().sum(1)).mean()
        return float(j), z, fit

    def _null_statistic(self, n: int, lam: torch.Tensor, generator: torch.Generator) -> float:
        """E0[J] for a group of `n` rows: the untangling gain of one seeded draw of min(n, `fit_rows`) standard normal
        rows in the model's dimensions plus the exact shrinkage term sum_j 1 / (n (n lam_j + 1))."""
        rows = n if self.fit_rows is None else min(n, self.fit_rows)
        z = torch.randn(rows, lam.shape[0], generator=generator, dtype=lam.dtype).to(lam.device)
        gain, _, _ = self._split(z, z.mean(0), generator)
        return gain + float((1.0 / (n * (n * lam + 1.0))).sum())


def fit_decomposition(scatter: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, max_iter: int,
                      tol: float) -> DecompositionModel:
    """The EM-like fit of S_mu, S_e from the centred rows' total scatter (r, r), the per-group sums (L, r) and sizes
    (L,), started (as the released code) from the covariances of the group means and of the rows about them.

    mu_k = S_mu (n_k S_mu + S_e)^(-1) s_k is computed in the basis W with W^T S_e W = I, W^T S_mu W = diag(lam):
    mu_k = W^-T diag(lam / (n_k lam + 1)) W^T s_k, W^-T = S_e W; the covariances of the N rows' identities and
    variations then follow from the sums: sum e e^T = scatter - S^T M - M^T S + M^T diag(n) M (M: the L identities).
    """
    total = counts.sum()
    identities = sums / counts[:, None]
    s_mu, s_e = _covariances(scatter, sums, counts, identities, total)
    iterations, converged = 0, False
    for iterations in range(1, max_iter + 1):
        basis, lam = _joint_basis(s_mu, s_e)
        identities = ((sums @ basis) * (lam / (counts[:, None] * lam + 1.0))) @ (s_e @ basis).T
        new_mu, new_e = _covariances(scatter, sums, counts, identities, total)
        change = (new_mu - s_mu).norm() + (new_e - s_e).norm()
        s_mu, s_e = new_mu, new_e
        if change <= tol * (s_mu.norm() + s_e.norm()):
            converged = True
            break
    basis, lam = _joint_basis(s_mu, s_e)
    return DecompositionModel(basis, lam, iterations, converged)


def _covariances(scatter: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, identities: torch.Tensor,
                 total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cov(mu_k(i)) and cov(r_i - mu_k(i)) over the rows (divided by N), from the group identities (L, r)."""
    weighted = identities.T @ (counts[:, None] * identities)
    mean_identity = counts @ identities / total
    cross = sums.T @ identities
    s_mu = weighted / total - torch.outer(mean_identity, mean_identity)
    s_e = (scatter - cross - cross.T + weighted) / total - torch.outer(mean_identity, mean_identity)
    return (s_mu + s_mu.T) / 2, (s_e + s_e.T) / 2


def _joint_basis(s_mu: torch.Tensor, s_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W (r, r) and lam (r,) with W^T S_e W = I and W^T S_mu W = diag(lam): S_e's eigenvalues under 1e-10 of its
    largest are raised to it (a direction the rows never vary in within their group is not blown up)."""
    values, vectors = torch.linalg.eigh(s_e)
    values = values.clamp_min(values.max().clamp_min(torch.finfo(s_e.dtype).tiny) * 1e-10)
    root = vectors * values.rsqrt()
    lam, rotation = torch.linalg.eigh(root.T @ s_mu @ root)
    return root @ rotation, lam.clamp_min(0.0)


def anomaly_index(statistic: np.ndarray, defense: str) -> np.ndarray:
    """J* = (J - median J) / (1.4826 MAD J); 0 everywhere when the MAD is 0 (fewer than three groups warn)."""
    if statistic.size < 3:
        warnings.warn(f"{defense}: {statistic.size} label group(s) analysed; the MAD test needs at least 3 to judge "
                      "one against the others, so no group is likely to be called infected", stacklevel=3)
    if statistic.size == 0:
        return statistic
    deviation = statistic - np.median(statistic)
    scale = MAD_SCALE * np.median(np.abs(deviation))
    return deviation / scale if scale > 0 else np.zeros_like(statistic)
