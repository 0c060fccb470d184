"""SCAn (Tang, Wang, Tang, Zhang, USENIX Security 2021, "Demon in the Variant"): a two-component decomposition of
the features into class identity and within-class variation, fitted (as released) on the defender's clean set, then
per label group of the training rows a two-subgroup untangling whose statistic, compared across groups, says which
group is infected. Torch on the chosen device; the rows are streamed for the projection."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from artmed.data.dataset import ImageSet
from artmed.defenses.base import (
    DEFAULT_GROUPING,
    GROUPING_RULE,
    Defense,
    DetectionResult,
    EvaluationContext,
    LabelGroups,
    check_finite,
    load_images,
    read_only,
    row_groups,
)
from artmed.defenses.decomposition import GroupPCA, RowStream, group_pca
from artmed.defenses.kmeans import KMeansFit, kmeans
from artmed.device import one_cpu_thread, resolve_device
from artmed.params import Bool, Choice, Int, OrNone, Real, Text

MAD_SCALE = 1.4826
"""Median absolute deviation to standard deviation for normal data (the paper's and its code's constant)."""
UNTANGLE_STEPS = 100
"""The released untangling's cap on its hard-assignment EM steps."""
CLEAN_KEY = "{layer}@x_clean"
"""``context.feature_cache`` key of the clean set's features of a layer (filled on first use from ``x_clean``)."""


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

    By default every choice that changes results is that of the authors' release (TDteach/Demon-in-the-Variant
    2da3942: pysrc/SCAn.py, and for the global fit's rows msrc/SCAn.m); artmed's former variant is one option per
    choice, and all of them together (identity="posterior", global_fit="all_rows", global_em="artmed",
    untangling="pca_kmeans", one_sided=True, size_correction=True, tol=1e-4) give exactly its former results.

    Model (Sec. 4): a representation r of a class-k input is r = mu_k + e, identity mu_k ~ N(0, S_mu), variation
    e ~ N(0, S_e). Global model (`global_fit`): "clean" (released: msrc/SCAn.m fits it on clean rows only, a share of
    the rows whose label is their original one) fits S_mu, S_e on the defender's clean set, ``context.x_clean`` with
    ``y_clean`` (its `layer` features computed once through the estimator and cached in ``context.feature_cache``
    under "<layer>@x_clean", where feature-only callers may put them); a context without one raises a ValueError.
    "all_rows" fits them on every training row. The fit is the release's EM-like algorithm (Joint Bayesian, Chen et
    al. 2012), the rows centred on their mean: start from the covariances of the per-row group means and of the rows
    about them, then E-step mu_k = S_mu (n_k S_mu + S_e)^(-1) sum_{i in k} r_i (the code's -S_e G sum r_i with
    G = -(n_k S_mu + S_e)^(-1) S_mu S_e^(-1)), e_i = r_i - mu_k; M-step S_mu = cov(mu_k(i)), S_e = cov(e_i).
    `global_em`: "released" takes np.cov's covariances (divided by N - 1) and stops after the step that changes
    ||S_mu||_F + ||S_e||_F by at most `tol` (released 1e-2, absolute) or after `max_iter` (100) steps; "artmed"
    divides by N and stops when the change is at most `tol` (||S_mu||_F + ||S_e||_F). Each step costs O(r^3 + L r^2)
    (L groups): the sums come from the group means and the total scatter, never from the rows again. (The MATLAB
    global_model.m subtracts a scalar, u_m(k), instead of the row u_m(k, :) from each row when it forms e: an
    indexing slip the Python release and the paper do not have; artmed follows the Python.)

    Untangling (per label group of at least `min_group_size` training rows, centred on the training rows' mean as
    the released local model centres them; with global_fit="all_rows" that mean is the fitted one): H1 says the group
    is a mixture of two subgroups with means u_1, u_2 and the shared S_e. `untangling`: "released" (find_split) puts
    each row at random in a subgroup (np.random.RandomState(`seed` mod 2^32).rand(n_k) >= 0.5, one draw per analysed
    group in order, as the release's np.random.rand after np.random.seed(seed)), then runs hard-assignment EM in the
    F = S_e^(-1) metric (each row to the nearer mean) for at most 100 steps, until no row moves, every row moves or a
    side empties; u_1, u_2 are the means of its last M-step. "pca_kmeans" (artmed: random starts rarely land on a
    subgroup of a few per cent) runs 2-means on the group's top `split_components` principal directions in
    S_e-whitened coordinates, with activation clustering's seeded starts (`n_init` k-means++ starts plus the best
    split along each direction; fitted on at most `fit_rows` rows, then iterated on all), u_1, u_2 then the subgroups'
    means in all dimensions. The statistic (calc_test) is
    J_k = (1/n_k) sum_i [(r_i - mu_k)^T F (r_i - mu_k) - (r_i - u_c(i))^T F (r_i - u_c(i))]
    with the class identity mu_k of `identity`: "released" mu_k = S_e (n_k S_mu + S_e)^(-1) sum_i r_i (calc_test's
    G = -(n_k S_mu + S_e)^(-1), without the S_mu F of its EM; then J_k is about the squared F-norm of the group's mean,
    thousands at d = 64), "posterior" mu_k = S_mu (n_k S_mu + S_e)^(-1) sum_i r_i (the posterior mean the EM uses).
    J*_k = |J_k - median J| / (1.4826 MAD J) over the analysed groups (released calc_anomaly_index: two-sided, so a
    group untangling far better than the others is called infected too; its division of J by max J changes nothing);
    `one_sided` takes (J_k - median J) / (1.4826 MAD J) instead. A group is infected when J*_k > `threshold` (the
    paper's e^2 ~= 7.389; the release only computes J*).

    Group-size correction (`size_correction`, artmed's option, off as released; the paper's classes hold thousands of
    rows): under H0 J grows as the group shrinks, E0[J_k] = E[2-means gain of n_k standard normal rows in r
    dimensions] + E|mean - identity|^2 (sum_j 1 / (n_k (n_k lam_j + 1)) for the posterior identity, sum_j
    (lam_j + 1/n_k) (1 - n_k / (n_k lam_j + 1))^2 for the released one), e.g. 94 at n_k = 12, 4.7 at n_k = 400 and
    1.4 at n_k = 4000 for r = 512, lam = 0 and the posterior identity, so small label groups would be called infected
    on clean data (a clean 30-row group among 400-row ones: J* = 78 uncorrected). With the correction the MAD test
    runs on J_k - E0[J_k], the first term drawn once per group from the same seeded untangling (on at most
    `fit_rows` rows), the second exact under the fitted model. It is conservative for small groups (that 30-row
    group's corrected J* is -41): real groups split less easily than isotropic noise.

    Flags (artmed's; the release stops at J*): the smaller subgroup of each infected group. Scores (for AUROC):
    max(J*_k, 0) times the row's posterior probability of belonging to its group's smaller subgroup under H1 (two
    unit-covariance Gaussians in S_e-whitened coordinates at u_1, u_2, weighted by subgroup size), so rows of the
    small subgroups of the most tangled groups score highest. ``extra["group_statistics"]`` holds each analysed
    group's J, J* and verdict, ``extra["infected_groups"]`` the names of the infected ones.

    The model works in the top `n_components` principal directions of the fitted rows (None: every direction, at
    most N - L of the fitted rows, the rank of their within-group scatter, so S_e is invertible); the release uses the
    full representation and pinv(S_e), the same wherever the clean set has more than D + L rows. Unlike the release,
    which analyses every class, groups under `min_group_size` rows are skipped. With fewer than three analysed groups
    the MAD test has nothing to compare against: J* is 0 where the MAD is 0, and a warning says so.
    """

    name = "scan"
    kind = "detection"
    param_rules = {
        "threshold": Real(0.0, None, "()"),
        "identity": Choice(("released", "posterior")),
        "global_fit": Choice(("clean", "all_rows")),
        "global_em": Choice(("released", "artmed")),
        "untangling": Choice(("released", "pca_kmeans")),
        "one_sided": Bool(),
        "size_correction": Bool(),
        "max_iter": Int(1),
        "split_components": Int(1),
        "n_init": Int(1),
        "n_components": OrNone(Int(1), text="None (all directions) or an integer >= 1"),
        "tol": Real(0.0, 1.0, "()"),
        "fit_rows": OrNone(Int(100), text="an integer >= 100 or None (all rows)"),
        "min_group_size": Int(4),
        "layer": Text(),
        "grouping": GROUPING_RULE,
    }

    def __init__(
        self,
        *,
        threshold: float = math.exp(2.0),
        identity: str = "released",
        global_fit: str = "clean",
        global_em: str = "released",
        untangling: str = "released",
        one_sided: bool = False,
        size_correction: bool = False,
        n_components: int | None = None,
        max_iter: int = 100,
        tol: float = 1e-2,
        split_components: int = 10,
        n_init: int = 10,
        fit_rows: int | None = 50_000,
        seed: int = 0,
        layer: str = "image_pooled",
        device: str = "auto",
        min_group_size: int = 10,
        grouping: str = DEFAULT_GROUPING,
    ) -> None:
        self.threshold = threshold
        self.identity = identity
        self.global_fit = global_fit
        self.global_em = global_em
        self.untangling = untangling
        self.one_sided = one_sided
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
        self.grouping = grouping
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()
        resolve_device(self.device)

    def run(self, context: EvaluationContext) -> DetectionResult:
        """Fit the global model (on the clean set or every training row), untangle each label group and flag the
        infected ones."""
        feats = check_finite(context.features(self.layer), self.layer)
        n = feats.shape[0]
        groups = LabelGroups.split(context, n, self.min_group_size, self.name, self.grouping)
        device = resolve_device(self.device)
        stream = RowStream(feats, device)
        members = [np.flatnonzero(groups.ids == g) for g in range(len(groups.names))]
        fit_stream, fit_members = self._clean_set(context, device) if self.global_fit == "clean" else (stream, members)
        dims = min(self.n_components or stream.dim, stream.dim, fit_stream.n - len(fit_members))
        if dims < 1:
            raise ValueError(
                f"{self.name}: {fit_stream.n} samples in {len(fit_members)} label groups "
                f"(global_fit={self.global_fit!r}) leave no within-group variation to model"
            )
        axes = group_pca(fit_stream, np.arange(fit_stream.n), dims)
        origin = None if self.global_fit == "all_rows" else stream.mean_of(np.arange(n)) @ axes.directions
        generator = torch.Generator().manual_seed(int(self.seed))
        starts = np.random.RandomState(int(self.seed) % 2**32)  # the released untangling's np.random.rand starts
        with one_cpu_thread(device):  # small r x r and k-means steps: threads only slow them on a busy CPU
            model = self._global_model(fit_stream, axes, fit_members)
            untangled = [
                self._untangle(self._coordinates(stream, axes, origin, idx) @ model.basis, model, generator, starts)
                for _, idx in groups.analysed
            ]
        statistic = np.array([j - null for j, null, _, _ in untangled])
        index = anomaly_index(statistic, self.name, self.one_sided)
        scores = np.zeros(n)
        flags = np.zeros(n, dtype=bool)
        group_statistics = []
        for (g, idx), (j, null, smaller, membership), j_star in zip(groups.analysed, untangled, index):
            infected = bool(j_star > self.threshold)
            flags[idx] = smaller & infected
            scores[idx] = max(j_star, 0.0) * membership
            group_statistics.append(
                {
                    "group": groups.names[g],
                    "size": int(idx.shape[0]),
                    "J": j,
                    "J_null": null,
                    "J_star": float(j_star),
                    "infected": infected,
                    "smaller_subgroup": int(smaller.sum()),
                    "flagged": int(flags[idx].sum()),
                }
            )
        extra = {
            "layer": self.layer,
            "dims": dims,
            "em_iterations": model.iterations,
            "em_converged": model.converged,
            "group_names": groups.names,
            "group_statistics": group_statistics,
            "infected_groups": [entry["group"] for entry in group_statistics if entry["infected"]],
            "skipped_groups": groups.skipped,
        }
        return DetectionResult(scores, flags, groups.ids, extra)

    def _clean_set(self, context: EvaluationContext, device: torch.device) -> tuple[RowStream, list[np.ndarray]]:
        """The defender's clean rows (`layer` features of ``x_clean``, cached under ``CLEAN_KEY``) and their groups
        under the detector's ``grouping``, as the training rows are grouped (every group, however small), which the
        released code fits the global model on."""
        key = CLEAN_KEY.format(layer=self.layer)
        labels = context.y_clean
        if labels is None and isinstance(context.x_clean, ImageSet):
            labels = context.x_clean.labels
        if key not in context.feature_cache:
            if context.x_clean is None or context.estimator is None:
                raise ValueError(
                    f"{self.name}: global_fit='clean' fits the global model on the defender's clean set "
                    "(as the authors' release does), but the context has no x_clean with an estimator "
                    f"to compute its {self.layer!r} features, nor features in feature_cache[{key!r}]; "
                    "give them, or set global_fit='all_rows' to fit it on every training row"
                )
            context.feature_cache[key] = read_only(clean_features(context, self.layer))
        feats = check_finite(context.feature_cache[key], self.layer)
        if self.grouping in ("label_vector", "finding") and (
            labels is None or np.shape(labels)[:1] != (feats.shape[0],)
        ):
            raise ValueError(
                f"{self.name}: global_fit='clean' needs one label row per clean sample (context.y_clean), "
                f"got {None if labels is None else np.shape(labels)} for {feats.shape[0]} clean samples"
            )
        ids, names = row_groups(context, self.grouping, feats.shape[0], self.name, rows="clean", labels=labels)
        return RowStream(feats, device), [np.flatnonzero(ids == g) for g in range(len(names))]

    def _global_model(self, stream: RowStream, axes: GroupPCA, members: list[np.ndarray]) -> DecompositionModel:
        """S_mu and S_e by the EM-like algorithm, on every row of `stream` (all label groups, however small), in
        PCA coordinates: the rows' total scatter there is diag(eigenvalues), each group's sum n_k (mean_k - mean)."""
        counts = torch.tensor([idx.shape[0] for idx in members], dtype=torch.float64, device=stream.device)
        means = torch.stack([stream.mean_of(idx) for idx in members])
        sums = counts[:, None] * ((means - axes.mean) @ axes.directions)
        released = self.global_em == "released"
        return fit_decomposition(
            torch.diag(axes.eigenvalues),
            sums,
            counts,
            self.max_iter,
            self.tol,
            unbiased=released,
            relative=not released,
        )

    @staticmethod
    def _coordinates(stream: RowStream, axes: GroupPCA, origin: torch.Tensor | None, idx: np.ndarray) -> torch.Tensor:
        """The rows `idx` in the PCA coordinates, centred on the fitted rows' mean (`origin` None) or, as the
        released local model centres them, on the training rows' mean (`origin`, in those coordinates)."""
        if origin is None:
            return axes.project(stream, idx)
        return axes.project(stream, idx, centered=False) - origin

    def _untangle(
        self, white: torch.Tensor, model: DecompositionModel, generator: torch.Generator, starts: np.random.RandomState
    ) -> tuple[float, float, np.ndarray, np.ndarray]:
        """J of one group's whitened rows, its expectation under H0 for their number (0 without `size_correction`),
        which rows form the smaller subgroup, and each row's posterior probability of belonging to it."""
        n = white.shape[0]
        lam = model.identity_variances
        weight = lam / (n * lam + 1.0) if self.identity == "posterior" else 1.0 / (n * lam + 1.0)
        identity = weight * white.sum(0)
        if self.untangling == "pca_kmeans":
            j, z, fit = self._split(white, identity, generator)
            labels, centers = fit.labels, fit.centers
        else:
            j, labels, centers = released_untangling(white, identity, starts)
            z = white
        null = self._null_statistic(n, lam, generator, starts) if self.size_correction else 0.0
        sizes = torch.bincount(labels, minlength=2)
        small = int(torch.argmin(sizes))
        log_odds = (
            torch.log(sizes[small].to(z.dtype) / sizes[1 - small].clamp_min(1))
            + 0.5 * (z - centers[1 - small]).square().sum(1)
            - 0.5 * (z - centers[small]).square().sum(1)
        )
        return j, null, (labels == small).cpu().numpy(), torch.sigmoid(log_odds).cpu().numpy()

    def _split(
        self, white: torch.Tensor, identity: torch.Tensor, generator: torch.Generator
    ) -> tuple[float, torch.Tensor, KMeansFit]:
        """Untangle the whitened rows (n, r): 2-means on their top `split_components` principal directions (seeded
        k-means++ and best-axis-split starts), then J in all r dimensions from the two subgroups' means. Returns J,
        the rows in the split's coordinates and the fit there."""
        centred = white - white.mean(0)
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        z = centred @ vectors[:, -min(self.split_components, white.shape[1]) :]
        fit = kmeans(z, 2, self.n_init, generator, axis_starts=True, fit_rows=self.fit_rows)
        counts = torch.bincount(fit.labels, minlength=2).clamp_min(1).to(white.dtype)
        means = torch.zeros(2, white.shape[1], dtype=white.dtype, device=white.device)
        means = means.index_add_(0, fit.labels, white) / counts[:, None]
        j = ((white - identity).square().sum(1) - (white - means[fit.labels]).square().sum(1)).mean()
        return float(j), z, fit

    def _null_statistic(
        self, n: int, lam: torch.Tensor, generator: torch.Generator, starts: np.random.RandomState
    ) -> float:
        """E0[J] for a group of `n` rows: the untangling gain of one seeded draw of min(n, `fit_rows`) standard normal
        rows in the model's dimensions plus the exact term E|mean - identity|^2: sum_j 1 / (n (n lam_j + 1)) for the
        posterior identity, sum_j (lam_j + 1/n) (1 - n / (n lam_j + 1))^2 for the released one."""
        rows = n if self.fit_rows is None else min(n, self.fit_rows)
        z = torch.randn(rows, lam.shape[0], generator=generator, dtype=lam.dtype).to(lam.device)
        if self.untangling == "pca_kmeans":
            gain, _, _ = self._split(z, z.mean(0), generator)
        else:
            gain, _, _ = released_untangling(z, z.mean(0), starts)
        if self.identity == "posterior":
            return gain + float((1.0 / (n * (n * lam + 1.0))).sum())
        return gain + float(((lam + 1.0 / n) * (1.0 - n / (n * lam + 1.0)).square()).sum())


def released_untangling(
    white: torch.Tensor, identity: torch.Tensor, starts: np.random.RandomState
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The released two-subgroup split and statistic of whitened rows (n, r) (pysrc/SCAn.py find_split, calc_test).

    Start: row i in subgroup 1 where ``starts.rand(n)[i] >= 0.5`` (the first row moved if a side is empty). Then
    hard-assignment EM, at most ``UNTANGLE_STEPS`` steps: the subgroup means u_1, u_2, then every row to the nearer,
    by the release's test u_1.u_1 - u_2.u_2 - 2 x.(u_1 - u_2) < 0; it stops when no row moved, every row moved, or a
    side is empty. J = mean_i |x_i - identity|^2 - |x_i - u_c(i)|^2 with the means of the last M-step (as released,
    also where the last E-step moved rows). Returns J, the subgroup of each row (0/1) and the means (u_2, u_1)."""
    ones = starts.rand(white.shape[0]) >= 0.5
    if not ones.any():
        ones[0] = True
    if ones.all():
        ones[0] = False
    labels = torch.as_tensor(ones, device=white.device)
    previous, centers = None, None
    for _ in range(UNTANGLE_STEPS):
        if previous is not None and (torch.equal(labels, previous) or torch.equal(labels, ~previous)):
            break
        previous = labels
        if labels.all() or not labels.any():
            break
        u1, u2 = white[labels].mean(0), white[~labels].mean(0)
        centers = torch.stack([u2, u1])
        labels = (u1 @ u1 - u2 @ u2) - 2.0 * (white @ (u1 - u2)) < 0
    labels = labels.long()
    assert centers is not None  # the first step splits the rows (the start has both subgroups when N >= 2)
    j = ((white - identity).square().sum(1) - (white - centers[labels]).square().sum(1)).mean()
    return float(j), labels, centers


def clean_features(context: EvaluationContext, layer: str) -> np.ndarray:
    """Activations of `layer` for every ``context.x_clean`` image as (N, D), batch by batch through the estimator."""
    x_clean = context.x_clean
    assert x_clean is not None  # callers check the context has x_clean
    n = len(x_clean)
    if n == 0:
        raise ValueError("cannot extract clean-set features: x_clean is empty")
    batches = []
    for start in range(0, n, context.batch_size):
        images = load_images(x_clean, np.arange(start, min(start + context.batch_size, n)))
        batch = np.asarray(context.estimator.get_activations(images, layer=layer, batch_size=context.batch_size))
        batches.append(batch.reshape(batch.shape[0], -1))
    return np.concatenate(batches)


def fit_decomposition(
    scatter: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
    max_iter: int,
    tol: float,
    unbiased: bool = False,
    relative: bool = True,
) -> DecompositionModel:
    """The EM-like fit of S_mu, S_e from the centred rows' total scatter (r, r), the per-group sums (L, r) and sizes
    (L,), started (as the released code) from the covariances of the group means and of the rows about them.
    Covariances divide by N - 1 (`unbiased`, the release's np.cov) or N; the fit stops after the step whose change
    ||dS_mu||_F + ||dS_e||_F is at most `tol` (the release, whose tol is 1e-2) or, `relative`, at most
    tol (||S_mu||_F + ||S_e||_F).

    mu_k = S_mu (n_k S_mu + S_e)^(-1) s_k is computed in the basis W with W^T S_e W = I, W^T S_mu W = diag(lam):
    mu_k = W^-T diag(lam / (n_k lam + 1)) W^T s_k, W^-T = S_e W; the covariances of the N rows' identities and
    variations then follow from the sums: sum e e^T = scatter - S^T M - M^T S + M^T diag(n) M (M: the L identities).
    """
    total = counts.sum()
    identities = sums / counts[:, None]
    s_mu, s_e = _covariances(scatter, sums, counts, identities, total, unbiased)
    iterations, converged = 0, False
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is returned after the loop)
        basis, lam = _joint_basis(s_mu, s_e)
        identities = ((sums @ basis) * (lam / (counts[:, None] * lam + 1.0))) @ (s_e @ basis).T
        new_mu, new_e = _covariances(scatter, sums, counts, identities, total, unbiased)
        change = (new_mu - s_mu).norm() + (new_e - s_e).norm()
        s_mu, s_e = new_mu, new_e
        if change <= (tol * (s_mu.norm() + s_e.norm()) if relative else tol):
            converged = True
            break
    basis, lam = _joint_basis(s_mu, s_e)
    return DecompositionModel(basis, lam, iterations, converged)


def _covariances(
    scatter: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
    identities: torch.Tensor,
    total: torch.Tensor,
    unbiased: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cov(mu_k(i)) and cov(r_i - mu_k(i)) over the rows (divided by N, or N - 1 when `unbiased`), from the group
    identities (L, r)."""
    weighted = identities.T @ (counts[:, None] * identities)
    mean_identity = counts @ identities / total
    cross = sums.T @ identities
    s_mu = weighted / total - torch.outer(mean_identity, mean_identity)
    s_e = (scatter - cross - cross.T + weighted) / total - torch.outer(mean_identity, mean_identity)
    if unbiased:
        s_mu, s_e = s_mu * (total / (total - 1.0)), s_e * (total / (total - 1.0))
    return (s_mu + s_mu.T) / 2, (s_e + s_e.T) / 2


def _joint_basis(s_mu: torch.Tensor, s_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W (r, r) and lam (r,) with W^T S_e W = I and W^T S_mu W = diag(lam): S_e's eigenvalues under 1e-10 of its
    largest are raised to it (a direction the rows never vary in within their group is not blown up)."""
    values, vectors = torch.linalg.eigh(s_e)
    values = values.clamp_min(values.max().clamp_min(torch.finfo(s_e.dtype).tiny) * 1e-10)
    root = vectors * values.rsqrt()
    lam, rotation = torch.linalg.eigh(root.T @ s_mu @ root)
    return root @ rotation, lam.clamp_min(0.0)


def anomaly_index(statistic: np.ndarray, defense: str, one_sided: bool = True) -> np.ndarray:
    """J* = (J - median J) / (1.4826 MAD J), or as released |J - median J| / (1.4826 MAD J) (not `one_sided`); 0
    everywhere when the MAD is 0 (fewer than three groups warn)."""
    if statistic.size < 3:
        warnings.warn(
            f"{defense}: {statistic.size} label group(s) analysed; the MAD test needs at least 3 to judge "
            "one against the others, so no group is likely to be called infected",
            stacklevel=3,
        )
    if statistic.size == 0:
        return statistic
    deviation = statistic - np.median(statistic)
    if not one_sided:
        deviation = np.abs(deviation)
    scale = MAD_SCALE * np.median(np.abs(deviation))
    return deviation / scale if scale > 0 else np.zeros_like(statistic)
