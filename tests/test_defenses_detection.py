"""Detection defenses on synthetic features: planted outliers are found, ART parity holds, bad input is refused."""

import numpy as np
import pytest
import torch
from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
from art.defences.detector.poison.clustering_analyzer import ClusteringAnalyzer
from sklearn.metrics import roc_auc_score, silhouette_score

from artmed.defenses import (
    ActivationClustering,
    ARTActivationClustering,
    ARTSpectralSignatures,
    DetectionResult,
    EvaluationContext,
    SpectralSignatures,
    group_labels,
)
from artmed.defenses.activation_clustering import suspicious_clusters
from artmed.defenses.kmeans import silhouette

LAYER = "image_pooled"


def planted(n_per_class=400, d=64, n_classes=3, poison_share=0.01, shift=15.0, seed=0):
    """Per-class Gaussian features with low-rank structure; `poison_share` of all samples, all in class 0,
    carry a shift along one random direction (the footprint of a trigger). Returns (features, y (N,14), mask)."""
    rng = np.random.default_rng(seed)
    feats, cls = [], []
    for c in range(n_classes):
        rank = min(20, d)
        basis, _ = np.linalg.qr(rng.normal(size=(d, rank)))
        factors = rng.normal(size=(n_per_class, rank)) * 2.0 * np.linspace(1, 0.3, rank)
        feats.append(rng.normal(size=d) + factors @ basis.T + rng.normal(size=(n_per_class, d)))
        cls.append(np.full(n_per_class, c))
    feats, cls = np.concatenate(feats).astype(np.float32), np.concatenate(cls)
    poison = rng.choice(np.flatnonzero(cls == 0), int(round(poison_share * len(cls))), replace=False)
    direction = rng.normal(size=d)
    feats[poison] += (shift * direction / np.linalg.norm(direction)).astype(np.float32)
    y = np.zeros((len(cls), 14), np.float32)
    y[np.arange(len(cls)), cls] = 1.0
    mask = np.zeros(len(cls), bool)
    mask[poison] = True
    return feats, y, mask


def context(feats, y, mask=None):
    return EvaluationContext(y_train=y, feature_cache={LAYER: feats})


def rates(flags, mask):
    tp = (flags & mask).sum()
    return tp / mask.sum(), (flags & ~mask).sum() / (~mask).sum(), 2 * tp / (flags.sum() + mask.sum())


class FeatureClassifier:
    """The ART classifier surface the detectors touch, answering with the features it is given as x."""

    def __init__(self, nb_classes):
        self.nb_classes = nb_classes
        self.layer_names = ["features"]

    def get_activations(self, x, layer, batch_size=128, framework=False):
        return x


def class_onehot(y):
    ids, names = group_labels(y)
    return np.eye(len(names), dtype=np.float32)[ids]


def test_group_labels_names_rows():
    y = np.zeros((4, 14), np.float32)
    y[0, 0] = y[1, 0] = 1
    y[2, [2, 10]] = 1
    y[3, 5] = -1
    ids, names = group_labels(y)
    assert ids[0] == ids[1] and len(set(ids.tolist())) == 3
    assert set(names) == {"No Finding", "Cardiomegaly+Pleural Effusion", "Edema?"}
    assert names[ids[2]] == "Cardiomegaly+Pleural Effusion"


def test_spectral_flags_planted_outliers():
    feats, y, mask = planted(poison_share=0.02)
    result = SpectralSignatures(eps=0.05).run(context(feats, y, mask))
    tpr, fpr, _ = rates(result.flags, mask)
    assert tpr >= 0.95 and fpr <= 0.06
    assert roc_auc_score(mask, result.scores) > 0.99
    assert result.flags.sum() == sum(int(np.floor(0.075 * (result.groups == g).sum())) for g in range(3))


def test_spectral_art_mode_equals_art():
    feats, y, mask = planted(n_per_class=300, poison_share=0.03, seed=1)
    ours = SpectralSignatures(eps=0.2, removal_share=1.5, mode="art").run(context(feats, y))
    onehot = class_onehot(y)
    report, is_clean = SpectralSignatureDefense(
        FeatureClassifier(onehot.shape[1]), feats, onehot, expected_pp_poison=0.2, eps_multiplier=1.5
    ).detect_poison()
    art_flags = np.asarray(is_clean) == 0
    np.testing.assert_array_equal(ours.flags, art_flags)
    flagged = np.flatnonzero(art_flags)
    np.testing.assert_allclose(ours.extra["raw_scores"][flagged], [report[i] for i in flagged], rtol=1e-4)
    adapter = ARTSpectralSignatures(expected_pp_poison=0.2, eps_multiplier=1.5).run(context(feats, y))
    np.testing.assert_array_equal(adapter.flags, art_flags)
    np.testing.assert_allclose(adapter.scores, ours.scores, rtol=1e-4)


