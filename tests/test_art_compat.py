"""ART's own tools run on MedCLIPEstimator unchanged, and give the results they give on an ordinary classifier.

The "control" is ART's ``PyTorchClassifier`` around ``est.classifier_module`` (the same forward), so attacks and
metrics must agree with it, not merely run.
"""

import copy
import warnings

import numpy as np
import pytest
import torch
from art.attacks.evasion import (
    AutoProjectedGradientDescent,
    BasicIterativeMethod,
    BoundaryAttack,
    CarliniL2Method,
    DeepFool,
    FastGradientMethod,
    HopSkipJump,
    ProjectedGradientDescent,
    SquareAttack,
    UniversalPerturbation,
)
from art.defences.detector.poison import (
    ActivationDefence,
    ProvenanceDefense,
    SpectralSignatureDefense,
)
from art.defences.preprocessor import FeatureSqueezing
from art.defences.trainer import AdversarialTrainer
from art.defences.transformer.poisoning import STRIP
from art.estimators.classification import PyTorchClassifier
from art.estimators.classification.classifier import ClassGradientsMixin, ClassifierMixin
from art.estimators.estimator import LossGradientsMixin
from art.estimators.poison_mitigation.strip import STRIPMixin
from art.estimators.pytorch import PyTorchEstimator
from art.metrics import clever_u, empirical_robustness, loss_sensitivity

from artmed import MedCLIPEstimator
from artmed.data.dataset import ArrayImageSet
from artmed.estimator import class_label_vectors
from toy_task import PROMPTS, SIZE, TEXT_LABELS, TEXTS, images


@pytest.fixture(scope="module")
def est():
    """A freshly initialised tiny estimator (probabilities) with the toy task's text pool."""
    return MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, batch_size=16, texts=TEXTS, text_labels=TEXT_LABELS)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (40, 1, SIZE, SIZE)).astype(np.float32)
    x[20:, :, -8:, -8:] = 0.0  # half the images carry a black corner patch
    y = np.eye(2, dtype=np.float32)[np.arange(40) % 2]
    return x, y


@pytest.fixture(scope="module")
def trained():
    """A tiny estimator trained 30 steps on the toy task (about 95% accurate), in logits mode."""
    x, y, _ = images(192, seed=0)
    est = MedCLIPEstimator.tiny(
        PROMPTS, image_size=SIZE, seed=0, batch_size=32, output="logits", texts=TEXTS, text_labels=TEXT_LABELS
    )
    est.fit(x, y, steps=30, batch_size=16, lr=1e-3, seed=0, verbose=False)
    return est


@pytest.fixture(scope="module")
def test_set():
    x, _, classes = images(32, seed=1)
    return x, classes


def control(est):
    """ART's own PyTorchClassifier around the same forward as ``est``."""
    return PyTorchClassifier(
        est.classifier_module,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=est.input_shape,
        nb_classes=est.nb_classes,
        clip_values=(0.0, 1.0),
    )


def with_output(est, output):
    """A copy of ``est`` that predicts ``output``."""
    other = est.clone()
    other.set_params(output=output)
    return other


def _ce(est, x, labels):
    p = est.predict(x)
    return -np.log(p[np.arange(len(x)), labels] + 1e-12)


def _errors(est, x, labels):
    return int((est.predict(x).argmax(1) != labels).sum())


# ---------------------------------------------------------------------------------------------- the classifier API
def test_is_an_art_classifier_with_gradients(est):
    for base in (ClassifierMixin, ClassGradientsMixin, LossGradientsMixin, PyTorchEstimator):
        assert isinstance(est, base)
    assert est.nb_classes == 2 and est.input_shape == (1, SIZE, SIZE)
    assert est.preprocessing is None and est.channels_first and est.output == "probabilities"
    np.testing.assert_array_equal(est.clip_values, [0.0, 1.0])


def test_set_params_switches_prompts_and_output(est, data):
    other = est.clone()
    other.set_params(prompts={**PROMPTS, "nodule": ["round nodule in the right upper lobe"]})
    assert other.nb_classes == 3 and other.predict(data[0][:2]).shape == (2, 3)
    assert est.nb_classes == 2
    other.set_params(output="logits")
    np.testing.assert_allclose(other.predict(data[0][:2]), other.zero_shot_logits(data[0][:2]), rtol=1e-5)
    with pytest.raises(ValueError, match="output must be one of"):
        other.set_params(output="scores")
    assert other.output == "logits"


