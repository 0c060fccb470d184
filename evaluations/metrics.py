"""The project's metrics, defined once: clean accuracy, attack success, robust accuracy, detection scores, DER.

Predictions may be class indices (N,) or score/probability matrices (N, K) (argmax is taken); true classes and the
target are class indices. ASR follows BackdoorBench/CleanCLIP (triggered images whose true class is not the target);
``attack_success_rate_all`` is the seed code's variant over every triggered image. Pure numpy (+ sklearn for AUROC).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

__all__ = [
    "as_class_indices",
    "clean_accuracy",
    "classification_report",
    "attack_success_rate",
    "attack_success_rate_all",
    "asr_all",
    "robust_accuracy",
    "detection_metrics",
    "defense_effectiveness_rating",
]


def as_class_indices(pred: Any, what: str = "pred") -> np.ndarray:
    """Class indices (N,) from indices (N,) or a score matrix (N, K) (argmax over K)."""
    arr = np.asarray(pred)
    if arr.ndim == 2:
        if arr.shape[1] < 1:
            raise ValueError(f"{what} score matrix has no class columns, shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
            raise ValueError(f"{what} score matrix must be finite numbers")
        return np.argmax(arr, axis=1).astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be class indices (N,) or scores (N, K), got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{what} class indices must be integers, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or arr.min() < 0:
        raise ValueError(f"{what} class indices must be non-negative integers")
    return arr.astype(np.int64)


def clean_accuracy(pred: Any, true: Any) -> float:
    """Share of images predicted as their true class (CA on clean test images)."""
    p, t = _pair(pred, true)
    return float(np.mean(p == t))


def classification_report(pred: Any, true: Any, num_classes: int | None = None) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 over ``num_classes`` classes (inferred from scores or labels if None)."""
    p, t = _pair(pred, true)
    if num_classes is None:
        width = np.asarray(pred).shape[1] if np.ndim(pred) == 2 else 0
        num_classes = max(width, int(p.max()) + 1, int(t.max()) + 1)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if p.max() >= num_classes or t.max() >= num_classes:
        raise ValueError(f"class indices must be below num_classes={num_classes}")
    precision, recall, f1, _ = precision_recall_fscore_support(
        t, p, labels=np.arange(num_classes), average="macro", zero_division=0
    )
    return {
        "accuracy": float(np.mean(p == t)),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
    }


def attack_success_rate(pred_triggered: Any, true: Any, target: int) -> float:
    """Share of triggered images whose TRUE class is not ``target`` that are predicted as ``target``."""
    p, t = _pair(pred_triggered, true, what="pred_triggered")
    keep = t != _check_target(target)
    if not keep.any():
        raise ValueError(f"ASR is undefined: every test image has the target class {target} as its true class")
    return float(np.mean(p[keep] == target))


def attack_success_rate_all(pred_triggered: Any, target: int) -> float:
    """Share of ALL triggered images predicted as ``target`` (the seed code's ASR, target-class images included)."""
    p = as_class_indices(pred_triggered, "pred_triggered")
    if p.size == 0:
        raise ValueError("pred_triggered is empty")
    return float(np.mean(p == _check_target(target)))


asr_all = attack_success_rate_all


def robust_accuracy(pred_triggered: Any, true: Any, target: int | None = None) -> float:
    """Share of triggered images still predicted as their true class; over non-target images when ``target`` is set."""
    p, t = _pair(pred_triggered, true, what="pred_triggered")
    if target is None:
        return float(np.mean(p == t))
    keep = t != _check_target(target)
    if not keep.any():
        raise ValueError(f"RA is undefined: every test image has the target class {target} as its true class")
    return float(np.mean(p[keep] == t[keep]))


