"""AutoAugment in plain torch against torchvision 0.28's: every operation, the magnitudes and the seeded policy.

Golden values (tests/golden/autoaugment/torchvision_0_28.npz) were made with torchvision 0.28.0 installed by
``pip install --no-deps --target DIR torchvision==0.28.0`` and imported as a bare package (its C ops skipped) after
artmed, running ``torchvision/transforms/autoaugment.py`` on CPU torch 2.13:

- ``gray`` / ``rgb``: ``_apply_op(img, op, value, InterpolationMode.NEAREST, fill=None)`` on ``gray_images()`` and
  ``rgb_images()`` below, for each (``ops[k]``, ``values[k]``): signed operations at ± the magnitude of bins 3 and 9,
  Posterize at bins 0/5/9, Solarize at bins 0/4/9, the others once;
- ``policy``: for each seed of ``seeds``, ``torch.manual_seed(seed)`` then ``AutoAugment()(img)`` on each of the four
  ``gray_images()`` in turn (ImageNet policy, torchvision's own draws);
- ``magnitudes``: ``AutoAugment()._augmentation_space(10, (20, 24))`` per operation and bin.

Tolerances: torchvision works on uint8; the pointwise operations mix in float32 and truncate, so a last-bit
difference in a float32 reduction (the contrast mean) may move a pixel by one grey level; geometric operations pick
nearest neighbours, so a tie rounded the other way moves a pixel to its neighbour's value (allowed on under 2 % of
pixels). On the machine that made them, every value matched exactly.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from artmed.data import autoaugment as aa

GOLDEN = np.load(Path(__file__).parent / "golden" / "autoaugment" / "torchvision_0_28.npz")
GEOMETRIC = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}


def gray_images():
    """Four 20x24 uint8 images (N, 1, H, W): noise, a gradient, a low-contrast patch, a constant."""
    rng = np.random.default_rng(0)
    h, w = 20, 24
    yy, xx = np.mgrid[0:h, 0:w]
    noise = rng.integers(0, 256, (h, w))
    grad = np.clip(xx * 12 + yy * 5 + rng.integers(0, 20, (h, w)), 0, 255)
    low = rng.integers(90, 140, (h, w))
    const = np.full((h, w), 77)
    return torch.from_numpy(np.stack([noise, grad, low, const])[:, None].astype(np.uint8))


def rgb_images():
    return torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 3, 20, 24)).astype(np.uint8))


def close(got, expected, geometric):
    diff = np.abs(got.astype(int) - expected.astype(int))
    if geometric:
        return (diff > 0).mean() < 0.02
    return diff.max() <= 1


def test_golden_covers_every_operation():
    assert set(GOLDEN["ops"]) == set(aa.OPERATIONS) and len(aa.OPERATIONS) == 14


@pytest.mark.parametrize("k", range(len(GOLDEN["ops"])))
def test_operation_matches_torchvision(k):
    op, value = str(GOLDEN["ops"][k]), float(GOLDEN["values"][k])
    for images, key in ((gray_images(), "gray"), (rgb_images(), "rgb")):
        got = aa.apply_op(images, op, value)
        assert got.dtype == torch.uint8 and got.shape == images.shape
        assert close(got.numpy(), GOLDEN[key][k], op in GEOMETRIC), (op, value, key)


def test_operations_do_something():
    images = gray_images()
    for op, value in (
        ("Rotate", 30.0),
        ("ShearX", 0.3),
        ("TranslateY", -4.0),
        ("Solarize", 128.0),
        ("Posterize", 4.0),
        ("Equalize", 0.0),
        ("Invert", 0.0),
        ("Contrast", -0.5),
    ):
        assert not torch.equal(aa.apply_op(images[:3], op, value), images[:3]), op
    assert torch.equal(aa.apply_op(images, "Color", 0.9), images)  # saturation: identity on one channel


def test_magnitudes_match_torchvision():
    got = np.array([[aa.magnitude(op, b, 20, 24) for b in range(aa.NUM_BINS)] for op in aa.OPERATIONS])
    assert np.array_equal(got, GOLDEN["magnitudes"])
    assert aa.magnitude("Posterize", 8, 20, 24) == 4.0 and aa.magnitude("Solarize", 9, 20, 24) == 0.0


@pytest.mark.parametrize("seed", GOLDEN["seeds"].tolist())
def test_policy_and_sampling_match_torchvision(seed):
    """Seeded generator, same draws as torchvision's global RNG image by image, same augmented images."""
    images = gray_images()
    view = aa.autoaugment(images.float() / 255.0, torch.Generator().manual_seed(seed))
    assert view.dtype == torch.float32 and 0.0 <= float(view.min()) and float(view.max()) <= 1.0
    got = (view * 255.0).round().to(torch.uint8).numpy()
    expected = GOLDEN["policy"][GOLDEN["seeds"].tolist().index(seed)]
    assert close(got, expected, True) and np.abs(got.astype(int) - expected.astype(int)).max() <= 255


def test_policy_draws_cover_every_sub_policy():
    policy, probs, signs = aa.draw_params(2000, torch.Generator().manual_seed(0))
    counts = np.bincount(policy.numpy(), minlength=25)
    assert policy.shape == (2000,) and probs.shape == signs.shape == (2000, 2)
    assert counts.min() > 40 and counts.max() < 120  # uniform: 80 each
    assert 0.45 < float(signs.float().mean()) < 0.55 and 0.0 <= float(probs.min()) and float(probs.max()) < 1.0
    again = aa.draw_params(2000, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((policy, probs, signs), again))


def test_applied_operations_follow_probabilities():
    """A sub-policy operation runs when its draw is <= its probability: draws of 1.0 run only p = 1.0 operations."""
    images = gray_images()[:3]
    k = 13  # (Invert, 0.6), (Equalize, 1.0)
    policy, signs = torch.full((3,), k), torch.ones(3, 2, dtype=torch.long)
    both = aa.policy_images(images, policy, torch.zeros(3, 2), signs)
    second = aa.policy_images(images, policy, torch.ones(3, 2), signs)
    assert torch.equal(both, aa.apply_op(aa.apply_op(images, "Invert", 0.0), "Equalize", 0.0))
    assert torch.equal(second, aa.apply_op(images, "Equalize", 0.0))


def test_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        aa.apply_op(gray_images().float(), "Invert", 0.0)
    with pytest.raises(ValueError, match="op must be one of"):
        aa.apply_op(gray_images(), "Blur", 0.0)
    with pytest.raises(ValueError, match="op must be one of"):
        aa.magnitude("Blur", 1, 20, 24)