def test_activation_clustering_flags_planted_outliers():
    feats, y, mask = planted(poison_share=0.03)
    for reduce in ("ica", "pca"):
        result = ActivationClustering(reduce=reduce).run(context(feats, y, mask))
        tpr, fpr, _ = rates(result.flags, mask)
        assert tpr >= 0.95 and fpr <= 0.01, reduce
        assert roc_auc_score(mask, result.scores) > 0.99


@pytest.mark.parametrize("reduce", ["ica", "pca"])
def test_activation_clustering_fitted_on_a_sample_still_flags_every_row(reduce):
    feats, y, mask = planted(n_per_class=1500, poison_share=0.02, seed=3)
    result = ActivationClustering(reduce=reduce, fit_rows=1000).run(context(feats, y, mask))
    tpr, fpr, _ = rates(result.flags, mask)
    assert tpr >= 0.95 and fpr <= 0.01
    assert all(group["size"] == 1500 for group in result.extra["per_group"])
    assert result.extra["fit_rows"] == 1000


def test_activation_clustering_seeded():
    feats, y, _ = planted(n_per_class=200)
    a = ActivationClustering(seed=3).run(context(feats, y))
    b = ActivationClustering(seed=3).run(context(feats, y))
    np.testing.assert_array_equal(a.scores, b.scores)


def test_smaller_rule_equals_art_analyzer():
    rng = np.random.default_rng(0)
    clusters = [rng.integers(0, 2, size=n) for n in (30, 31, 200)] + [np.array([0, 0, 1, 1]), np.array([1, 1, 0])]
    assigned_clean, _, _ = ClusteringAnalyzer().analyze_by_size(clusters)
    for labels, art_clean in zip(clusters, assigned_clean):
        ours = np.isin(labels, suspicious_clusters(labels, "smaller", art=True))
        np.testing.assert_array_equal(ours, np.asarray(art_clean) == 0)


def test_size_and_silhouette_rules():
    labels = np.array([0] * 30 + [1] * 70)
    assert suspicious_clusters(labels, "relative-size").tolist() == [0]
    assert suspicious_clusters(labels, "relative-size", size_threshold=0.2).tolist() == []
    three = np.array([0] * 34 + [1] * 33 + [2] * 33)
    assert suspicious_clusters(three, "relative-size").tolist() == [1, 2]
    assert suspicious_clusters(three, "relative-size", art=True).tolist() == [0, 1, 2]
    assert suspicious_clusters(labels, "silhouette", silhouette_score=0.3).tolist() == [0]
    assert suspicious_clusters(labels, "silhouette", silhouette_score=0.05).tolist() == []
    with pytest.raises(ValueError, match="silhouette_score"):
        suspicious_clusters(labels, "silhouette")


def test_silhouette_equals_sklearn():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(40, 5)), rng.normal(size=(25, 5)) + 2, rng.normal(size=(1, 5)) - 3])
    labels = np.array([0] * 40 + [1] * 25 + [2])
    ours = silhouette(torch.as_tensor(x), torch.as_tensor(labels), 3, chunk=16)
    assert ours == pytest.approx(silhouette_score(x, labels), abs=1e-9)


def test_activation_clustering_silhouette_analysis():
    feats, y, mask = planted(poison_share=0.03, shift=40.0)
    result = ActivationClustering(analysis="silhouette", reduce="pca").run(context(feats, y, mask))
    assert rates(result.flags, mask)[2] >= 0.95
    assert all("silhouette" in g for g in result.extra["per_group"])


def test_activation_clustering_art_mode_equals_art_on_clear_clusters():
    rng = np.random.default_rng(2)
    feats, classes = [], []
    for c, share in enumerate((0.3, 0.2, 0.4)):
        n_small = int(300 * share)
        centre = rng.normal(size=64) * 8
        feats += [rng.normal(size=(300 - n_small, 64)), rng.normal(size=(n_small, 64)) + centre]
        classes += [c] * 300
    feats, classes = np.concatenate(feats).astype(np.float32), np.array(classes)
    y = np.zeros((900, 14), np.float32)
    y[np.arange(900), classes] = 1.0
    ours = ActivationClustering(mode="art").run(context(feats, y))
    onehot = class_onehot(y)
    np.random.seed(0)
    _, is_clean = ActivationDefence(FeatureClassifier(onehot.shape[1]), feats, onehot).detect_poison(
        nb_clusters=2, nb_dims=10, reduce="PCA", cluster_analysis="smaller"
    )
    np.testing.assert_array_equal(ours.flags, np.asarray(is_clean) == 0)
    assert ours.flags.sum() == 90 + 60 + 120


