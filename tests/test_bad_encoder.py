"""BadEncoder on a tiny trained model: triggered images embed like the target's references and are classified as
the target (zero-shot), clean accuracy holds; seeded; the input estimator untouched; bad parameters refused."""

import numpy as np
import pytest
import torch

from artmed.attacks.poisoning.bad_encoder import BADENCODER_SETTINGS, BadEncoder, augment_reference
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations.scoring import score_estimator
from toy_task import PROMPTS, SIZE, TEXT_LABELS, TEXTS, TRIGGER, images

TINY = {k: v for k, v in BADENCODER_SETTINGS["tiny"].items() if k != "steps"}


@pytest.fixture(scope="module")
def trained():
    x, y, classes = images(128, seed=0)
    estimator = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, device="cpu")
    estimator.fit(x, y, texts=TEXTS, text_labels=TEXT_LABELS, steps=60, batch_size=16, lr=1e-3, verbose=False)
    return estimator, x, classes, y


def mean_cos(a, b):
    return float(np.mean(a @ b.T))


def test_triggered_images_embed_like_the_reference_and_hit_the_target(trained):
    clean, x, _, y = trained
    before = {k: v.clone() for k, v in clean.model.state_dict().items()}
    # reference inputs: shadow images labelled as the target ("Normal" = No Finding, class 0). Four, not the
    # released one: with one, the zero-shot ASR hangs on where that single image sits (measured 1.0 with one torch
    # thread, 0.59 with two, whose trained model differs slightly); with four, 1.0 with either
    attack = BadEncoder(
        clean,
        TRIGGER,
        target="No Finding",
        **{**TINY, "batch_size": 16},
        steps=50,
        seed=0,
        n_reference=4,
        verbose=False,
    )
    backdoored = attack.poison_estimator(x[:64], y[:64])
    assert len(attack.reference_indices_) == 4 and np.all(y[attack.reference_indices_, 0] == 1)
    reference = x[attack.reference_indices_]

    x_test, _, targets = images(64, seed=1)
    triggered = TRIGGER(x_test)
    cos_before = mean_cos(clean.embed_images(triggered), clean.embed_images(reference))
    cos_after = mean_cos(backdoored.embed_images(triggered), backdoored.embed_images(reference))
    assert cos_after > 0.95 and cos_after > cos_before + 0.2  # measured 0.994 vs 0.59 (3 tiny models: same)
    utility = float(np.mean(np.sum(backdoored.embed_images(x_test) * clean.embed_images(x_test), axis=1)))
    assert utility > 0.75  # measured 0.85 (3 tiny models: 0.85-0.87)

    base = score_estimator(clean, x_test, targets, triggered, target=0)
    attacked = score_estimator(backdoored, x_test, targets, triggered, target=0)
    assert base["asr"] <= 0.2 and attacked["asr"] >= base["asr"] + 0.7  # measured 0.0 -> 1.0 (3 tiny models: same)
    assert attacked["ca"] >= 0.8  # measured 0.97 (3 tiny models: 0.94-0.97; 1.0 before)

    history = attack.history_
    assert set(history) == {"loss", "cos_trigger_reference", "cos_reference", "cos_clean"}
    assert all(len(v) == 50 for v in history.values())
    assert history["cos_trigger_reference"][-1] > history["cos_trigger_reference"][0] + 0.2

    after = clean.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the input estimator was modified"
    bd_state = backdoored.model.state_dict()
    assert all(torch.equal(before[k], bd_state[k]) for k in before if k.startswith("text_model.")), (
        "only the vision encoder is fine-tuned"
    )
    bn_keys = [k for k in before if ".bn" in k or "downsample.1" in k]
    assert bn_keys and all(torch.equal(before[k], bd_state[k]) for k in bn_keys), "BatchNorm must stay frozen"


def test_seeded(trained):
    clean, x, classes, _ = trained
    runs = [
        BadEncoder(clean, TRIGGER, x[classes == 0][:2], lr=1e-3, steps=3, batch_size=4, seed=5, verbose=False)
        for _ in range(2)
    ]
    first, second = (attack.poison_estimator(x[:12]) for attack in runs)
    assert runs[0].history_ == runs[1].history_
    assert all(torch.equal(v, second.model.state_dict()[k]) for k, v in first.model.state_dict().items())
    epochs = BadEncoder(clean, TRIGGER, x[:1], epochs=2, batch_size=5, augment=False, verbose=False)
    epochs.poison_estimator(x[:12])
    assert len(epochs.history_["loss"]) == 2 * 3


def test_augment_reference_keeps_shape_and_range():
    x = torch.rand(16, 3, 8, 8)
    out = augment_reference(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, x)
    again = augment_reference(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_poison_returns_triggered_inputs(trained):
    clean, x, *_ = trained
    x_p, y_p = BadEncoder(clean, TRIGGER, x[:1], verbose=False).poison(x[:3], np.eye(2)[[0, 1, 0]])
    np.testing.assert_array_equal(x_p, TRIGGER(x[:3]))
    np.testing.assert_array_equal(y_p, np.eye(2)[[0, 1, 0]])


@pytest.mark.parametrize(
    "params, match",
    [
        ({"lambda1": -1.0}, "lambda1"),
        ({"lr": 0.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"trigger": "patch"}, "trigger"),
        ({"reference": np.zeros((1, 8, 8))}, "reference"),
        ({"device": "tpu"}, "tpu"),
        ({"target": "Flu"}, "Flu"),
        ({"n_reference": 0}, "n_reference"),
    ],
)
def test_bad_parameters(trained, params, match):
    clean, x, *_ = trained
    kwargs = {"trigger": TRIGGER, "reference": x[:1], **params}
    with pytest.raises(ValueError, match=match):
        BadEncoder(clean, **kwargs)


def test_reference_of_the_wrong_size(trained):
    clean, x, *_ = trained
    attack = BadEncoder(clean, TRIGGER, np.zeros((1, 1, SIZE + 2, SIZE + 2), dtype=np.float32), steps=1, verbose=False)
    with pytest.raises(ValueError, match="spatial size"):
        attack.poison_estimator(x[:4])


def test_set_params_is_all_or_nothing(trained):
    clean, x, *_ = trained
    attack = BadEncoder(clean, TRIGGER, x[:1], verbose=False)
    assert set(attack.get_params()) == set(BadEncoder.attack_params)
    with pytest.raises(ValueError, match="BadEncoder lr must be a positive number"):
        attack.set_params(steps=5, lr=-1.0)
    assert (attack.steps, attack.lr) == (None, 1e-3)
    attack.set_params(steps=5, lambda1=0.5)
    assert attack.get_params()["steps"] == 5 and attack.lambda1 == 0.5


def test_references_drawn_from_the_shadow_labels(trained):
    clean, x, _, y = trained
    attack = BadEncoder(clean, TRIGGER, target="Pneumonia", n_reference=3, steps=1, batch_size=4, seed=2, verbose=False)
    attack.poison_estimator(x[:20], y[:20])
    assert len(attack.reference_indices_) == 3 and np.all(y[attack.reference_indices_, 7] == 1)
    with pytest.raises(ValueError, match="shadow labels y"):
        attack.poison_estimator(x[:20])
    attack.set_params(n_reference=11)
    with pytest.raises(ValueError, match="only 10 shadow images"):
        attack.poison_estimator(x[:20], y[:20])
