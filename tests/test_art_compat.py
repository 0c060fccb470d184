"""ART's own tools run on MedCLIPEstimator unchanged: poison detectors, FGSM, gradients, params."""

import numpy as np
import pytest
from art.attacks.evasion import FastGradientMethod
from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
from art.estimators.classification.classifier import ClassGradientsMixin, ClassifierMixin
from art.estimators.estimator import LossGradientsMixin
from art.estimators.pytorch import PyTorchEstimator

from artmed import MedCLIPEstimator

SIZE = 32
PROMPTS = {
    "normal": ["no acute cardiopulmonary process", "the lungs are clear"],
    "effusion": ["small left pleural effusion", "blunting of the costophrenic angle"],
}


@pytest.fixture(scope="module")
def est():
    return MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, batch_size=16)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (40, 1, SIZE, SIZE)).astype(np.float32)
    x[20:, :, -8:, -8:] = 0.0  # half the images carry a black corner patch
    y = np.eye(2, dtype=np.float32)[np.arange(40) % 2]
    return x, y


def _ce(est, x, labels):
    p = est.predict(x)
    return -np.log(p[np.arange(len(x)), labels] + 1e-12)


def test_is_an_art_classifier_with_gradients(est):
    for base in (ClassifierMixin, ClassGradientsMixin, LossGradientsMixin, PyTorchEstimator):
        assert isinstance(est, base)
    assert est.nb_classes == 2 and est.input_shape == (1, SIZE, SIZE)
    assert est.preprocessing is None and est.channels_first
    np.testing.assert_array_equal(est.clip_values, [0.0, 1.0])


def test_set_params_switches_prompts(est, data):
    other = est.clone()
    other.set_params(prompts={**PROMPTS, "nodule": ["round nodule in the right upper lobe"]})
    assert other.nb_classes == 3 and other.predict(data[0][:2]).shape == (2, 3)
    assert est.nb_classes == 2


def test_activation_defence_flags_every_sample(est, data):
    x, y = data
    defence = ActivationDefence(est, x, y)
    report, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=5, reduce="PCA")
    assert len(is_clean) == len(x) and set(is_clean) <= {0, 1}
    assert isinstance(report, dict)


def test_spectral_signature_defense_flags_every_sample(est, data):
    x, y = data
    defence = SpectralSignatureDefense(est, x, y, batch_size=16, eps_multiplier=1.5, expected_pp_poison=0.1)
    report, is_clean = defence.detect_poison()
    assert len(is_clean) == len(x) and set(is_clean) <= {0, 1}
    assert 0 < len(x) - sum(is_clean) < len(x)


def test_loss_gradient_shape_and_finite_difference(est, data):
    x = data[0][:6]
    labels = np.array([0, 1, 0, 1, 0, 1])
    grad = est.loss_gradient(x, labels)
    assert grad.shape == x.shape and grad.dtype == np.float32 and np.isfinite(grad).all()
    np.testing.assert_allclose(est.loss_gradient(x, np.eye(2)[labels]), grad, rtol=1e-5, atol=1e-9)
    direction = grad / np.linalg.norm(grad)
    h = 1e-2
    numeric = (_ce(est, x + h * direction, labels).mean() - _ce(est, x - h * direction, labels).mean()) / (2 * h)
    analytic = float((grad * direction).sum())
    assert analytic > 0 and numeric > 0
    assert numeric == pytest.approx(analytic, rel=0.05)


def test_class_gradient_shapes_and_finite_difference(est, data):
    x = data[0][:3]
    all_classes = est.class_gradient(x)
    assert all_classes.shape == (3, 2, *x.shape[1:])
    one = est.class_gradient(x, label=1)
    assert one.shape == (3, 1, *x.shape[1:])
    np.testing.assert_allclose(one[:, 0], all_classes[:, 1], rtol=1e-5, atol=1e-9)
    mixed = est.class_gradient(x, label=[0, 1, 0])
    np.testing.assert_allclose(mixed[:, 0], all_classes[np.arange(3), [0, 1, 0]], rtol=1e-5, atol=1e-9)
    g = all_classes[:, 1]
    direction = g / np.linalg.norm(g)
    h = 1e-2
    diff = est.zero_shot_logits(x + h * direction)[:, 1].sum() - est.zero_shot_logits(x - h * direction)[:, 1].sum()
    assert diff / (2 * h) == pytest.approx(float((g * direction).sum()), rel=0.05)


def test_fgsm_runs_and_raises_the_loss(est, data):
    x = data[0][:8]
    labels = est.predict(x).argmax(1)
    attack = FastGradientMethod(est, eps=0.03, batch_size=8)
    x_adv = attack.generate(x)
    assert x_adv.shape == x.shape
    assert np.abs(x_adv - x).max() <= 0.03 + 1e-6 and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert _ce(est, x_adv, labels).mean() > _ce(est, x, labels).mean()


def test_bad_gradient_labels_are_named(est, data):
    x = data[0][:4]
    with pytest.raises(ValueError, match="one-hot"):
        est.loss_gradient(x, np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        est.loss_gradient(x, np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="label"):
        est.class_gradient(x, label=5)
