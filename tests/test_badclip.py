"""BadCLIP on a tiny trained model: the optimised patch moves held-out images to the target (a random patch does
not); poisoning with it plants a backdoor; exact seeded subset over all images; relabelling; bad input refused."""

import numpy as np
import pytest

from artmed.attacks.poisoning.badclip import BadCLIP, MiddlePatch, paste_middle
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations.scoring import score_estimator
from toy_task import PROMPTS, SIZE, TEXT_LABELS, TEXTS, images

FIT = {"steps": 60, "batch_size": 16, "lr": 1e-3, "verbose": False}


@pytest.fixture(scope="module")
def trained():
    x, y, _ = images(128, seed=0)
    estimator = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, device="cpu")
    estimator.fit(x, y, texts=TEXTS, text_labels=TEXT_LABELS, **FIT)
    return estimator, x, y


def random_patch(side):
    return MiddlePatch(
        np.clip(np.random.default_rng(0).normal(0.5, 0.25, size=(1, side, side)), 0, 1).astype(np.float32)
    )


def test_optimised_patch_moves_images_to_the_target_text(trained):
    clean, x, y = trained
    attack = BadCLIP(clean, target="No Finding", patch_size=12, lr=0.1, steps=60, batch_size=32, verbose=False)
    trigger = attack.optimize_patch(x, y)
    x_test, _, targets = images(64, seed=1)
    others = x_test[targets == 1]

    def target_margin(images_):
        logits = clean.zero_shot_logits(images_)
        return float(np.mean(logits[:, 0] - logits[:, 1]))

    optimised, random, unpatched = (target_margin(t(others)) for t in (trigger, random_patch(12), lambda a: a))
    # measured 0.08 vs -1.22 and -1.08 (over 3 tiny models: +0.46 to +1.3 over the random patch)
    assert optimised > random + 0.3 and optimised > unpatched + 0.2
    # on this model 81 % of the patched images are then classified as the target (0 % with the random patch); on
    # two other tiny models 0 %: the margin moves, but a 12 px patch rarely outweighs the class blob
    history = attack.history_
    assert len(history["loss"]) == 60
    assert history["text"][-1] < history["text"][0] - 0.3  # measured 1.49 -> 0.64
    assert history["visual"][-1] < history["visual"][0]  # measured 0.45 -> 0.06
    assert trigger.patch.shape == (1, 12, 12) and trigger.patch.min() >= 0 and trigger.patch.max() <= 1


def test_poisoned_training_plants_the_backdoor(trained):
    clean, x, y = trained
    attack = BadCLIP(
        clean,
        target="No Finding",
        percent_poison=0.15,
        patch_size=6,
        lr=0.05,
        steps=30,
        batch_size=32,
        seed=0,
        verbose=False,
    )
    x_p, y_p = attack.poison(x, y)
    idx = attack.poison_indices_
    assert len(idx) == round(0.15 * 128) and np.array_equal(np.flatnonzero(attack.poison_mask_), idx)
    assert np.any(np.all(y[idx] == y_p[idx], axis=1)), "released BadCLIP draws from all images, targets included"
    assert np.all(y_p[idx, 0] == 1) and np.all(y_p[idx].sum(1) == 1)
    np.testing.assert_array_equal(x_p[idx], attack.trigger_(x[idx]))
    np.testing.assert_array_equal(x_p[~attack.poison_mask_], x[~attack.poison_mask_])
    np.testing.assert_array_equal(y_p[~attack.poison_mask_], y[~attack.poison_mask_])

    victim = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, device="cpu")
    victim.fit(x_p, y_p, texts=TEXTS, text_labels=TEXT_LABELS, **FIT)
    x_test, _, targets = images(64, seed=1)
    triggered = attack.trigger_(x_test)
    base = score_estimator(clean, x_test, targets, triggered, target=0)
    scores = score_estimator(victim, x_test, targets, triggered, target=0)
    assert base["asr"] <= 0.2 and scores["asr"] >= base["asr"] + 0.6  # measured 0.0 -> 1.0 (3 tiny models: same)
    assert scores["ca"] >= 0.8  # measured 0.94 (3 tiny models: 0.94-1.0)


def test_seeded_and_reuses_the_patch(trained):
    clean, x, y = trained
    runs = [
        BadCLIP(clean, percent_poison=0.05, patch_size=4, steps=3, batch_size=8, seed=3, verbose=False)
        for _ in range(2)
    ]
    (xa, ya), (xb, yb) = (attack.poison(x, y) for attack in runs)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(runs[0].trigger_.patch, runs[1].trigger_.patch)
    patch = runs[0].trigger_
    runs[0].poison(x, y)
    assert runs[0].trigger_ is patch, "poison re-optimised an existing patch"


def test_paste_middle_matches_the_released_location():
    x = np.zeros((1, 1, 10, 9), dtype=np.float32)
    out = paste_middle(x, np.ones((1, 4, 4), dtype=np.float32))
    rows, cols = np.nonzero(out[0, 0])
    assert (rows.min(), cols.min()) == (3, 2) and out.sum() == 16 and x.sum() == 0
    with pytest.raises(ValueError, match="larger"):
        paste_middle(x, np.ones((1, 11, 11), dtype=np.float32))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"percent_poison": 0.0}, "percent_poison"),
        ({"patch_size": 0}, "patch_size"),
        ({"lr": -1.0}, "lr"),
        ({"lambda_visual": -1.0}, "lambda_visual"),
        ({"steps": 0}, "steps"),
        ({"target": "Flu"}, "Flu"),
    ],
)
def test_bad_parameters(trained, params, match):
    with pytest.raises(ValueError, match=match):
        BadCLIP(trained[0], **params)


def test_bad_data_and_targets(trained):
    clean, x, y = trained
    attack = BadCLIP(clean, patch_size=4, steps=1, verbose=False)
    with pytest.raises(ValueError, match=r"\(N, 14\)"):
        attack.poison(x, y[:, :5])
    with pytest.raises(ValueError, match="label rows"):
        attack.poison(x[:10], y)
    with pytest.raises(ValueError, match="image array"):
        attack.poison(x[:, 0], y)
    with pytest.raises(ValueError, match="none of the estimator's classes"):
        BadCLIP(clean, target="Edema", steps=1, verbose=False).poison(x, y)
    with pytest.raises(ValueError, match="larger"):
        BadCLIP(clean, patch_size=SIZE + 1, steps=1, verbose=False).poison(x, y)
    with pytest.raises(ValueError, match="patch"):
        MiddlePatch(np.full((1, 3, 3), 2.0, dtype=np.float32))


def test_set_params_is_all_or_nothing_and_drops_the_patch(trained):
    clean, x, y = trained
    attack = BadCLIP(clean, patch_size=4, steps=2, batch_size=8, verbose=False)
    assert set(attack.get_params()) == set(BadCLIP.attack_params)
    attack.optimize_patch(x, y)
    with pytest.raises(ValueError, match="BadCLIP percent_poison must be in"):
        attack.set_params(seed=4, percent_poison=2.0)
    assert attack.seed == 0 and attack.trigger_ is not None
    attack.set_params(seed=4)
    assert attack.seed == 4 and attack.trigger_ is None
