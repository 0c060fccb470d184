"""Spectral signatures (Tran et al., 2018): flag the samples of each label group that project most on its top
singular direction; torch on the chosen device, with an ART-compatible mode that reproduces ART's flags."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from artmed.defenses.art_api import ARTPoisonFilter
from artmed.defenses.base import (
    DEFAULT_GROUPING,
    GROUPING_RULE,
    DetectionResult,
    EvaluationContext,
    LabelGroups,
    check_finite,
    flag_top,
)
from artmed.defenses.decomposition import RowStream, group_pca
from artmed.device import resolve_device
from artmed.params import Choice, Int, Real, Text


class SpectralSignatures(ARTPoisonFilter):
    """Per label group: top right singular vector v of the centred features; flag the top `removal_share`·`eps`.

    mode="centered" (the paper): score = squared projection of the centred features on v; the top
    floor(removal_share·eps·n) samples of each group are flagged. mode="art" (ART's SpectralSignatureDefense):
    score = |v·r| of the *uncentred* features r, flagged where score >= the (1 - removal_share·eps) quantile,
    so flags equal ART's with ``expected_pp_poison=eps, eps_multiplier=removal_share``. Returned scores are
    divided by their group mean so they compare across groups (raw ones are in ``extra["raw_scores"]``).
    Samples are grouped by `grouping` (``LabelGroups.split``: label vector, primary finding, zero-shot predicted
    class, or one group); groups under `min_group_size` samples are never flagged (ART would flag a singleton group).

    Also an ART ``PoisonFilteringDefence`` (see ``ARTPoisonFilter``): ``SpectralSignatures(classifier, x_train,
    y_train, eps=..., ...).detect_poison()`` replaces ``SpectralSignatureDefense(classifier, x_train, y_train,
    expected_pp_poison=..., eps_multiplier=...)``: ART's expected_pp_poison is `eps`, its eps_multiplier is
    `removal_share` (ART's defaults: 0.33 and 1.5), and mode="art" gives ART's flags. The report maps each
    flagged index to its raw score, as ART's does.
    """

    name = "spectral_signatures"
    kind = "detection"
    param_rules = {
        "eps": Real(0.0, 1.0, "(]"),
        "removal_share": Real(0.0, None, "()"),
        "mode": Choice(("centered", "art")),
        "layer": Text(),
        "min_group_size": Int(2),
        "grouping": GROUPING_RULE,
    }

    def __init__(
        self,
        classifier: Any = None,
        x_train: Any = None,
        y_train: np.ndarray | None = None,
        *,
        eps: float = 0.05,
        removal_share: float = 1.5,
        layer: str = "image_pooled",
        mode: Literal["centered", "art"] = "centered",
        device: str = "auto",
        min_group_size: int = 2,
        grouping: str = DEFAULT_GROUPING,
    ) -> None:
        super().__init__(classifier, x_train, y_train)
        self.eps = eps
        self.removal_share = removal_share
        self.layer = layer
        self.mode = mode
        self.device = device
        self.min_group_size = min_group_size
        self.grouping = grouping
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()
        resolve_device(self.device)
        self._check_data()

    def run(self, context: EvaluationContext) -> DetectionResult:
        """Score and flag every training sample of `context` from its `layer` features."""
        feats = check_finite(context.features(self.layer), self.layer)
        groups = LabelGroups.split(context, feats.shape[0], self.min_group_size, self.name, self.grouping)
        stream = RowStream(feats, resolve_device(self.device))
        share = self.removal_share * self.eps
        raw = np.zeros(feats.shape[0])
        scores = np.zeros(feats.shape[0])
        flags = np.zeros(feats.shape[0], dtype=bool)
        per_group = []
        for g, idx in groups.analysed:
            score, top_eigenvalue = self._group_scores(stream, idx)
            flags[idx] = self._flag(score, share)
            raw[idx] = score
            mean = score.mean()
            scores[idx] = score / mean if mean > 0 else 0.0
            per_group.append(
                {
                    "group": groups.names[g],
                    "size": int(idx.shape[0]),
                    "flagged": int(flags[idx].sum()),
                    "top_eigenvalue": top_eigenvalue,
                }
            )
        extra = {
            "layer": self.layer,
            "mode": self.mode,
            "group_names": groups.names,
            "per_group": per_group,
            "skipped_groups": groups.skipped,
            "raw_scores": raw,
        }
        return DetectionResult(scores, flags, groups.ids, extra)

    def _art_report(self, result: DetectionResult) -> dict[int, float]:
        """ART's report: the raw score of every flagged sample, by index."""
        raw = result.extra["raw_scores"]
        return {int(i): float(raw[i]) for i in np.flatnonzero(result.flags)}

    def _group_scores(self, stream: RowStream, idx: np.ndarray) -> tuple[np.ndarray, float]:
        """Scores of the rows `idx` and the top eigenvalue, streaming the rows in chunks (two passes)."""
        axes = group_pca(stream, idx, 1)
        projection = axes.project(stream, idx, centered=self.mode != "art").squeeze(1)
        score = projection.abs() if self.mode == "art" else projection**2
        return score.cpu().numpy(), float(axes.eigenvalues[0])

    def _flag(self, score: np.ndarray, share: float) -> np.ndarray:
        if self.mode == "art":
            return score >= np.quantile(score, max(1.0 - share, 0.0))
        return flag_top(score, share)
