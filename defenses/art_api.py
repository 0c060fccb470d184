"""ART's poison-filter API for artmed's detectors: ``Cls(classifier, x_train, y_train, **params)``,
``detect_poison``, ``evaluate_defence`` and ``set_params``, so a detector drops in where ART's
``SpectralSignatureDefense`` or ``ActivationDefence`` was used, and still runs in the harness through ``run(context)``.
"""

from __future__ import annotations

import inspect
from abc import abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np
from art.defences.detector.poison import GroundTruthEvaluator, PoisonFilteringDefence

from artmed.defenses.base import Defense, DetectionResult, EvaluationContext

ART_DATA = ("classifier", "x_train", "y_train")
"""ART's constructor arguments: the data a detector analyses, not parameters of the defense (never recorded)."""


class ARTPoisonFilter(Defense, PoisonFilteringDefence):
    """A detection `Defense` that is also an ART ``PoisonFilteringDefence``.

    ``classifier`` is an ART classifier (e.g. ``MedCLIPEstimator``) whose ``get_activations`` serves the detector's
    `layer` (one of its ``layer_names``); ``x_train`` its training images; ``y_train`` their labels: (N, 14)
    CheXpert rows, one-hot or class ids (samples are grouped by their exact label row, unlike ART's argmax).
    ``detect_poison`` runs ``run`` on an ``EvaluationContext`` of the three; features are extracted once per
    (classifier, x_train, y_train) objects and reused by later calls (assign new objects to extract again).
    ``set_params`` (``artmed.params.Params``'s, before ART's) takes ``defence_params`` (the ``__init__`` names),
    refuses other names instead of ignoring them, and restores every value when ``_check_params`` refuses the new
    ones. ``get_params`` (what the harness records)
    leaves the data out. ``last_result`` is the last call's ``DetectionResult`` (continuous scores, group names).
    """

    layer: str
    last_result: DetectionResult | None

    def __init__(self, classifier: Any = None, x_train: Any = None, y_train: np.ndarray | None = None) -> None:
        PoisonFilteringDefence.__init__(self, classifier, x_train, y_train)
        self.last_result = None
        self._cached: tuple[tuple[Any, Any, Any], EvaluationContext] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.defence_params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        """The defense's own ``__init__`` parameters (not classifier, x_train, y_train) and their values."""
        return {k: v for k, v in super().get_params().items() if k not in ART_DATA}

    def detect_poison(self, **kwargs: Any) -> tuple[dict[Any, Any], list[int]]:
        """ART's ``(report, is_clean_lst)``: is_clean_lst[i] is 1 where sample i is kept, 0 where flagged.
        `kwargs` are parameters, set (and kept) first as in ART."""
        self.set_params(**kwargs)
        result = self._run_on_data()
        return self._art_report(result), (~result.flags).astype(int).tolist()

    def evaluate_defence(self, is_clean: np.ndarray, **kwargs: Any) -> str:
        """ART's JSON confusion matrices of the flags against the truth `is_clean` (1 clean, 0 poison), one
        ``class_<g>`` entry per label group g (names in ``last_result.extra["group_names"]``)."""
        self.set_params(**kwargs)
        truth = None if is_clean is None else np.asarray(is_clean)
        if truth is None or truth.size == 0:
            raise ValueError("is_clean was not provided while invoking evaluate_defence.")
        y_train = self._context().y_train
        assert y_train is not None  # _context refuses a missing y_train
        n = len(y_train)
        if truth.shape != (n,) or not np.isin(truth, (0, 1)).all():
            raise ValueError(f"is_clean must be a ({n},) array of 0 (poison) and 1 (clean), got shape {truth.shape}")
        result = self._run_on_data()
        predicted = (~result.flags).astype(int)
        assert result.groups is not None  # the label-grouped detectors behind this API always set it
        members = [np.flatnonzero(result.groups == g) for g in range(int(result.groups.max()) + 1)]
        _, matrices = GroundTruthEvaluator().analyze_correctness(
            [predicted[idx] for idx in members], [truth[idx] for idx in members]
        )
        return matrices

    def _check_data(self) -> None:
        """Check the ART data given so far (each may still be None); called at the end of ``_check_params``."""
        name = type(self).__name__
        if self.classifier is not None:
            if not callable(getattr(self.classifier, "get_activations", None)):
                raise ValueError(
                    f"{name}: classifier must be an ART classifier with get_activations, got "
                    f"{type(self.classifier).__name__} (the defense's own parameters are keyword-only)"
                )
            names = getattr(self.classifier, "layer_names", None)
            if names is not None and self.layer not in names:
                raise ValueError(
                    f"{name}: layer {self.layer!r} is not one of the classifier's layer_names {names} "
                    f"(ART's detectors analyse the last one: layer={names[-1]!r})"
                )
        if self.x_train is not None and self.y_train is not None and len(self.x_train) != len(self.y_train):
            raise ValueError(f"{name}: x_train has {len(self.x_train)} samples but y_train {len(self.y_train)} rows")

    def _context(self) -> EvaluationContext:
        """The context of (classifier, x_train, y_train), kept with its feature cache while they stay the same."""
        data = (self.classifier, self.x_train, self.y_train)
        missing = [k for k, v in zip(ART_DATA, data) if v is None]
        if missing:
            raise ValueError(
                f"{type(self).__name__}: ART's API needs {', '.join(missing)}: construct it as "
                f"{type(self).__name__}(classifier, x_train, y_train, ...) or use set_params"
            )
        if self._cached is None or any(a is not b for a, b in zip(self._cached[0], data)):
            self._cached = data, EvaluationContext(estimator=data[0], x_train=data[1], y_train=data[2])
        return self._cached[1]

    if TYPE_CHECKING:

        def run(self, context: EvaluationContext) -> DetectionResult: ...

    def _run_on_data(self) -> DetectionResult:
        self.last_result = self.run(self._context())
        return self.last_result

    @abstractmethod
    def _art_report(self, result: DetectionResult) -> dict[Any, Any]:
        """ART's report of this detector for `result`."""