def test_logits_mode_predicts_the_logits_whose_softmax_is_the_probabilities(est, data):
    x = data[0][:6]
    logits = with_output(est, "logits").predict(x)
    np.testing.assert_allclose(logits, est.zero_shot_logits(x), rtol=1e-5, atol=1e-6)
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(est.predict(x), expected, rtol=1e-4, atol=1e-6)


def test_loss_gradient_shape_and_finite_difference(est, data):
    x = data[0][:6]
    labels = np.array([0, 1, 0, 1, 0, 1])
    grad = est.loss_gradient(x, labels)
    assert grad.shape == x.shape and grad.dtype == np.float32 and np.isfinite(grad).all()
    np.testing.assert_allclose(est.loss_gradient(x, np.eye(2)[labels]), grad, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(with_output(est, "logits").loss_gradient(x, labels), grad, rtol=1e-5, atol=1e-9)
    direction = grad / np.linalg.norm(grad)
    h = 1e-2
    numeric = (_ce(est, x + h * direction, labels).mean() - _ce(est, x - h * direction, labels).mean()) / (2 * h)
    analytic = float((grad * direction).sum())
    assert analytic > 0 and numeric > 0
    assert numeric == pytest.approx(analytic, rel=0.05)


@pytest.mark.parametrize("output", ["probabilities", "logits"])
def test_class_gradient_is_the_derivative_of_predict(est, data, output):
    model = est if output == "probabilities" else with_output(est, "logits")
    x = data[0][:3]
    all_classes = model.class_gradient(x)
    assert all_classes.shape == (3, 2, *x.shape[1:])
    one = model.class_gradient(x, label=1)
    assert one.shape == (3, 1, *x.shape[1:])
    np.testing.assert_allclose(one[:, 0], all_classes[:, 1], rtol=1e-5, atol=1e-9)
    mixed = model.class_gradient(x, label=[0, 1, 0])
    np.testing.assert_allclose(mixed[:, 0], all_classes[np.arange(3), [0, 1, 0]], rtol=1e-5, atol=1e-9)
    h = 1e-2
    for c in range(2):
        g = all_classes[:, c]
        direction = g / np.linalg.norm(g)
        diff = model.predict(x + h * direction)[:, c].sum() - model.predict(x - h * direction)[:, c].sum()
        assert diff / (2 * h) == pytest.approx(float((g * direction).sum()), rel=0.05)


def test_compute_loss_follows_art_reductions_and_matches_loss_gradient(est, data):
    x, labels = data[0][:6], np.array([0, 1, 1, 0, 1, 0])
    per_image = est.compute_loss(x, labels)
    assert per_image.shape == (6,)
    np.testing.assert_allclose(per_image, _ce(est, x, labels), rtol=1e-4)
    assert est.compute_loss(x, np.eye(2)[labels], reduction="mean") == pytest.approx(per_image.mean(), rel=1e-5)
    assert est.compute_loss(x, labels, reduction="sum") == pytest.approx(per_image.sum(), rel=1e-5)
    x_t = torch.tensor(x, requires_grad=True)
    loss = est.compute_loss(x_t, torch.tensor(labels), reduction="mean")
    assert isinstance(loss, torch.Tensor)
    (grad,) = torch.autograd.grad(loss, x_t)
    np.testing.assert_allclose(grad.numpy(), est.loss_gradient(x, labels), rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="reduction"):
        est.compute_loss(x, labels, reduction="max")


def test_predict_framework_and_classifier_module_give_predict_with_a_graph(est, data):
    x = data[0][:4]
    for model in (est, with_output(est, "logits")):
        x_t = torch.tensor(x, requires_grad=True)
        target = torch.eye(2)[[0, 1, 0, 1]]
        out, y_out = model._predict_framework(x_t, target)
        assert y_out is target and out.requires_grad
        np.testing.assert_allclose(out.detach().numpy(), model.predict(x), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            model.classifier_module(torch.from_numpy(x)).detach().numpy(), model.predict(x), rtol=1e-5, atol=1e-6
        )
    module = est.classifier_module
    assert est.model is module.medclip
    assert {id(p) for p in module.parameters()} == {id(p) for p in est.model.parameters()}


def test_adversarial_patch_pytorch_step_through_predict_framework(trained, test_set):
    """AdversarialPatchPyTorch needs torchvision (not installable here beside torch CPU), so this replays its
    ``_train_step``: zero_grad on ``estimator.model``, ``_predict_framework`` on patched images, cross-entropy on
    logits, signed step on the patch; two steps must raise the loss of the patched images."""
    x, classes = test_set
    images_t, target = torch.from_numpy(x[:16]), torch.eye(2)[classes[:16]]
    patch = torch.full((1, 8, 8), 0.5, requires_grad=True)

    def loss() -> torch.Tensor:
        patched = images_t.clone()
        patched[:, :, :8, :8] = patch
        predictions, y = trained._predict_framework(torch.clamp(patched, 0.0, 1.0), target)
        return torch.nn.functional.cross_entropy(predictions, y.argmax(1))

    with torch.no_grad():
        before = loss().item()
    for _ in range(2):
        trained.model.zero_grad()
        (grad,) = torch.autograd.grad(loss(), patch)
        with torch.no_grad():
            patch[:] = torch.clamp(patch + 0.1 * grad.sign(), 0.0, 1.0)
    with torch.no_grad():
        assert patch.shape == (1, 8, 8) and loss().item() > before


# ---------------------------------------------------------------------------------------------- inputs
def test_out_of_range_inputs_are_clipped_with_one_warning_and_nan_raises(est, data):
    x = data[0][:4]
    over = x * 3.0 - 1.0
    with pytest.warns(UserWarning, match="clipped") as record:
        got = est.predict(over)
    assert len(record) == 1
    np.testing.assert_allclose(got, est.predict(np.clip(over, 0, 1)), rtol=1e-6)
    with pytest.warns(UserWarning, match="clipped"):
        grad = est.loss_gradient(over, np.zeros(4, np.int64))
    np.testing.assert_allclose(grad, est.loss_gradient(np.clip(over, 0, 1), np.zeros(4, np.int64)), rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est.predict(np.clip(x + 5e-4, 0, 1 + 5e-4))  # rounding: clipped silently
    for bad in (np.nan, np.inf):
        broken = x.copy()
        broken[0, 0, 0, 0] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            est.predict(broken)


# ---------------------------------------------------------------------------------------------- evasion attacks
def test_fgsm_runs_and_raises_the_loss(est, data):
    x = data[0][:8]
    labels = est.predict(x).argmax(1)
    attack = FastGradientMethod(est, eps=0.03, batch_size=8)
    x_adv = attack.generate(x)
    assert x_adv.shape == x.shape
    assert np.abs(x_adv - x).max() <= 0.03 + 1e-6 and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert _ce(est, x_adv, labels).mean() > _ce(est, x, labels).mean()


@pytest.mark.parametrize("attack", [BasicIterativeMethod, ProjectedGradientDescent])
def test_iterative_attacks_match_the_control_and_lower_accuracy(trained, test_set, attack):
    x, classes = (a[:16] for a in test_set)
    kwargs = dict(eps=0.05, eps_step=0.02, max_iter=3, batch_size=16, verbose=False)
    if attack is ProjectedGradientDescent:
        kwargs["num_random_init"] = 0
    x_adv = attack(trained, **kwargs).generate(x, y=classes)
    np.testing.assert_allclose(x_adv, attack(control(trained), **kwargs).generate(x, y=classes), atol=1e-5)
    assert np.abs(x_adv - x).max() <= 0.05 + 1e-6
    assert trained.compute_loss(x_adv, classes).mean() > trained.compute_loss(x, classes).mean()
    assert _errors(trained, x_adv, classes) > _errors(trained, x, classes)


def test_apgd_accepts_logits_mode_and_raises_the_loss(trained, test_set):
    x, classes = (a[:16] for a in test_set)
    with pytest.raises(ValueError, match="probabilities"):
        AutoProjectedGradientDescent(with_output(trained, "probabilities"), eps=0.05, verbose=False)
    attack = AutoProjectedGradientDescent(
        trained, eps=0.05, eps_step=0.02, max_iter=3, nb_random_init=1, batch_size=16, verbose=False
    )
    x_adv = attack.generate(x, y=np.eye(2)[classes])
    assert np.abs(x_adv - x).max() <= 0.05 + 1e-6
    assert trained.compute_loss(x_adv, classes).mean() > trained.compute_loss(x, classes).mean()
    assert _errors(trained, x_adv, classes) > _errors(trained, x, classes)


def test_deepfool_on_logits_flips_as_many_as_the_control(trained, test_set):
    x, _ = test_set
    kwargs = dict(max_iter=2, epsilon=1e-3, nb_grads=2, batch_size=32, verbose=False)
    clean = trained.predict(x).argmax(1)
    x_adv = DeepFool(trained, **kwargs).generate(x)
    x_ctl = DeepFool(control(trained), **kwargs).generate(x)
    flips, flips_ctl = _errors(trained, x_adv, clean), _errors(trained, x_ctl, clean)
    assert flips >= 4 and abs(flips - flips_ctl) <= 1
    np.testing.assert_allclose(x_adv, x_ctl, atol=1e-3)


def test_carlini_wagner_l2_finds_small_adversarials(trained, test_set):
    x, classes = test_set
    x, classes = x[:8], classes[:8]
    x_adv = CarliniL2Method(
        trained,
        confidence=0.0,
        max_iter=10,
        binary_search_steps=2,
        initial_const=1.0,
        learning_rate=0.05,
        batch_size=8,
        verbose=False,
    ).generate(x)
    flipped = trained.predict(x_adv).argmax(1) != trained.predict(x).argmax(1)
    assert flipped.sum() >= 2
    assert np.all(np.abs(x_adv - x)[~flipped] == 0)  # C&W returns the input where it failed


def test_universal_perturbation_default_deepfool_and_fgsm(trained, test_set):
    x, _ = test_set
    attack = UniversalPerturbation(
        trained,
        max_iter=1,
        eps=0.2,
        delta=0.0,
        batch_size=32,
        verbose=False,
        attacker_params={"max_iter": 2, "epsilon": 1e-3, "verbose": False},
    )
    x_adv = attack.generate(x[:16])
    assert np.abs(attack.noise).max() > 0 and attack.fooling_rate > 0
    assert attack.fooling_rate == pytest.approx(
        np.mean(trained.predict(x_adv).argmax(1) != trained.predict(x[:16]).argmax(1))
    )
    # "fgsm" adds unclipped noise to x: the estimator clips it (warning) rather than refusing
    fgsm = UniversalPerturbation(
        trained, attacker="fgsm", attacker_params={"eps": 0.2}, max_iter=1, eps=0.6, batch_size=32, verbose=False
    )
    with pytest.warns(UserWarning, match="clipped"):
        fgsm.generate(x[:16])
    assert np.abs(fgsm.noise).max() > 0


def test_square_attack_stays_in_the_ball_and_lowers_accuracy(trained, test_set):
    x, classes = test_set
    np.random.seed(0)
    x_adv = SquareAttack(trained, eps=0.15, max_iter=30, nb_restarts=1, batch_size=32, verbose=False).generate(
        x, y=np.eye(2)[classes]
    )
    assert np.abs(x_adv - x).max() <= 0.15 + 1e-6
    assert _errors(trained, x_adv, classes) > _errors(trained, x, classes)


@pytest.mark.parametrize("attack", ["hopskipjump", "boundary"])
def test_decision_based_attacks_return_misclassified_images(trained, test_set, attack):
    x, _ = test_set
    x = x[:4]
    np.random.seed(0)
    if attack == "hopskipjump":
        model = HopSkipJump(trained, max_iter=2, max_eval=50, init_eval=10, init_size=50, batch_size=32, verbose=False)
    else:
        model = BoundaryAttack(
            trained, targeted=False, max_iter=10, num_trial=5, sample_size=5, init_size=50, batch_size=32, verbose=False
        )
    x_adv = model.generate(x)
    moved = np.abs(x_adv - x).reshape(len(x), -1).max(1) > 0
    assert moved.sum() >= 2
    assert np.all(trained.predict(x_adv[moved]).argmax(1) != trained.predict(x[moved]).argmax(1))


# ---------------------------------------------------------------------------------------------- metrics
def test_robustness_metrics_match_the_control(trained, test_set):
    x, classes = test_set
    ctl = control(trained)
    scores = []
    for model in (trained, ctl):
        np.random.seed(0)
        scores.append(
            clever_u(model, x[0], nb_batches=4, batch_size=8, radius=5.0, norm=2, pool_factor=2, verbose=False)
        )
    assert 0 < scores[0] < 5.0 and scores[0] == pytest.approx(scores[1], rel=1e-3)
    one_hot = np.eye(2)[classes]
    assert loss_sensitivity(trained, x, one_hot) == pytest.approx(loss_sensitivity(ctl, x, one_hot), rel=1e-4)
    params = {"eps": 0.3, "eps_step": 0.3}
    robustness = empirical_robustness(trained, x, "fgsm", params)
    assert 0 < robustness == pytest.approx(empirical_robustness(ctl, x, "fgsm", params), rel=1e-4)


# ---------------------------------------------------------------------------------------------- poison detectors
def test_activation_defence_flags_every_sample(est, data):
    x, y = data
    defence = ActivationDefence(est, x, y)
    report, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=5, reduce="PCA")
    assert len(is_clean) == len(x) and set(is_clean) <= {0, 1}
    assert isinstance(report, dict)


def test_activation_defence_exclusionary_reclassification_refits_a_fresh_clone(est, data, monkeypatch):
    x, y = data
    before = {k: v.clone() for k, v in est.model.state_dict().items()}
    original, clones = MedCLIPEstimator.clone_for_refitting, []

    def recorded_clone(self):
        clone = original(self)
        clones.append((clone, clone.model.vision_model.model.fc.weight.detach().clone()))
        return clone

    monkeypatch.setattr(MedCLIPEstimator, "clone_for_refitting", recorded_clone)
    defence = ActivationDefence(est, x[:24], y[:24], ex_re_threshold=1.0)
    report, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=5, reduce="PCA")
    ((clone, initial),) = clones
    assert not torch.equal(clone.model.vision_model.model.fc.weight, initial)  # the fresh clone was fit
    assert len(is_clean) == 24 and "Class_0" in report
    suspicious = [c for k in ("Class_0", "Class_1") for c in report[k].values() if isinstance(c, dict)]
    assert suspicious and all("suspicious_cluster" in c for c in suspicious)
    for k, v in est.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_spectral_signature_defense_flags_every_sample(est, data):
    x, y = data
    defence = SpectralSignatureDefense(est, x, y, batch_size=16, eps_multiplier=1.5, expected_pp_poison=0.1)
    report, is_clean = defence.detect_poison()
    assert len(is_clean) == len(x) and set(is_clean) <= {0, 1}
    assert 0 < len(x) - sum(is_clean) < len(x)


