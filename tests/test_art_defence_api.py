"""artmed's detectors through ART's PoisonFilteringDefence API, and ART's detectors with CheXpert labels."""

import json

import numpy as np
import pytest
from art.defences.detector.poison import ActivationDefence, PoisonFilteringDefence, SpectralSignatureDefense

from artmed import MedCLIPEstimator
from artmed.defenses import (
    ActivationClustering,
    ARTActivationClustering,
    ARTSpectralSignatures,
    Defense,
    EvaluationContext,
    SpectralSignatures,
    art_inputs,
    registry,
)

LAYER = "image_pooled"
DETECTORS = [(SpectralSignatures, {"eps": 0.02}), (ActivationClustering, {"reduce": "pca"})]


class FlatEstimator:
    """An ART classifier surface whose activations are the flattened images; counts the images it extracts."""

    layer_names = ["image_embedding", LAYER]
    nb_classes = 2

    def __init__(self):
        self.extracted = 0

    def get_activations(self, x, layer, batch_size=128, framework=False):
        assert layer in (LAYER, 1)
        self.extracted += len(x)
        return np.asarray(x).reshape(len(x), -1)


def planted(n_per_class=200, d=64, poison=6, seed=0):
    """Images (N, 1, 8, 8) of Gaussian features in 3 CheXpert label groups; `poison` rows of the first group are
    shifted along one direction. Returns (x, y (N, 14), is_clean)."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(3 * n_per_class, d)).astype(np.float32)
    y = np.zeros((3 * n_per_class, 14), np.float32)
    for g, column in enumerate((0, 10, 5)):
        y[g * n_per_class : (g + 1) * n_per_class, column] = 1.0
        feats[g * n_per_class : (g + 1) * n_per_class] += rng.normal(size=d) * 3
    feats[:poison] += 12.0 * rng.normal(size=d) / np.sqrt(d)
    is_clean = np.ones(len(y), dtype=int)
    is_clean[:poison] = 0
    return feats.reshape(-1, 1, 8, 8), y, is_clean


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.mark.parametrize(("cls", "params"), DETECTORS)
def test_detect_poison_is_art_shaped_and_equals_run(cls, params, data):
    x, y, is_clean = data
    estimator = FlatEstimator()
    defence = cls(estimator, x, y, **params)
    assert isinstance(defence, PoisonFilteringDefence) and isinstance(defence, Defense)
    report, predicted = defence.detect_poison()
    assert isinstance(report, dict) and isinstance(predicted, list) and len(predicted) == len(y)
    assert all(type(v) is int and v in (0, 1) for v in predicted)
    flags = cls(**params).run(EvaluationContext(estimator=FlatEstimator(), x_train=x, y_train=y)).flags
    np.testing.assert_array_equal(predicted, 1 - flags.astype(int))
    assert not np.asarray(predicted)[:6].any()  # the planted rows are flagged
    matrices = json.loads(defence.evaluate_defence(is_clean))
    assert sorted(matrices) == ["class_0", "class_1", "class_2"]
    assert estimator.extracted == len(y)  # evaluate_defence reused the features of detect_poison
    first = defence.last_result.extra["group_names"].index("No Finding")
    assert matrices[f"class_{first}"]["TruePositive"] == {"rate": 100.0, "numerator": 6, "denominator": 6}
    negatives = sum(m["TrueNegative"]["numerator"] + m["FalsePositive"]["numerator"] for m in matrices.values())
    assert negatives == len(y) - 6
    assert sum(m["FalsePositive"]["numerator"] for m in matrices.values()) == int(flags.sum()) - 6


def test_reports_have_arts_layout(data):
    x, y, _ = data
    report, is_clean = SpectralSignatures(FlatEstimator(), x, y, eps=0.02).detect_poison()
    assert sorted(report) == [i for i, v in enumerate(is_clean) if v == 0]
    assert all(isinstance(v, float) and v > 0 for v in report.values())
    report, _ = ActivationClustering(FlatEstimator(), x, y, reduce="pca").detect_poison(analysis="smaller")
    assert report["cluster_analysis"] == "smaller" and report["suspicious_clusters"] == 3
    assert set(report["Class_0"]) == {"cluster_0", "cluster_1"} and report["analysis"] == "smaller"
    assert sum(c["ptc_data_in_cluster"] for c in report["Class_0"].values()) == pytest.approx(1.0, abs=0.01)


def test_set_params_checks_and_keeps_values_on_refusal(data):
    x, y, _ = data
    defence = SpectralSignatures(FlatEstimator(), x, y, eps=0.02)
    before = defence.get_params()
    with pytest.raises(ValueError, match="eps must be"):
        defence.set_params(removal_share=2.0, eps=-1)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['expected_pp_poison'\]"):
        defence.set_params(expected_pp_poison=0.1)
    with pytest.raises(ValueError, match="layer 'vision_last_stage' is not one of"):
        defence.set_params(layer="vision_last_stage")
    assert defence.get_params() == before
    _, is_clean = defence.detect_poison(eps=0.1)
    assert defence.eps == 0.1 and len(is_clean) - sum(is_clean) == 3 * int(np.floor(0.15 * 200))
    with pytest.raises(ValueError, match="x_train has 600 samples but y_train 5 rows"):
        defence.set_params(y_train=y[:5])
    assert defence.y_train is y


@pytest.mark.parametrize("cls", [SpectralSignatures, ActivationClustering])
def test_recorded_params_unchanged(cls, data):
    x, y, _ = data
    plain = cls()
    params = plain.get_params()
    assert not {"classifier", "x_train", "y_train"} & set(params)
    assert cls(FlatEstimator(), x, y).get_params() == params == registry.create(cls.name).get_params()
    assert cls(**params).get_params() == params and "x_train" not in repr(cls(FlatEstimator(), x, y))
    assert list(SpectralSignatures().get_params()) == [
        "eps",
        "removal_share",
        "layer",
        "mode",
        "device",
        "min_group_size",
        "grouping",
    ]


def test_art_api_refuses_missing_data_and_bad_truth(data):
    x, y, is_clean = data
    with pytest.raises(ValueError, match=r"needs classifier, x_train, y_train: construct it as SpectralSignatures\("):
        SpectralSignatures().detect_poison()
    with pytest.raises(ValueError, match="keyword-only"):
        SpectralSignatures(0.05, 1.5)
    with pytest.raises(ValueError, match=r"is_clean must be a \(600,\) array"):
        SpectralSignatures(FlatEstimator(), x, y).evaluate_defence(is_clean[:10])


@pytest.mark.parametrize(
    ("art_cls", "adapter", "kwargs"),
    [
        (SpectralSignatureDefense, ARTSpectralSignatures(expected_pp_poison=0.02), {"expected_pp_poison": 0.02}),
        (ActivationDefence, ARTActivationClustering(), {}),
    ],
)
def test_art_detectors_take_chexpert_labels_through_art_inputs(art_cls, adapter, kwargs, data):
    x, y, is_clean = data
    classifier, ids, classes, names = art_inputs(FlatEstimator(), x, y)
    assert classifier.nb_classes == len(names) == classes.shape[1] == 3
    state = np.random.get_state()
    np.random.seed(0)  # ART's k-means draws from NumPy's global generator; the adapter seeds it with 0
    try:
        _, art_clean = art_cls(classifier, ids, classes, **kwargs).detect_poison()
    finally:
        np.random.set_state(state)
    ours = adapter.run(EvaluationContext(y_train=y, feature_cache={LAYER: x.reshape(len(x), -1)}))
    np.testing.assert_array_equal(art_clean, 1 - ours.flags.astype(int))
    assert not np.asarray(art_clean)[:6].any()


def test_art_detectors_with_raw_chexpert_labels_crash_and_art_inputs_fixes_it():
    """The estimator cannot see ART's split by argmax over nb_classes (its prompts), so it cannot refuse it."""
    est = MedCLIPEstimator.tiny(
        {"normal": ["no effusion"], "effusion": ["effusion"]}, image_size=32, seed=0, batch_size=16
    )
    x = np.random.default_rng(0).uniform(0, 1, (24, 1, 32, 32)).astype(np.float32)
    y = np.zeros((24, 14), np.float32)
    y[:12, 10] = 1.0
    y[12:, 0] = 1.0
    with pytest.raises(IndexError):
        SpectralSignatureDefense(est, x, y).detect_poison()
    classifier, ids, classes, _ = art_inputs(est, x, y)
    _, is_clean = SpectralSignatureDefense(classifier, ids, classes, expected_pp_poison=0.1).detect_poison()
    ours = SpectralSignatures(est, x, y, eps=0.1, mode="art")
    np.testing.assert_array_equal(is_clean, ours.detect_poison()[1])
    assert len(is_clean) - sum(is_clean) == 2 * 2
