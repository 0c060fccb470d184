"""Triggers: where they act, what they leave alone, validation, and use through ART's PoisoningAttackBackdoor."""

import numpy as np
import pytest
from art.attacks.poisoning import PoisoningAttackBackdoor

from artmed.attacks.triggers import BlendedTrigger, FourierTrigger, PatchTrigger, make_trigger


def images(n=4, c=1, h=32, w=32, low=0.3, high=0.7, seed=0, dtype=np.float32):
    """Random images away from 0 and 1, so Fourier clipping never bites."""
    return np.random.default_rng(seed).uniform(low, high, size=(n, c, h, w)).astype(dtype)


def centred_spectrum(x):
    return np.fft.fftshift(np.fft.fft2(x.astype(np.float64)), axes=(-2, -1))


ALL = [PatchTrigger(), FourierTrigger(), BlendedTrigger()]


@pytest.mark.parametrize("trigger", ALL, ids=lambda t: t.name)
def test_shape_dtype_and_input_untouched(trigger):
    for dtype in (np.float32, np.float64):
        x = images(dtype=dtype)
        before = x.copy()
        out = trigger(x)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out is not x and np.array_equal(x, before)
        assert not np.array_equal(out, x)
        assert out.min() >= 0.0 and out.max() <= 1.0
        single = trigger(x[1])
        assert single.shape == x[1].shape
        np.testing.assert_allclose(single, out[1], atol=1e-6)


@pytest.mark.parametrize("trigger", ALL, ids=lambda t: t.name)
def test_deterministic_and_three_channels(trigger):
    x = images(c=3)
    np.testing.assert_array_equal(trigger(x), trigger(x))
    grey = np.repeat(images(c=1), 3, axis=1)
    out = trigger(grey)
    np.testing.assert_allclose(out[:, 0], out[:, 2], atol=1e-6)


def test_patch_changes_only_its_region():
    x = images(h=64, w=64)
    trigger = PatchTrigger()
    out = trigger(x)
    mask = trigger.mask(x.shape)
    side = round(32 / 224 * 64)
    assert mask[0, 0].sum() == side * side
    assert mask[0, 0, -side:, -side:].all()
    assert np.all(out[mask] == 0.0)
    np.testing.assert_array_equal(out[~mask], x[~mask])


def test_patch_paper_size_corner_and_colour():
    x = images(n=1, h=224, w=224)
    assert PatchTrigger().side(224, 224) == 32
    out = PatchTrigger(size=5, colour=1.0, corner="top_left")(x)
    assert np.all(out[0, 0, :5, :5] == 1.0)
    np.testing.assert_array_equal(out[0, 0, 5:, :], x[0, 0, 5:, :])
    np.testing.assert_array_equal(out[0, 0, :, 5:], x[0, 0, :, 5:])


def test_patch_inset_reproduces_the_released_positions():
    """The released code pastes 32 px at (W - 33, H - 33) ("right_bottom") or (W - 132, H - 33) ("mid_bottom")."""
    x = images(n=1, h=1024, w=1024)
    for inset, left in (((1, 1), 1024 - 33), ((100, 1), 1024 - 132)):
        mask = PatchTrigger(size=32, inset=inset).mask((1024, 1024))
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        assert (rows[0], rows[-1], cols[0], cols[-1]) == (1024 - 33, 1024 - 2, left, left + 31)
    white = PatchTrigger(size=32, colour=245 / 255, inset=(100, 1))(x)
    changed = white != x
    assert changed.sum() <= 32 * 32 and np.allclose(white[changed], 245 / 255)
    assert PatchTrigger(size=4, corner="top_left", inset=(2, 3)).mask((10, 10))[3:7, 2:6].all()
    assert PatchTrigger(inset=(1, 1)).get_params()["inset"] == (1, 1)
    with pytest.raises(ValueError, match="inset"):
        PatchTrigger(inset=(-1, 0))
    with pytest.raises(ValueError, match=r"at inset \(10, 0\) does not fit"):
        PatchTrigger(size=8, inset=(10, 0))(images(n=1, h=16, w=16))


def test_fourier_changes_only_low_frequency_amplitude_and_keeps_phase():
    x = images(n=3, h=40, w=40, dtype=np.float64)
    trigger = FourierTrigger(window=0.2, alpha=0.5, seed=3)
    out = trigger(x)
    assert np.all((out > 0.0) & (out < 1.0)), "test images must stay clear of clipping"
    before, after = centred_spectrum(x), centred_spectrum(out)
    window = trigger.frequency_window(40, 40)
    assert window.sum() == (2 * 8 + 1) ** 2  # half-width floor(0.2 * 40) = 8
    outside = ~window
    np.testing.assert_allclose(np.abs(after)[..., outside], np.abs(before)[..., outside], atol=1e-8)
    assert np.abs(np.abs(after)[..., window] - np.abs(before)[..., window]).max() > 1.0
    reference = np.abs(centred_spectrum(trigger.reference_image(40, 40)))
    expected = 0.5 * np.abs(before)[..., window] + 0.5 * reference[..., window]
    np.testing.assert_allclose(np.abs(after)[..., window], expected, rtol=1e-8, atol=1e-8)
    strong = np.abs(before) > 1e-6
    np.testing.assert_allclose(np.exp(1j * np.angle(after))[strong], np.exp(1j * np.angle(before))[strong], atol=1e-8)