def argmax_accuracy(y_true, y_pred):
    """Accuracy of class scores. ART's perf_func="accuracy" (ProvenanceDefense, RONIDefense) hands raw scores to
    sklearn, which refuses them for every classifier that predicts probabilities or logits."""
    return float(np.mean(np.argmax(y_true, axis=1) == np.argmax(y_pred, axis=1)))


def test_provenance_defense_refits_copies_with_class_labels(est):
    """ProvenanceDefense deep-copies the estimator and fits the copies on one-hot labels; the original is untouched.
    (RONIDefense does the same but fails on image data in ART itself: it ``np.vstack``s an (N, C, H, W) batch with
    one (C, H, W) image.)"""
    x, _, classes = images(12, seed=4)
    y = np.eye(2, dtype=np.float32)[classes]
    sources = np.eye(2, dtype=np.float32)[np.arange(8) // 4]
    before = {k: v.clone() for k, v in est.model.state_dict().items()}
    defence = ProvenanceDefense(
        est, x[:8], y[:8], sources, x_val=x[8:], y_val=y[8:], eps=0.2, perf_func=argmax_accuracy
    )
    report, is_clean = defence.detect_poison()
    assert len(is_clean) == 8 and set(np.asarray(is_clean).tolist()) <= {0, 1}
    assert set(report) <= {0, 1}
    for k, v in est.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_strip_wraps_the_estimator_and_abstains_by_entropy(trained, test_set):
    """ART's STRIP re-classes the estimator in place (it needs probabilities); abstentions are zero rows, the other
    rows are the raw predictions, and the clean abstention rate follows the false acceptance rate."""
    x, _ = test_set
    defended = with_output(trained, "probabilities")
    raw = defended.predict(x)
    assert STRIP(defended)(num_samples=8, false_acceptance_rate=0.25) is defended
    assert isinstance(defended, STRIPMixin) and isinstance(defended, MedCLIPEstimator)
    np.random.seed(0)
    defended.mitigate(x[:16])
    assert np.isfinite(defended.entropy_threshold)
    out = defended.predict(x[16:])
    abstained = ~out.any(axis=1)
    np.testing.assert_allclose(out[~abstained], raw[16:][~abstained], rtol=1e-5)
    assert 0 < abstained.sum() <= 8


# ---------------------------------------------------------------------------------------------- training contract
def test_adversarial_trainer_fits_on_class_labels(est):
    x, _, classes = images(16, seed=5)
    model = est.clone()
    before = model.model.vision_model.model.fc.weight.detach().clone()
    trainer = AdversarialTrainer(model, FastGradientMethod(model, eps=0.05), ratio=0.5)
    trainer.fit(x, np.eye(2, dtype=np.float32)[classes], nb_epochs=1, batch_size=8, lr=1e-3)
    assert not torch.equal(model.model.vision_model.model.fc.weight, before)
    assert trainer.predict(x).shape == (16, 2)


def test_fit_with_class_ids_equals_fit_with_chexpert_vectors(est):
    x, y, classes = images(16, seed=6)
    histories = []
    for labels in (y, classes, np.eye(2)[classes]):
        model = est.clone()
        histories.append(model.fit(x, labels, steps=2, batch_size=8, lr=1e-3, seed=1, verbose=False)["loss"])
    assert histories[0] == histories[1] == histories[2]
    np.testing.assert_array_equal(class_label_vectors(["normal", "Pneumonia"]), y[[0, 1]])


def test_fit_applies_fit_time_preprocessing(est):
    x, y, _ = images(16, seed=7)
    squeeze = FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=2, apply_fit=True, apply_predict=False)
    defended = MedCLIPEstimator(
        copy.deepcopy(est.model),
        est.tokenizer,
        PROMPTS,
        input_shape=(1, SIZE, SIZE),
        preprocessing_defences=[squeeze],
        texts=TEXTS,
        text_labels=TEXT_LABELS,
    )
    got = defended.fit(x, y, steps=2, batch_size=8, lr=1e-3, seed=1, verbose=False)["loss"]
    squeezed, _ = squeeze(x)
    expected = est.clone().fit(squeezed, y, steps=2, batch_size=8, lr=1e-3, seed=1, verbose=False)["loss"]
    unsqueezed = est.clone().fit(x, y, steps=2, batch_size=8, lr=1e-3, seed=1, verbose=False)["loss"]
    assert got == expected != unsqueezed
    with pytest.raises(ValueError, match="apply_fit=True need x as an array"):
        defended.fit(ArrayImageSet(x, y), steps=1, verbose=False)


