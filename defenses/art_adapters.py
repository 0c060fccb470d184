"""ART's own poison detectors (SpectralSignatureDefense, ActivationDefence) as artmed defenses: the baselines.

ART splits samples by ``argmax(y_train)`` over ``classifier.nb_classes`` and reads the activations of the layer
listed last in ``classifier.layer_names``. Our groups are the detector's ``grouping`` of the training rows (by default
their primary finding; see ``LabelGroups.split``), so ART is handed a one-hot of group ids and a thin view of the
estimator (`GroupedActivations`) that reports one class per group and serves the chosen layer's activations for the
sample indices ART passes around as its ``x_train``.
`art_inputs` builds the same three inputs for a user calling ART's detectors directly with CheXpert labels.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense

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
)
from artmed.params import Choice, Int, Real, Text

Source = Literal["features", "estimator"]


class GroupedActivations:
    """The minimal ART classifier surface the detectors use: ``nb_classes``, ``layer_names``, ``get_activations``.

    ART's ``x_train`` is an array of training-set indices; ``get_activations`` answers with the context's cached
    features of `layer` (source="features") or by running the estimator's own ``get_activations`` on those
    images (source="estimator"; the last answer is kept, so asking twice extracts once). It works without an
    estimator, on precomputed features alone.
    """

    def __init__(self, context: EvaluationContext, layer: str, nb_classes: int, source: Source) -> None:
        self.context = context
        self.layer = layer
        self.nb_classes = nb_classes
        self.layer_names = [layer]
        self.source = source
        self._last: tuple[bytes, np.ndarray] | None = None

    def get_activations(self, x: np.ndarray, layer: int | str = 0, batch_size: int = 128, framework: bool = False):
        """Activations of the analysed layer for training indices `x`, as an (len(x), D) array."""
        if layer not in (0, self.layer):
            raise ValueError(f"only layer {self.layer!r} (index 0) is exposed to ART, got {layer!r}")
        idx = np.asarray(x, dtype=np.int64)
        if self.source == "features":
            return check_finite(self.context.features(self.layer), self.layer)[idx]
        if self._last is None or self._last[0] != idx.tobytes():
            est, images = self.context.estimator, self.context.x_train
            assert images is not None  # _prepare refuses source='estimator' without x_train
            chunks = [
                est.get_activations(load_images(images, part), layer=self.layer, batch_size=batch_size)
                for part in np.array_split(idx, range(batch_size, idx.shape[0], batch_size))
            ]
            feats = np.concatenate([np.asarray(c).reshape(len(c), -1) for c in chunks])
            self._last = (idx.tobytes(), check_finite(feats, self.layer))
        return self._last[1]


def art_inputs(
    estimator: Any,
    x_train: np.ndarray | ImageSet,
    y_train: np.ndarray,
    layer: str = "image_pooled",
    grouping: str = DEFAULT_GROUPING,
) -> tuple[GroupedActivations, np.ndarray, np.ndarray, list[str]]:
    """``(classifier, x, y, group_names)`` for ART's detectors, one class per group of the training rows
    (``grouping``, as artmed's detectors take it: see ``LabelGroups.split``).

    ART splits by ``argmax(y)`` over ``classifier.nb_classes`` (the estimator's prompts), so (N, 14) CheXpert rows
    passed as they are raise an IndexError, or, when every argmax falls below nb_classes, are silently split by
    their first positive column. Instead call::

        classifier, x, y, names = art_inputs(estimator, x_train, y14)
        report, is_clean = ActivationDefence(classifier, x, y).detect_poison(nb_dims=10, reduce="PCA")

    `x` holds the sample indices (``classifier`` extracts `layer` of those images with the estimator's
    ``get_activations``); is_clean[i] is sample i's verdict and class g is the group ``names[g]``, the groups
    artmed's detectors analyse under the same ``grouping``.
    """
    context = EvaluationContext(estimator=estimator, x_train=x_train, y_train=y_train)
    groups = LabelGroups.split(context, len(x_train), 1, "art_inputs", grouping)
    classifier = GroupedActivations(context, layer, len(groups.names), "estimator")
    return classifier, np.arange(groups.ids.shape[0]), _classes(groups.ids, len(groups.names)), groups.names


def _classes(ids: np.ndarray, n_groups: int) -> np.ndarray:
    """ART's y_train for group ids in [0, n_groups): a one-hot, or for one group its 1-D ids (ART's segment_by_class
    calls int() on a one-column one-hot row, which NumPy 2 refuses)."""
    if n_groups <= 1:
        return ids.astype(np.int64)
    return np.eye(n_groups, dtype=np.float32)[ids]


class _ARTDetector(Defense):
    """Shared plumbing: label groups -> ART one-hot classes, run ART, map its is_clean list back to samples."""

    kind = "detection"
    layer: str
    source: Source
    min_group_size: int
    grouping: str

    common_rules = {
        "source": Choice(("features", "estimator")),
        "layer": Text(),
        "min_group_size": Int(1),
        "grouping": GROUPING_RULE,
    }
    """The rules every ART detector adds to its own ``param_rules``."""

    def _prepare(self, context: EvaluationContext) -> tuple[LabelGroups, np.ndarray, np.ndarray, GroupedActivations]:
        if self.source == "estimator":
            if context.estimator is None or context.x_train is None:
                raise ValueError("source='estimator' needs a context with an estimator and x_train")
            n = len(context.x_train)
        else:
            n = context.features(self.layer).shape[0]
        groups = LabelGroups.split(context, n, self.min_group_size, self.name, self.grouping)
        kept = np.flatnonzero(np.isin(groups.ids, [g for g, _ in groups.analysed]))
        remap = np.zeros(len(groups.names), dtype=np.int64)
        remap[[g for g, _ in groups.analysed]] = np.arange(len(groups.analysed))
        classifier = GroupedActivations(context, self.layer, max(len(groups.analysed), 1), self.source)
        return groups, kept, _classes(remap[groups.ids[kept]], len(groups.analysed)), classifier

    def _empty(self, groups: LabelGroups) -> DetectionResult:
        n = groups.ids.shape[0]
        return self._result(groups, np.zeros(0, np.int64), [], np.zeros(n), {})

    def _result(self, groups: LabelGroups, kept: np.ndarray, is_clean: list[int], scores: np.ndarray, extra: dict):
        flags = np.zeros(groups.ids.shape[0], dtype=bool)
        flags[kept] = np.asarray(is_clean) == 0
        extra = {
            "layer": self.layer,
            "source": self.source,
            "group_names": groups.names,
            "skipped_groups": groups.skipped,
            **extra,
        }
        return DetectionResult(scores, flags, groups.ids, extra)


class ARTSpectralSignatures(_ARTDetector):
    """ART's SpectralSignatureDefense: flags ``eps_multiplier·expected_pp_poison`` of every label group.

    Scores are ART's per-sample |v·r| (its ``spectral_signature_scores``) divided by their group mean.
    """

    name = "art_spectral_signatures"
    param_rules = {
        **_ARTDetector.common_rules,
        "expected_pp_poison": Real(0.0, 1.0),
        "eps_multiplier": Real(0.0),
        "batch_size": Int(1),
    }

    def __init__(
        self,
        expected_pp_poison: float = 0.33,
        eps_multiplier: float = 1.5,
        batch_size: int = 128,
        layer: str = "image_pooled",
        source: Source = "features",
        min_group_size: int = 2,
        grouping: str = DEFAULT_GROUPING,
    ) -> None:
        self.expected_pp_poison = expected_pp_poison
        self.eps_multiplier = eps_multiplier
        self.batch_size = batch_size
        self.layer = layer
        self.source = source
        self.min_group_size = min_group_size
        self.grouping = grouping
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()

    def run(self, context: EvaluationContext) -> DetectionResult:
        """Run ART's detector on the context's label groups."""
        groups, kept, classes, classifier = self._prepare(context)
        if kept.size == 0:
            return self._empty(groups)
        defence = SpectralSignatureDefense(
            classifier, kept, classes, self.expected_pp_poison, self.batch_size, self.eps_multiplier
        )
        _, is_clean = defence.detect_poison()
        scores = np.zeros(groups.ids.shape[0])
        feats = classifier.get_activations(kept)
        for _, idx in groups.analysed:
            raw = SpectralSignatureDefense.spectral_signature_scores(feats[np.searchsorted(kept, idx)])[:, 0]
            scores[idx] = raw / raw.mean() if raw.mean() > 0 else 0.0
        return self._result(groups, kept, is_clean, scores, {})


class ARTActivationClustering(_ARTDetector):
    """ART's ActivationDefence (PCA to `nb_dims`, one unseeded k-means++ start, "smaller" rule), made
    reproducible by seeding NumPy's global generator (which scikit-learn's KMeans draws from) around the call.

    ART gives no continuous score, so the flags are the scores. "relative-size" crashes in ART with
    NumPy >= 2.2 and "silhouette-scores" leaves uninitialised values, so only "smaller" and "distance" are offered.
    """

    name = "art_activation_clustering"
    param_rules = {
        **_ARTDetector.common_rules,
        "nb_clusters": Int(2),
        "nb_dims": Int(1),
        "reduce": Choice(("PCA", "FastICA")),
        "cluster_analysis": Choice(
            ("smaller", "distance"),
            text="'smaller' or 'distance' (ART 1.20's "
            "'relative-size' fails on NumPy >= 2.2 and 'silhouette-scores' is unreliable)",
        ),
    }

    def __init__(
        self,
        nb_clusters: int = 2,
        nb_dims: int = 10,
        reduce: Literal["PCA", "FastICA"] = "PCA",
        cluster_analysis: Literal["smaller", "distance"] = "smaller",
        seed: int = 0,
        layer: str = "image_pooled",
        source: Source = "features",
        min_group_size: int = 10,
        grouping: str = DEFAULT_GROUPING,
    ) -> None:
        self.nb_clusters = nb_clusters
        self.nb_dims = nb_dims
        self.reduce = reduce
        self.cluster_analysis = cluster_analysis
        self.seed = seed
        self.layer = layer
        self.source = source
        self.min_group_size = min_group_size
        self.grouping = grouping
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()
        if self.min_group_size < max(self.nb_dims, self.nb_clusters):
            raise ValueError(
                f"min_group_size ({self.min_group_size}) must be >= nb_dims and nb_clusters: ART's reduction "
                "fails on groups smaller than nb_dims"
            )

    def run(self, context: EvaluationContext) -> DetectionResult:
        """Run ART's detector on the context's label groups with NumPy's global generator seeded."""
        groups, kept, classes, classifier = self._prepare(context)
        if kept.size == 0:
            return self._empty(groups)
        defence = ActivationDefence(classifier, kept, classes)
        state = np.random.get_state()
        np.random.seed(self.seed)
        try:
            report, is_clean = defence.detect_poison(
                nb_clusters=self.nb_clusters,
                nb_dims=self.nb_dims,
                reduce=self.reduce,
                cluster_analysis=self.cluster_analysis,
            )
        finally:
            np.random.set_state(state)
        flags_kept = np.asarray(is_clean) == 0
        scores = np.zeros(groups.ids.shape[0])
        scores[kept] = flags_kept
        return self._result(groups, kept, is_clean, scores, {"art_report": report})