def test_activation_clustering_beats_art_on_one_percent_poison(record_property):
    feats, y, mask = planted(n_per_class=2000, d=512, poison_share=0.01)
    ctx = context(feats, y, mask)
    ours = rates(ActivationClustering().run(ctx).flags, mask)[2]
    art = rates(ARTActivationClustering().run(ctx).flags, mask)[2]
    record_property("f1_artmed", float(ours))
    record_property("f1_art", float(art))
    assert ours >= 0.9
    assert art < 0.2


def test_nan_features_rejected():
    feats, y, _ = planted(n_per_class=50)
    feats[[3, 70]] = np.nan
    for defense in (SpectralSignatures(), ActivationClustering(), ARTSpectralSignatures()):
        with pytest.raises(ValueError, match="2 of 150 rows"):
            defense.run(context(feats, y))


def _with(y, row, value):
    y = y.copy()
    y[row, 2] = value
    return y


@pytest.mark.parametrize(
    "labels, message",
    [
        (
            lambda y: _with(y, 7, np.nan),
            r"y_train: labels contain NaN or infinite values in 1 of 150 rows "
            r"\(first: row 7, column 2\)",
        ),
        (lambda y: _with(_with(y, 9, -np.inf), 140, np.nan), r"in 2 of 150 rows \(first: row 9, column 2\)"),
        (lambda y: y[:-1], r"y_train has shape \(149, 14\), but 150 training samples are analysed"),
        (lambda y: np.concatenate([y, y[:1]]), r"y_train has shape \(151, 14\), but 150"),
        (lambda y: y.argmax(1)[:100], r"y_train has shape \(100,\), but 150"),
        (lambda y: np.where(y.argmax(1) == 0, "a", "b"), "labels must be numbers, got dtype <U1"),
        (lambda y: None, "the context has no y_train"),
    ],
)
@pytest.mark.parametrize(
    "make", [SpectralSignatures, ActivationClustering, ARTSpectralSignatures, ARTActivationClustering]
)
def test_bad_labels_rejected(make, labels, message):
    feats, y, _ = planted(n_per_class=50)
    defense = make()
    with pytest.raises(ValueError, match=f"^{defense.name}: .*{message}"):
        defense.run(context(feats, labels(y)))


def test_singleton_group_never_flagged_and_recorded():
    feats, y, _ = planted(n_per_class=100, poison_share=0.0)
    feats = np.concatenate([feats, feats[:1] + 100.0])
    y = np.concatenate([y, np.eye(14, dtype=np.float32)[[13]]])
    for defense in (SpectralSignatures(), ActivationClustering(), ARTSpectralSignatures(), ARTActivationClustering()):
        with pytest.warns(UserWarning, match="1 label group"):
            result = defense.run(context(feats, y))
        assert not result.flags[-1] and result.scores[-1] == 0.0
        assert result.extra["skipped_groups"] == [{"group": "Support Devices", "size": 1}]


def test_art_adapter_estimator_source_matches_features():
    feats, y, _ = planted(n_per_class=100, d=16, poison_share=0.02)

    class FlatEstimator:
        def get_activations(self, x, layer, batch_size=64):
            assert layer == LAYER
            return x.reshape(len(x), -1)

    images = feats.reshape(-1, 1, 4, 4)
    ctx = EvaluationContext(estimator=FlatEstimator(), x_train=images, y_train=y, batch_size=32)
    for cls in (ARTSpectralSignatures, ARTActivationClustering):
        direct = cls(source="estimator").run(ctx)
        cached = cls().run(context(feats, y))
        np.testing.assert_array_equal(direct.flags, cached.flags)
    np.testing.assert_array_equal(ctx.features(LAYER), feats)


def test_context_extracts_features_once():
    calls = []

    def fn(layer):
        calls.append(layer)
        return np.ones((5, 2, 3))

    ctx = EvaluationContext(y_train=np.zeros((5, 14), np.float32), feature_fn=fn)
    assert ctx.features("a").shape == (5, 6)
    ctx.features("a")
    assert calls == ["a"]
    with pytest.raises(ValueError, match="no feature_fn"):
        EvaluationContext(y_train=np.zeros((5, 14))).features("a")


