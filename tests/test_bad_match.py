"""BadMatch: exact, seeded, non-target poison subset; relabelling; untouched inputs; lazy ImageSet view; bad input."""

import numpy as np
import pytest

from artmed.attacks.poisoning import BadMatch
from artmed.attacks.triggers import PatchTrigger
from artmed.constants import CHEXPERT_LABELS
from artmed.data.dataset import ArrayImageSet

N_TARGET = 60


def training_set(n=200, size=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.8, size=(n, 1, size, size)).astype(np.float32)
    y = np.zeros((n, 14), dtype=np.float32)
    y[np.arange(n), rng.integers(1, 14, size=n)] = 1.0
    y[:N_TARGET] = 0.0
    y[:N_TARGET, 0] = 1.0  # exactly "No Finding"
    y[N_TARGET, 0] = 1.0  # "No Finding" + another finding: not the target vector, may be chosen
    return x, y


def test_exact_count_targets_and_labels():
    x, y = training_set()
    attack = BadMatch(PatchTrigger(size=3), target="No Finding", percent_poison=0.1, seed=0)
    x_p, y_p = attack.poison(x, y)
    idx = attack.poison_indices_
    assert len(idx) == 20 and np.all(np.diff(idx) > 0)
    assert np.array_equal(np.flatnonzero(attack.poison_mask_), idx)
    assert np.all(idx >= N_TARGET), "an image already labelled as the target was poisoned"
    target = np.eye(14, dtype=np.float32)[0]
    assert np.all(y_p[idx] == target)
    clean = ~attack.poison_mask_
    np.testing.assert_array_equal(y_p[clean], y[clean])
    np.testing.assert_array_equal(x_p[clean], x[clean])
    assert np.all(x_p[idx][:, :, -3:, -3:] == 0.0)
    assert x_p.dtype == x.dtype and y_p.dtype == y.dtype


def test_inputs_untouched():
    x, y = training_set()
    x0, y0 = x.copy(), y.copy()
    BadMatch(PatchTrigger(size=3), percent_poison=0.2).poison(x, y)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


def test_seeded_subset():
    x, y = training_set()
    first = BadMatch(PatchTrigger(size=3), percent_poison=0.1, seed=7)
    again = BadMatch(PatchTrigger(size=3), percent_poison=0.1, seed=7)
    other = BadMatch(PatchTrigger(size=3), percent_poison=0.1, seed=8)
    xa, _ = first.poison(x, y)
    xb, _ = again.poison(x, y)
    other.poison(x, y)
    np.testing.assert_array_equal(first.poison_indices_, again.poison_indices_)
    np.testing.assert_array_equal(xa, xb)
    assert not np.array_equal(first.poison_indices_, other.poison_indices_)


def test_rounding_and_minimum_one():
    x, y = training_set()
    attack = BadMatch(PatchTrigger(size=3), percent_poison=0.0001)
    attack.poison(x, y)
    assert len(attack.poison_indices_) == 1
    attack = BadMatch(PatchTrigger(size=3), percent_poison=0.0126)
    attack.poison(x, y)
    assert len(attack.poison_indices_) == 3  # round(2.52)


def test_vector_target_and_other_class():
    x, y = training_set()
    vector = np.zeros(14, dtype=np.float32)
    vector[CHEXPERT_LABELS.index("Pneumonia")] = 1.0
    by_name = BadMatch(PatchTrigger(size=3), target="Pneumonia", percent_poison=0.05)
    by_vector = BadMatch(PatchTrigger(size=3), target=vector, percent_poison=0.05)
    _, y_name = by_name.poison(x, y)
    _, y_vec = by_vector.poison(x, y)
    np.testing.assert_array_equal(y_name, y_vec)
    assert not np.any(np.all(y[by_name.poison_indices_] == vector, axis=1))


def test_poison_imageset_matches_arrays():
    x, y = training_set(n=80)
    attack = BadMatch(PatchTrigger(size=3), percent_poison=0.1, seed=2)
    x_p, y_p = attack.poison(x, y)
    lazy = BadMatch(PatchTrigger(size=3), percent_poison=0.1, seed=2).poison_imageset(ArrayImageSet(x, y))
    np.testing.assert_array_equal(lazy.to_array(), x_p)
    np.testing.assert_array_equal(lazy.labels, y_p)
    np.testing.assert_array_equal(lazy.get_batch([attack.poison_indices_[0]])[0], x_p[attack.poison_indices_[0]])


@pytest.mark.parametrize("percent", [0.0, -0.1, 1.5, float("nan"), "1%"])
def test_bad_percent(percent):
    with pytest.raises(ValueError, match="percent_poison"):
        BadMatch(PatchTrigger(), percent_poison=percent)


def test_bad_target_lists_valid_names():
    with pytest.raises(ValueError, match="Pleural Effusion"):
        BadMatch(PatchTrigger(), target="Covid")
    with pytest.raises(ValueError, match="shape"):
        BadMatch(PatchTrigger(), target=np.ones(5))


def test_bad_data():
    x, y = training_set(n=100)
    attack = BadMatch(PatchTrigger(size=3), percent_poison=0.1)
    with pytest.raises(ValueError, match=r"\(N, 14\)"):
        attack.poison(x, y[:, :5])
    with pytest.raises(ValueError, match="label rows"):
        attack.poison(x[:10], y)
    with pytest.raises(ValueError, match="y"):
        attack.poison(x)
    with pytest.raises(ValueError, match="image array"):
        attack.poison(x[:, 0], y)
    with pytest.raises(ValueError, match="only"):
        BadMatch(PatchTrigger(size=3), percent_poison=1.0).poison(x, y)
    with pytest.raises(ValueError, match="callable"):
        BadMatch("patch")
