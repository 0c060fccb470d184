"""Metrics on hand-made predictions with hand-computed values."""

import math

import numpy as np
import pytest

from artmed.evaluations.metrics import (
    asr_all,
    attack_success_rate,
    attack_success_rate_all,
    classification_report,
    clean_accuracy,
    defense_effectiveness_rating,
    detection_metrics,
    input_screen_metrics,
    robust_accuracy,
)

TRUE = np.array([0, 0, 1, 1, 1, 2, 2, 2])
TRIGGERED = np.array([0, 0, 0, 0, 1, 0, 2, 1])  # target 0


def test_clean_accuracy_indices_and_probabilities():
    pred = np.array([0, 1, 1, 1, 0, 2, 2, 2])
    assert clean_accuracy(pred, TRUE) == pytest.approx(6 / 8)
    probs = np.eye(3)[pred] * 0.8 + 0.05
    assert clean_accuracy(probs, TRUE) == pytest.approx(6 / 8)


def test_classification_report():
    pred = np.array([0, 1, 1, 1, 0, 2, 2, 2])
    report = classification_report(pred, TRUE, num_classes=3)
    # class 0: P=1/2 R=1/2; class 1: P=2/3 R=2/3; class 2: P=1 R=1
    assert report["accuracy"] == pytest.approx(0.75)
    assert report["macro_precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert report["macro_recall"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert report["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    with_absent = classification_report(pred, TRUE, num_classes=4)
    assert with_absent["macro_recall"] == pytest.approx((0.5 + 2 / 3 + 1) / 4)


def test_attack_success_and_robust_accuracy():
    # non-target images: indices 2..7 (6); predicted 0 at 2, 3, 5 -> ASR 3/6; still true at 4, 6 -> RA 2/6
    assert attack_success_rate(TRIGGERED, TRUE, target=0) == pytest.approx(3 / 6)
    assert attack_success_rate_all(TRIGGERED, target=0) == pytest.approx(5 / 8)
    assert asr_all is attack_success_rate_all
    assert robust_accuracy(TRIGGERED, TRUE, target=0) == pytest.approx(2 / 6)
    assert robust_accuracy(TRIGGERED, TRUE) == pytest.approx(4 / 8)
    probs = np.eye(3)[TRIGGERED]
    assert attack_success_rate(probs, TRUE, 0) == pytest.approx(0.5)


def test_detection_metrics():
    mask = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    flags = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.8, 0.1, 0.7, 0.2, 0.3, 0.0, 0.05, 0.15, 0.25])
    out = detection_metrics(flags, mask, scores)
    assert out["tpr"] == pytest.approx(2 / 3)
    assert out["fpr"] == pytest.approx(1 / 7)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["removed"] == pytest.approx(0.3)
    # positive-negative pairs ranked correctly: 0.9 and 0.8 beat all 7, 0.1 beats 0.0 and 0.05 -> (7+7+2)/21
    assert out["auroc"] == pytest.approx(16 / 21)
    # the clean scores' 95th percentile (method "higher") is their maximum 0.7: 0.9 and 0.8 lie above it
    assert out["tpr_at_fpr5"] == pytest.approx(2 / 3)
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (2, 1, 1, 6)


def test_tpr_at_fpr5_is_the_input_screens_cut():
    rng = np.random.default_rng(0)
    clean, poison = rng.normal(0, 1, 200), rng.normal(1.5, 1, 20)
    scores = np.r_[clean, poison]
    mask = np.r_[np.zeros(200, bool), np.ones(20, bool)]
    out = detection_metrics(np.zeros(220, bool), mask, scores)
    assert 0.0 < out["tpr_at_fpr5"] < 1.0
    assert out["tpr_at_fpr5"] == pytest.approx(1.0 - input_screen_metrics(clean, poison)["far_frr5"])
    assert np.mean(clean > np.quantile(clean, 0.95, method="higher")) <= 0.05


def test_detection_metrics_undefined_cases():
    no_poison = detection_metrics(np.array([0, 1, 0]), np.array([0, 0, 0]), scores=np.array([0.1, 0.5, 0.2]))
    assert math.isnan(no_poison["tpr"]) and math.isnan(no_poison["auroc"]) and math.isnan(no_poison["tpr_at_fpr5"])
    assert no_poison["fpr"] == pytest.approx(1 / 3)
    nothing_flagged = detection_metrics(np.zeros(4, bool), np.array([1, 0, 0, 0], bool))
    assert math.isnan(nothing_flagged["precision"]) and nothing_flagged["f1"] == 0.0
    assert math.isnan(nothing_flagged["auroc"])


def test_defense_effectiveness_rating():
    assert defense_effectiveness_rating(0.9, 0.1, 0.8, 0.7) == pytest.approx((0.8 - 0.1 + 1) / 2)
    assert defense_effectiveness_rating(0.5, 0.6, 0.7, 0.75) == pytest.approx(0.5)
    assert defense_effectiveness_rating(1.0, 0.0, 0.8, 0.8) == pytest.approx(1.0)
    assert defense_effectiveness_rating(0.2, 0.2, 1.0, 0.0) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: clean_accuracy(np.array([0, 1]), np.array([0, 1, 1])),
        lambda: clean_accuracy(np.array([]), np.array([])),
        lambda: clean_accuracy(np.zeros((2, 2, 2)), np.array([0, 1])),
        lambda: clean_accuracy(np.array([0.5, 1.0]), np.array([0, 1])),
        lambda: clean_accuracy(np.array([0, 1]), np.eye(2)),
        lambda: classification_report(np.array([0, 3]), np.array([0, 1]), num_classes=3),
        lambda: attack_success_rate(np.array([0, 0]), np.array([0, 0]), target=0),
        lambda: attack_success_rate(np.array([0, 1]), np.array([1, 1]), target=-1),
        lambda: detection_metrics(np.array([1, 0]), np.array([1, 0, 0])),
        lambda: detection_metrics(np.array([1, 0]), np.array([0.3, 0.7])),
        lambda: detection_metrics(np.array([1, 0]), np.array([1, 0]), scores=np.array([0.1])),
        lambda: defense_effectiveness_rating(1.2, 0.1, 0.8, 0.7),
        lambda: defense_effectiveness_rating(0.9, float("nan"), 0.8, 0.7),
    ],
)
def test_bad_input(call):
    with pytest.raises(ValueError):
        call()
