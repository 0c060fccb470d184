"""Activation clustering (Chen et al., 2018): per label group, reduce the features, split them with k-means and
flag a suspiciously small cluster. Torch on the chosen device, seeded multi-start k-means; an ART-compatible mode
uses ART's settings and decision arithmetic."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from artmed.defenses.art_api import ARTPoisonFilter
from artmed.defenses.base import (
    DEFAULT_GROUPING,
    GROUPING_RULE,
    DetectionResult,
    EvaluationContext,
    LabelGroups,
    check_finite,
)
from artmed.defenses.decomposition import RowStream, fast_ica, pca
from artmed.defenses.kmeans import kmeans, silhouette
from artmed.device import one_cpu_thread, resolve_device
from artmed.params import Choice, Int, OrNone, Real, Text

ANALYSES = ("relative-size", "smaller", "silhouette")
_SILHOUETTE_SAMPLE = 5000
FIT_ROWS = 50_000
"""Default (mode "artmed") rows per label group that the reduction and the k-means starts are fitted on."""


def suspicious_clusters(
    labels: np.ndarray,
    analysis: str,
    size_threshold: float = 0.35,
    silhouette_score: float | None = None,
    silhouette_threshold: float = 0.1,
    art: bool = False,
) -> np.ndarray:
    """Ids of the clusters judged poisonous among the cluster assignments `labels` of one label group.

    "smaller": the smallest cluster (ART's ``analyze_by_size``: argmin of the bincount). "relative-size":
    every cluster holding less than `size_threshold` of the group. "silhouette": those, but only when the
    clustering's `silhouette_score` exceeds `silhouette_threshold`. With ``art=True`` shares and thresholds are
    rounded like ART (2 and 4 decimals) and the largest cluster may be flagged; otherwise it never is.
    """
    sizes = np.bincount(labels)
    if analysis == "smaller":
        return np.array([int(np.argmin(sizes))])
    shares = sizes / sizes.sum()
    if art:
        shares, size_threshold = np.round(shares, 2), round(size_threshold, 2)
    small = np.flatnonzero(shares < size_threshold)
    if not art:
        small = small[small != int(np.argmax(sizes))]
    if analysis == "silhouette":
        if silhouette_score is None:
            raise ValueError("the 'silhouette' analysis needs a silhouette_score")
        if art:
            silhouette_score, silhouette_threshold = round(silhouette_score, 4), round(silhouette_threshold, 4)
        if small.size and silhouette_score <= silhouette_threshold:
            return small[:0]
    return small


class ActivationClustering(ARTPoisonFilter):
    """Per label group: reduce to `n_components` (FastICA or PCA), k-means with `n_clusters`, flag small clusters.

    Defaults (mode="artmed"): FastICA, 10 seeded k-means++ starts (plus, for 2 clusters, one start from the
    best split along each reduced axis, which finds a small separated subpopulation that random starts miss),
    "relative-size" rule (flag a cluster holding under `size_threshold` of its group); the reduction and the
    k-means starts are fitted on a seeded sample of `fit_rows` (50 000) rows per group, then every row is projected
    and the best start is iterated on all of them. mode="art" switches the defaults to ART's ActivationDefence
    (PCA, one k-means++ start on all rows, "smaller" rule, which flags the smaller cluster whatever its size) and
    ART's rounding; explicit `reduce`/`analysis`/`n_init`/`fit_rows` still win. Scores (for AUROC) are a membership
    margin towards the nearest non-largest cluster times how small that cluster is: d_L/(d_L+d_S)·(1 -
    share_S/share_L). Samples are grouped by `grouping` (``LabelGroups.split``); groups under `min_group_size` samples
    are never flagged.

    Also an ART ``PoisonFilteringDefence`` (see ``ARTPoisonFilter``): ``ActivationClustering(classifier, x_train,
    y_train, mode="art", ...).detect_poison()`` replaces ``ActivationDefence(classifier, x_train,
    y_train).detect_poison(nb_clusters=..., nb_dims=..., reduce=...)``: ART's nb_clusters is `n_clusters`, nb_dims
    `n_components`, reduce "PCA"/"FastICA" is "pca"/"ica", cluster_analysis "smaller"/"relative-size" is `analysis`.
    The report has ART's layout ("Class_<group>" -> "cluster_<c>" -> share and suspicion, plus the parameters).
    """

    name = "activation_clustering"
    kind = "detection"
    param_rules = {
        "mode": Choice(("artmed", "art")),
        "reduce": OrNone(Choice(("ica", "pca")), text="'ica', 'pca' or None (the mode's default)"),
        "analysis": OrNone(Choice(ANALYSES), text=f"one of {ANALYSES} or None (the mode's default)"),
        "n_components": Int(1),
        "n_clusters": Int(2),
        "min_group_size": Int(1),
        "n_init": OrNone(Int(1)),
        "fit_rows": OrNone(Int(100), text="an integer >= 100 or None (all rows)"),
        "size_threshold": Real(0.0, 1.0, "()"),
        "silhouette_threshold": Real(-1.0, 1.0),
        "layer": Text(),
        "grouping": GROUPING_RULE,
    }

    def __init__(
        self,
        classifier: Any = None,
        x_train: Any = None,
        y_train: np.ndarray | None = None,
        *,
        n_components: int = 10,
        reduce: Literal["ica", "pca"] | None = None,
        n_clusters: int = 2,
        analysis: Literal["relative-size", "smaller", "silhouette"] | None = None,
        size_threshold: float = 0.35,
        silhouette_threshold: float = 0.1,
        n_init: int | None = None,
        fit_rows: int | None = None,
        seed: int = 0,
        mode: Literal["artmed", "art"] = "artmed",
        layer: str = "image_pooled",
        device: str = "auto",
        min_group_size: int = 10,
        grouping: str = DEFAULT_GROUPING,
    ) -> None:
        super().__init__(classifier, x_train, y_train)
        self.n_components = n_components
        self.reduce = reduce
        self.n_clusters = n_clusters
        self.analysis = analysis
        self.size_threshold = size_threshold
        self.silhouette_threshold = silhouette_threshold
        self.n_init = n_init
        self.fit_rows = fit_rows
        self.seed = seed
        self.mode = mode
        self.layer = layer
        self.device = device
        self.min_group_size = min_group_size
        self.grouping = grouping
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()
        if self.min_group_size < self.n_clusters:
            raise ValueError(f"min_group_size ({self.min_group_size}) must be >= n_clusters ({self.n_clusters})")
        resolve_device(self.device)
        self._check_data()

    def resolved(self) -> dict[str, object]:
        """The reduction, rule and number of starts in effect (mode defaults applied)."""
        art = self.mode == "art"
        return {
            "reduce": self.reduce or ("pca" if art else "ica"),
            "analysis": self.analysis or ("smaller" if art else "relative-size"),
            "n_init": self.n_init or (1 if art else 10),
            "fit_rows": self.fit_rows if self.fit_rows is not None else (None if art else FIT_ROWS),
        }

    def run(self, context: EvaluationContext) -> DetectionResult:
        """Cluster every label group's `layer` features and flag the suspicious clusters."""
        feats = check_finite(context.features(self.layer), self.layer)
        groups = LabelGroups.split(context, feats.shape[0], self.min_group_size, self.name, self.grouping)
        device = resolve_device(self.device)
        stream = RowStream(feats, device)
        settings = self.resolved()
        generator = torch.Generator().manual_seed(int(self.seed))
        scores = np.zeros(feats.shape[0])
        flags = np.zeros(feats.shape[0], dtype=bool)
        per_group = []
        for g, idx in groups.analysed:
            with one_cpu_thread(device):
                flags[idx], scores[idx], report = self._analyse_group(stream, idx, settings, generator)
            per_group.append({"group": groups.names[g], "group_id": g, "size": int(idx.shape[0]), **report})
        extra = {
            "layer": self.layer,
            "mode": self.mode,
            **settings,
            "group_names": groups.names,
            "per_group": per_group,
            "skipped_groups": groups.skipped,
        }
        return DetectionResult(scores, flags, groups.ids, extra)

    def _art_report(self, result: DetectionResult) -> dict[str, Any]:
        """ART's report: per analysed label group, each cluster's share and suspicion; then the parameters."""
        per_group = result.extra["per_group"]
        report: dict[str, Any] = {
            "cluster_analysis": result.extra["analysis"],
            "suspicious_clusters": sum(len(entry["suspicious_clusters"]) for entry in per_group),
        }
        for entry in per_group:
            sizes = entry["cluster_sizes"]
            report[f"Class_{entry['group_id']}"] = {
                f"cluster_{c}": {
                    "ptc_data_in_cluster": round(size / sum(sizes), 2),
                    "suspicious_cluster": c in entry["suspicious_clusters"],
                }
                for c, size in enumerate(sizes)
            }
        return {**report, **self.get_params()}

    def _analyse_group(
        self, stream: RowStream, idx: np.ndarray, settings: dict, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Flags, scores and a report (cluster sizes, suspicious clusters, convergence) for the rows `idx`; the
        reduction streams the rows in chunks, so only the (n, n_components) reduced features are held."""
        n, d = idx.shape[0], stream.dim
        report: dict = {}
        if d > self.n_components:
            k = min(self.n_components, n - 1)
            if settings["reduce"] == "ica":
                z, report["ica_converged"] = fast_ica(stream, idx, k, generator, fit_rows=settings["fit_rows"])
            else:
                z = pca(stream, idx, k, generator, settings["fit_rows"])
        else:
            z = stream.gather(idx)
        fit = kmeans(
            z,
            self.n_clusters,
            settings["n_init"],
            generator,
            axis_starts=self.mode == "artmed",
            fit_rows=settings["fit_rows"],
        )
        labels = fit.labels.cpu().numpy()
        sil = None
        if settings["analysis"] == "silhouette":
            sample = torch.randperm(n, generator=generator)[:_SILHOUETTE_SAMPLE].to(z.device)
            sil = silhouette(z[sample], fit.labels[sample], self.n_clusters)
            report["silhouette"] = sil
        poison = suspicious_clusters(
            labels, settings["analysis"], self.size_threshold, sil, self.silhouette_threshold, self.mode == "art"
        )
        sizes = np.bincount(labels, minlength=self.n_clusters)
        flags = np.isin(labels, poison)
        report.update(
            cluster_sizes=sizes.tolist(),
            suspicious_clusters=poison.tolist(),
            kmeans_converged=fit.converged,
            flagged=int(flags.sum()),
        )
        return flags, _membership_scores(z, fit.centers, sizes), report


def _membership_scores(z: torch.Tensor, centers: torch.Tensor, sizes: np.ndarray) -> np.ndarray:
    """d_L/(d_L+d_S)·(1 - share_S/share_L): near the small cluster and far from the large one, and small."""
    dist = torch.cdist(z, centers)
    largest = int(np.argmax(sizes))
    d_large = dist[:, largest]
    others = dist.clone()
    others[:, largest] = float("inf")
    d_small, nearest = others.min(1)
    share = torch.as_tensor(sizes, dtype=z.dtype, device=z.device)
    smallness = 1.0 - share[nearest] / share[largest]
    margin = d_large / (d_large + d_small).clamp_min(torch.finfo(z.dtype).tiny)
    return (margin * smallness).cpu().numpy()