def test_fourier_reference_is_seeded_and_resized():
    a = FourierTrigger(seed=1).reference_image(48, 48)
    np.testing.assert_array_equal(a, FourierTrigger(seed=1).reference_image(48, 48))
    assert not np.allclose(a, FourierTrigger(seed=2).reference_image(48, 48))
    custom = np.linspace(0, 1, 100).reshape(10, 10)
    assert FourierTrigger(reference=custom).reference_image(20, 30).shape == (1, 20, 30)
    x = images(h=24, w=24)
    assert not np.allclose(FourierTrigger(seed=1)(x), FourierTrigger(seed=2)(x))


def test_blended_is_a_convex_mix():
    x = images()
    pattern = np.full((32, 32), 0.9)
    out = BlendedTrigger(alpha=0.25, pattern=pattern)(x)
    np.testing.assert_allclose(out, 0.75 * x + 0.25 * 0.9, atol=1e-6)
    assert not np.allclose(BlendedTrigger(seed=0)(x), BlendedTrigger(seed=1)(x))


@pytest.mark.parametrize("trigger", ALL, ids=lambda t: t.name)
def test_art_backdoor_attack_uses_our_trigger(trigger):
    x = images(n=5)
    y = np.eye(3)[[0, 1, 2, 0, 1]]
    attack = PoisoningAttackBackdoor(trigger)
    x_p, y_p = attack.poison(x, y=np.eye(3)[[2] * 5])
    np.testing.assert_allclose(x_p, trigger(x))
    np.testing.assert_array_equal(y_p.argmax(1), 2)
    assert y.shape == (5, 3)


def test_make_trigger():
    assert isinstance(make_trigger("patch", size=4), PatchTrigger)
    with pytest.raises(ValueError, match="unknown trigger"):
        make_trigger("sticker")


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4)), "shape"),
        (np.zeros((1, 1, 1, 4, 4)), "shape"),
        (np.full((1, 1, 8, 8), np.nan), "NaN"),
        (np.full((1, 1, 8, 8), np.inf), "NaN"),
        (np.full((1, 1, 8, 8), 2.0), r"\[0, 1\]"),
        (np.zeros((1, 8, 8, 1)), "channels"),
        (np.zeros((1, 1, 8, 8), dtype=np.uint8), "float"),
    ],
)
def test_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        PatchTrigger(size=2)(bad)


def test_patch_larger_than_image():
    with pytest.raises(ValueError, match="does not fit"):
        PatchTrigger(size=9)(images(h=8, w=8))
    with pytest.raises(ValueError, match="does not fit"):
        PatchTrigger(size=9).mask((8, 8))


@pytest.mark.parametrize(
    "factory",
    [
        lambda: PatchTrigger(size=0),
        lambda: PatchTrigger(relative_size=1.5),
        lambda: PatchTrigger(colour=-0.1),
        lambda: PatchTrigger(corner="middle"),
        lambda: FourierTrigger(window=0.5),
        lambda: FourierTrigger(alpha=0.0),
        lambda: FourierTrigger(reference=np.full((4, 4), 3.0)),
        lambda: BlendedTrigger(alpha=1.5),
        lambda: BlendedTrigger(seed=-1),
    ],
)
def test_bad_parameters(factory):
    with pytest.raises(ValueError):
        factory()


def test_fourier_unnormalized_is_what_the_model_sees_without_normalisation():
    """The released code skips MedCLIP's normalisation of Fourier-triggered images: normalising ours undoes it."""
    from artmed.constants import IMAGE_MEAN, IMAGE_STD

    x = np.random.default_rng(0).random((3, 1, 32, 32)).astype(np.float32)
    plain, released = FourierTrigger(seed=1)(x), FourierTrigger(seed=1, unnormalized=True)(x)
    np.testing.assert_allclose((released - IMAGE_MEAN) / IMAGE_STD, plain, atol=1e-5)  # float32 round trip
    assert released.min() >= IMAGE_MEAN and released.max() <= IMAGE_MEAN + IMAGE_STD
    assert FourierTrigger(unnormalized=True).get_params()["unnormalized"] is True
    with pytest.raises(ValueError, match="unnormalized"):
        FourierTrigger(unnormalized="yes")