def detection_metrics(flags: Any, mask: Any, scores: Any = None) -> dict[str, float]:
    """Poison-detection quality of boolean ``flags`` against the ground-truth poison ``mask`` (both (N,)).

    Returns TPR (recall), FPR, precision, F1, AUROC and ``tpr_at_fpr5`` (both from continuous ``scores``, higher =
    more suspicious; NaN when no scores or only one class in ``mask``), the removed share (flagged / N) and the raw
    counts. Undefined ratios (no poison, no clean image, nothing flagged) are NaN. ``tpr_at_fpr5`` is the share of
    poisoned samples scored above the clean samples' 95th percentile: the TPR of the score itself at 5 % FPR, whatever
    share the defense chose to flag (the same cut as ``input_screen_metrics``' ``far_frr5``: 1 - FAR at FRR 5 %).
    """
    f = _as_bool(flags, "flags")
    m = _as_bool(mask, "mask")
    if f.shape != m.shape:
        raise ValueError(f"flags has {f.shape[0]} entries but mask has {m.shape[0]}")
    if f.size == 0:
        raise ValueError("flags and mask are empty")
    tp = int(np.sum(f & m))
    fp = int(np.sum(f & ~m))
    fn = int(np.sum(~f & m))
    tn = int(np.sum(~f & ~m))
    auroc = tpr_at_fpr5 = float("nan")
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != m.shape:
            raise ValueError(f"scores must have shape {m.shape}, got {s.shape}")
        if not np.all(np.isfinite(s)):
            raise ValueError("scores contain NaN or infinite values")
        if 0 < m.sum() < m.size:
            auroc = float(roc_auc_score(m, s))
            tpr_at_fpr5 = float(np.mean(s[m] > np.quantile(s[~m], 0.95, method="higher")))
    return {
        "tpr": _ratio(tp, tp + fn),
        "fpr": _ratio(fp, fp + tn),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "auroc": auroc,
        "tpr_at_fpr5": tpr_at_fpr5,
        "removed": float(f.mean()),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def input_screen_metrics(
    clean_scores: Any,
    triggered_scores: Any,
    threshold: float | None = None,
    frr_levels: tuple[float, ...] = (0.01, 0.05),
) -> dict[str, float]:
    """How well an input screen separates triggered from clean inference-time inputs (STRIP's evaluation).

    ``auroc`` (triggered = positive); for each FRR level ``r``, ``far_frr{100 r}``: the share of triggered inputs
    accepted when the threshold rejects the top ``r`` share of clean inputs (the clean scores' (1 - r) quantile);
    with the defense's own ``threshold``: its ``frr`` (clean rejected) and ``far`` (triggered accepted).
    """
    clean, triggered = (np.asarray(s, dtype=np.float64).reshape(-1) for s in (clean_scores, triggered_scores))
    for name, s in (("clean_scores", clean), ("triggered_scores", triggered)):
        if s.size == 0:
            raise ValueError(f"{name} is empty")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"{name} contain NaN or infinite values")
    labels = np.r_[np.zeros(clean.size), np.ones(triggered.size)]
    result = {"auroc": float(roc_auc_score(labels, np.r_[clean, triggered]))}
    for rate in frr_levels:
        cut = np.quantile(clean, 1.0 - rate, method="higher")
        result[f"far_frr{round(100 * rate)}"] = float(np.mean(triggered <= cut))
    if threshold is not None:
        result.update(frr=float(np.mean(clean > threshold)), far=float(np.mean(triggered <= threshold)))
    return result


def defense_effectiveness_rating(asr_before: float, asr_after: float, ca_before: float, ca_after: float) -> float:
    """DER = [max(0, ASR_before − ASR_after) − max(0, CA_before − CA_after) + 1] / 2, in [0, 1]; 0.5 = no effect."""
    values = {"asr_before": asr_before, "asr_after": asr_after, "ca_before": ca_before, "ca_after": ca_after}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ValueError(f"{name} must be a rate in [0, 1], got {value!r}")
        if not np.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a rate in [0, 1], got {value!r}")
    gain = max(0.0, float(asr_before) - float(asr_after))
    loss = max(0.0, float(ca_before) - float(ca_after))
    return (gain - loss + 1.0) / 2.0


def _pair(pred: Any, true: Any, what: str = "pred") -> tuple[np.ndarray, np.ndarray]:
    p = as_class_indices(pred, what)
    t = np.asarray(true)
    if t.ndim != 1:
        raise ValueError(f"true must be class indices (N,), got shape {t.shape}")
    t = as_class_indices(t, "true")
    if p.shape[0] != t.shape[0]:
        raise ValueError(f"{what} has {p.shape[0]} predictions but true has {t.shape[0]} labels")
    if p.size == 0:
        raise ValueError(f"{what} and true are empty")
    return p, t


def _check_target(target: Any) -> int:
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or target < 0:
        raise ValueError(f"target must be a non-negative class index, got {target!r}")
    return int(target)


def _as_bool(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D boolean array, got shape {arr.shape}")
    if arr.dtype != bool:
        if arr.size and (not np.issubdtype(arr.dtype, np.number) or not np.all(np.isin(arr, (0, 1)))):
            raise ValueError(f"{what} must be boolean (or 0/1), got values other than 0/1")
        arr = arr.astype(bool)
    return arr


def _ratio(num: int, den: int) -> float:
    return float(num) / den if den else float("nan")
