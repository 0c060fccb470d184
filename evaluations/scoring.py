"""Zero-shot scoring of one estimator on one task: CA (+ macro P/R/F1), ASR, ASR_all and RA in one call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from artmed.constants import CHEXPERT_LABELS
from artmed.evaluations.metrics import (
    attack_success_rate,
    attack_success_rate_all,
    classification_report,
    robust_accuracy,
)

NORMAL_ALIASES: tuple[str, ...] = ("No Finding", "Normal", "normal", "no finding")


def target_index(class_names: list[str], target: str) -> int | None:
    """Index of the task class that stands for the CheXpert ``target`` ("No Finding" matches "Normal"), or None."""
    if target not in CHEXPERT_LABELS:
        raise ValueError(f"unknown target class {target!r}; valid: {list(CHEXPERT_LABELS)}")
    if target in class_names:
        return class_names.index(target)
    if target == "No Finding":
        for alias in NORMAL_ALIASES:
            if alias in class_names:
                return class_names.index(alias)
    return None


def score_estimator(
    estimator: Any,
    x_test: Any,
    targets: np.ndarray,
    x_triggered: Any | None = None,
    target: int | None = None,
    batch_size: int | None = None,
) -> dict[str, float]:
    """CA and macro P/R/F1 on clean images; ASR, ASR_all and RA on triggered ones when given (NaN otherwise)."""
    nan = float("nan")
    pred = _predict_classes(estimator, x_test, batch_size, "clean")
    report = classification_report(pred, targets, num_classes=estimator.nb_classes)
    result = {
        "ca": report["accuracy"],
        "precision": report["macro_precision"],
        "recall": report["macro_recall"],
        "f1": report["macro_f1"],
        "asr": nan,
        "asr_all": nan,
        "ra": nan,
    }
    if x_triggered is not None:
        pred_t = _predict_classes(estimator, x_triggered, batch_size, "triggered")
        result["ra"] = robust_accuracy(pred_t, targets, target)
        if target is not None:
            result["asr"] = attack_success_rate(pred_t, targets, target)
            result["asr_all"] = attack_success_rate_all(pred_t, target)
    return result


def score_over_prompt_draws(
    estimator: Any,
    x_test: Any,
    targets: np.ndarray,
    x_triggered: Any | None = None,
    target: int | None = None,
    batch_size: int | None = None,
    *,
    draws: int = 5,
    n_prompts: int = 10,
    seed: int = 42,
    normal_sentences: Sequence[str] | None = None,
    prompt_sets: Sequence[Mapping[str, Sequence[str]]] | None = None,
) -> dict[str, float]:
    """``score_estimator`` once per prompt set, as MedCLIP's ``zero_shot.py`` evaluates (``n_runs=5`` draws of
    ``n=10`` sampled prompts per class): every metric's mean over the draws, its ``<metric>_draw_std`` (population
    std, ``np.std`` as the released script prints) and ``"draws"``.

    The sets are ``prompt_sets`` when given, else ``artmed.data.medclip_prompts.medclip_prompt_draws(estimator.classes,
    draws, n_prompts, seed, normal_sentences)``; each must have the estimator's classes in order. Every draw is
    scored by ``estimator.with_prompts(set)`` (same model and settings, ``ensemble`` included); ``estimator`` itself is
    not changed. A metric that is NaN in every draw (e.g. ASR without triggered images) stays NaN.
    """
    from artmed.data.medclip_prompts import check_prompt_sets, medclip_prompt_draws

    if prompt_sets is None:
        prompt_sets = medclip_prompt_draws(
            estimator.classes, draws=draws, n=n_prompts, seed=seed, normal_sentences=normal_sentences
        )
    check_prompt_sets(prompt_sets, estimator.classes)
    runs = [
        score_estimator(estimator.with_prompts(p), x_test, targets, x_triggered, target, batch_size)
        for p in prompt_sets
    ]
    result: dict[str, float] = {}
    for key in runs[0]:
        values = np.array([r[key] for r in runs], dtype=np.float64)
        finite = values[~np.isnan(values)]
        result[key] = float(finite.mean()) if finite.size else float("nan")
        result[f"{key}_draw_std"] = float(finite.std()) if finite.size else float("nan")
    result["draws"] = len(runs)
    return result


def _predict_classes(estimator: Any, x: Any, batch_size: int | None, which: str) -> np.ndarray:
    """Predicted class per image; a ValueError when any probability is NaN or infinite (argmax would pick class 0,
    which can be the attack's target: a diverged model would score as a perfect backdoor). An estimator whose
    ``decision`` is not ``argmax`` (``artmed.estimator.DECISIONS``) decides by its ``predict_classes``."""
    if getattr(estimator, "decision", "argmax") != "argmax":
        try:
            return estimator.predict_classes(x, batch_size=batch_size)
        except ValueError as err:
            raise ValueError(f"{err} ({which} test images): it cannot be scored") from err
    probs = np.asarray(estimator.predict(x, batch_size=batch_size))
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise ValueError(
            f"the model's predictions are NaN or infinite on {int(bad.sum())} of {len(bad)} {which} "
            "test images (diverged training or non-finite weights); it cannot be scored"
        )
    return probs.argmax(axis=1)