def test_clone_for_refitting_has_fresh_weights_and_the_same_setup(est):
    torch.manual_seed(1)  # est is tiny(seed=0): seed 0 would rebuild the very same initial weights
    fresh = est.clone_for_refitting()
    assert fresh.model is not est.model and fresh.prompts == est.prompts and fresh.output == est.output
    assert fresh.texts == est.texts and np.array_equal(fresh.text_labels, est.text_labels)
    old, new = est.model.state_dict(), fresh.model.state_dict()
    assert old.keys() == new.keys() and all(old[k].shape == new[k].shape for k in old)
    weights = [k for k in old if k.endswith("weight") and old[k].ndim >= 2]
    assert weights and all(not torch.equal(old[k], new[k]) for k in weights)


def test_fit_without_a_text_pool_names_set_texts(est):
    x, _, classes = images(8, seed=8)
    bare = MedCLIPEstimator(copy.deepcopy(est.model), est.tokenizer, PROMPTS, input_shape=(1, SIZE, SIZE))
    assert bare.texts is None and bare.text_labels is None
    with pytest.raises(ValueError, match="set_texts"):
        bare.fit(x, classes, steps=1, verbose=False)
    bare.set_texts(TEXTS, TEXT_LABELS)
    assert len(bare.fit(x, classes, steps=1, batch_size=8, verbose=False)["loss"]) == 1
    unknown = bare.with_prompts({"Normal": ["normal chest"], "nodule": ["round nodule"]})
    with pytest.raises(ValueError, match="'nodule'.*no CheXpert counterpart"):
        unknown.fit(x, classes, steps=1, verbose=False)


def test_bad_gradient_labels_are_named(est, data):
    x = data[0][:4]
    with pytest.raises(ValueError, match="one-hot"):
        est.loss_gradient(x, np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        est.loss_gradient(x, np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="label"):
        est.class_gradient(x, label=5)
