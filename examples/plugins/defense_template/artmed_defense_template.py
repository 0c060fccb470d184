"""A template artmed defense (``artmed.defenses.Defense``, kind "detection"); docs/plugin_contract.md has the
contract of every kind."""

import numpy as np

from artmed.defenses.base import Defense, DetectionResult, EvaluationContext
from artmed.params import Choice, Real


class FeatureNorm(Defense):
    """Scores each training image by the L2 norm of its features and flags the highest ``share``."""

    name = "feature_norm"
    kind = "detection"
    param_rules = {
        "share": Real(0.0, 1.0, "()"),
        "layer": Choice(("image_pooled", "image_embedding", "vision_last_stage")),
    }

    def __init__(self, share: float = 0.05, layer: str = "image_pooled") -> None:
        self.share = share
        self.layer = layer
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()

    def run(self, context: EvaluationContext) -> DetectionResult:
        scores = np.linalg.norm(context.features(self.layer), axis=1)
        flags = np.zeros(scores.shape[0], dtype=bool)
        flags[np.argsort(-scores, kind="stable")[: max(1, round(self.share * scores.shape[0]))]] = True
        return DetectionResult(scores=scores, flags=flags)