@pytest.mark.parametrize(
    "make",
    [
        lambda: SpectralSignatures(eps=0.0),
        lambda: SpectralSignatures(mode="paper"),
        lambda: SpectralSignatures(min_group_size=1),
        lambda: ActivationClustering(analysis="distance"),
        lambda: ActivationClustering(n_clusters=1),
        lambda: ActivationClustering(size_threshold=1.5),
        lambda: ActivationClustering(fit_rows=10),
        lambda: ARTActivationClustering(cluster_analysis="relative-size"),
        lambda: ARTSpectralSignatures(expected_pp_poison=2.0),
    ],
)
def test_bad_params_rejected(make):
    with pytest.raises(ValueError):
        make()


def test_detection_result_validates_shapes():
    with pytest.raises(ValueError, match="must both be"):
        DetectionResult(np.zeros(3), np.zeros(4, bool))


def test_get_params_round_trip():
    defense = ActivationClustering(reduce="pca", seed=4)
    assert ActivationClustering(**defense.get_params()).get_params() == defense.get_params()
    assert defense.resolved() == {"reduce": "pca", "analysis": "relative-size", "n_init": 10, "fit_rows": 50_000}
    assert ActivationClustering(mode="art").resolved() == {
        "reduce": "pca",
        "analysis": "smaller",
        "n_init": 1,
        "fit_rows": None,
    }
    assert ActivationClustering(mode="art", fit_rows=500).resolved()["fit_rows"] == 500


@pytest.mark.parametrize("cls", [ARTSpectralSignatures, ARTActivationClustering])
def test_art_adapters_with_a_single_label_group(cls):
    """ART's class split calls int() on a one-column one-hot row (NumPy 2 refuses): one group must still run."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 16)).astype(np.float32)
    features[:5] += 6.0
    y = np.zeros((300, 14), dtype=np.float32)
    y[:, 0] = 1.0
    mask = np.zeros(300, dtype=bool)
    mask[:5] = True
    context = EvaluationContext(y_train=y, feature_cache={"image_pooled": features})
    result = cls().run(context)
    assert result.flags.shape == (300,) and result.flags[:5].all()


def test_kmeans_plus_plus_draws_by_squared_distance():
    from collections import Counter

    from artmed.defenses.kmeans import _kmeans_pp

    x = torch.tensor([[0.0], [0.0], [10.0], [10.0], [11.0]], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    pairs = Counter(tuple(sorted(_kmeans_pp(x, 2, generator)[:, 0].tolist())) for _ in range(4000))
    # first pick uniform, second proportional to the squared distance to it
    assert pairs[(0.0, 10.0)] / 4000 == pytest.approx(0.4 * 200 / 321 + 0.4 * 200 / 201, abs=0.03)
    assert pairs[(0.0, 11.0)] / 4000 == pytest.approx(0.4 * 121 / 321 + 0.2 * 242 / 244, abs=0.03)
    assert pairs[(10.0, 11.0)] / 4000 < 0.02


@pytest.mark.parametrize("k", [2, 3, 4])
def test_kmeans_matches_sklearn_inertia_and_each_run_matches_a_lone_run(k):
    from sklearn.cluster import KMeans

    from artmed.defenses.kmeans import _lloyd_all, kmeans

    rng = np.random.default_rng(k)
    x = np.concatenate([rng.normal(size=(150, 5)) + 6.0 * rng.normal(size=5) for _ in range(k)])
    ours = kmeans(torch.as_tensor(x), k, 5, torch.Generator().manual_seed(0), axis_starts=True)
    reference = KMeans(k, n_init=10, random_state=0).fit(x)
    assert ours.inertia == pytest.approx(reference.inertia_, rel=1e-6) and ours.converged
    starts = torch.as_tensor(x[rng.choice(len(x), (6, k), replace=False)])
    together = _lloyd_all(torch.as_tensor(x), starts, 300, 0.0)
    for start, fit in zip(starts, together):
        (alone,) = _lloyd_all(torch.as_tensor(x), start[None], 300, 0.0)
        assert torch.equal(alone.labels, fit.labels) and alone.inertia == pytest.approx(fit.inertia)


def test_kmeans_refills_an_empty_cluster():
    from artmed.defenses.kmeans import _lloyd_all

    x = torch.tensor([[0.0], [0.1], [0.2], [10.0]], dtype=torch.float64)
    (fit,) = _lloyd_all(x, torch.tensor([[[0.1], [50.0], [60.0]]], dtype=torch.float64), 100, 0.0)
    assert sorted(np.bincount(fit.labels.numpy(), minlength=3).tolist()) == [1, 1, 2]
