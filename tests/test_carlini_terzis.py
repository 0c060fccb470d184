"""Carlini-Terzis: a handful of randomly placed noise patches labelled as the target plant a backdoor in a tiny
model; exact seeded subset over all images (targets included); the random-position patch; bad input refused."""

import numpy as np
import pytest

from artmed.attacks.poisoning import BadMatch
from artmed.attacks.poisoning.carlini_terzis import CarliniTerzis, RandomPositionPatch
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations.scoring import score_estimator
from toy_task import PROMPTS, SIZE, TEXT_LABELS, TEXTS, images

FIT = {"steps": 60, "batch_size": 16, "lr": 1e-3, "verbose": False}


def test_a_handful_of_poisons_plants_the_backdoor():
    x, y, _ = images(128, seed=0)
    x_test, _, targets = images(64, seed=1)
    trigger = RandomPositionPatch(size=8, seed=1)
    attack = CarliniTerzis(trigger, target="No Finding", num_poison=8, seed=0)
    x_p, y_p = attack.poison(x, y)
    results = {}
    for name, (xs, ys) in {"clean": (x, y), "poisoned": (x_p, y_p)}.items():
        model = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, device="cpu")
        model.fit(xs, ys, texts=TEXTS, text_labels=TEXT_LABELS, **FIT)
        results[name] = score_estimator(model, x_test, targets, trigger(x_test), target=0)
    assert results["clean"]["asr"] <= 0.2  # measured 0.0
    assert results["poisoned"]["asr"] >= results["clean"]["asr"] + 0.6  # measured 0.94 (3 tiny models: 0.75-0.94)
    assert results["poisoned"]["ca"] >= 0.9  # measured 0.97 (3 tiny models: 0.95-1.0)


def test_subset_is_exact_seeded_and_unfiltered():
    x, y, classes = images(200, seed=0)
    x0, y0 = x.copy(), y.copy()
    attack = CarliniTerzis(num_poison=40, seed=2)
    x_p, y_p = attack.poison(x, y)
    idx = attack.poison_indices_
    assert len(idx) == 40 and np.array_equal(np.flatnonzero(attack.poison_mask_), idx)
    assert np.any(classes[idx] == 0), "Carlini-Terzis poisons any image, target-labelled ones included"
    assert np.all(y_p[idx] == np.eye(14, dtype=np.float32)[0])
    np.testing.assert_array_equal(x_p[idx], attack.trigger_(x[idx]))
    clean = ~attack.poison_mask_
    np.testing.assert_array_equal(x_p[clean], x[clean])
    np.testing.assert_array_equal(y_p[clean], y[clean])
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    again = CarliniTerzis(num_poison=40, seed=2)
    np.testing.assert_array_equal(again.poison(x, y)[0], x_p)
    bad_match = BadMatch(RandomPositionPatch(), percent_poison=0.2, seed=2)
    bad_match.poison(x, y)
    assert np.all(classes[bad_match.poison_indices_] == 1), "BadMatch filters target-labelled images"


def test_default_count_is_the_paper_rate_at_least_one():
    x, y, _ = images(50, seed=0)
    attack = CarliniTerzis()
    attack.poison(x, y)
    assert len(attack.poison_indices_) == 1
    attack = CarliniTerzis(percent_poison=0.1)
    attack.poison(x, y)
    assert len(attack.poison_indices_) == 5


def test_random_position_patch():
    x = np.full((64, 1, 32, 32), 0.4, dtype=np.float32)
    trigger = RandomPositionPatch(seed=0)
    out = trigger(x)
    side = trigger.side(32, 32)
    assert side == round(16 / 224 * 32)
    changed = out != x
    assert np.all(changed.reshape(64, -1).sum(1) <= side * side) and changed.any()
    corners = {tuple(np.argwhere(changed[i, 0]).min(0)) for i in range(64) if changed[i].any()}
    assert len(corners) > 20, "the patch position must vary between images"
    np.testing.assert_array_equal(trigger(x), out)
    assert not np.array_equal(RandomPositionPatch(seed=1)(x), out)
    big = RandomPositionPatch(size=32)(x[:1])
    np.testing.assert_allclose(
        big[0, 0], np.clip(0.4 + RandomPositionPatch(size=32).pattern(1, 32)[0], 0, 1), atol=1e-6
    )
    with pytest.raises(ValueError, match="larger"):
        RandomPositionPatch(size=33)(x[:1])


@pytest.mark.parametrize(
    "params, match",
    [
        ({"num_poison": 0}, "num_poison"),
        ({"percent_poison": 0.0}, "percent_poison"),
        ({"seed": -1}, "seed"),
        ({"trigger": "patch"}, "trigger"),
        ({"target": "Flu"}, "Flu"),
    ],
)
def test_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        CarliniTerzis(**params)


def test_bad_data():
    x, y, _ = images(20, seed=0)
    with pytest.raises(ValueError, match=r"\(N, 14\)"):
        CarliniTerzis().poison(x, y[:, :5])
    with pytest.raises(ValueError, match="label rows"):
        CarliniTerzis().poison(x[:10], y)
    with pytest.raises(ValueError, match="y"):
        CarliniTerzis().poison(x)
    with pytest.raises(ValueError, match="more than"):
        CarliniTerzis(num_poison=21).poison(x, y)


def test_set_params_is_all_or_nothing():
    attack = CarliniTerzis()
    assert set(attack.get_params()) == set(CarliniTerzis.attack_params)
    with pytest.raises(ValueError, match="CarliniTerzis num_poison must be"):
        attack.set_params(seed=3, num_poison=0)
    assert (attack.seed, attack.num_poison) == (0, None)
    attack.set_params(seed=3, num_poison=2)
    assert attack.get_params()["num_poison"] == 2 and attack.trigger_.seed == 3
