"""STRIP against its authors' release (garrisongys/STRIP, notebook ``STRIP_CIFAR10DeepArchit_Tb.ipynb``, commit 6588a38)
on fixed inputs and a fixed linear-softmax model; and artmed's former STRIP, kept as options, against values it gave
before the released choices became the defaults."""

import json
from pathlib import Path

import numpy as np
import pytest

from artmed.defenses.base import EvaluationContext
from artmed.defenses.strip import STRIP

GOLDEN = Path(__file__).parent / "golden"
SIZE, CHANNELS, CLASSES, CORNER = 32, 3, 4, 6
"""The notebook's ``superimpose`` reshapes to (32, 32, 3): the fixed images are 32 x 32 RGB; a 6 px trigger corner."""


def images(n: int, offset: int) -> np.ndarray:
    """``n`` fixed pseudo-random images (N, 3, 32, 32) in [0, 1]: an integer hash of (image, channel, row, column),
    exact on any machine, divided by 255 in float32 as the notebook does."""
    k, c, i, j = np.ogrid[offset : offset + n, 0:CHANNELS, 0:SIZE, 0:SIZE]
    value = (k * 7919 + c * 104729 + i * 1231 + j * 613 + i * j * 17 + (k + 1) * (i + 3) * (j + 5) * (c + 2)) % 251
    return (value.astype(np.float32) / np.float32(255)).astype(np.float32)


def triggered(x: np.ndarray) -> np.ndarray:
    """``x`` with its top-left 6 x 6 corner white in every channel."""
    out = x.copy()
    out[:, :, :CORNER, :CORNER] = 1.0
    return out


class LinearSoftmax:
    """A fixed "model": ``softmax(W · x + b)`` over the image's pixels in (row, column, channel) order (the notebook's
    HWC layout), in float64, with class 0 drawn to the white trigger corner. Like MedCLIPEstimator it clips its input
    to [0, 1]: the pixel range artmed's estimators take."""

    def __init__(self) -> None:
        features = np.arange(SIZE * SIZE * CHANNELS, dtype=np.float64)
        weights = np.stack([np.cos(0.37 * features * (k + 1) + k) for k in range(CLASSES)]) * 4 / features.size**0.5
        rows = (features // (SIZE * CHANNELS)).astype(int)
        cols = (features // CHANNELS % SIZE).astype(int)
        weights[0, (rows < CORNER) & (cols < CORNER)] += 0.05
        self.weights, self.bias = weights, np.array([-2.5, 0.0, 0.0, 0.0])

    def predict_hwc(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 4) of images (N, 32, 32, 3)."""
        flat = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0).reshape(len(x), -1).astype(np.float64)
        logits = flat @ self.weights.T + self.bias
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities (N, 4) of images (N, 3, 32, 32), as an artmed estimator's ``predict``."""
        return self.predict_hwc(np.asarray(x).transpose(0, 2, 3, 1))


def golden(name: str) -> dict:
    return json.loads((GOLDEN / name).read_text())


def context() -> EvaluationContext:
    """12 clean images (6 set the threshold, 6 are the superimposition pool) and the fixed model."""
    return EvaluationContext(estimator=LinearSoftmax(), x_clean=images(12, 0))


def test_released_defaults_match_the_notebook():
    """STRIP's defaults against the notebook's own code. ``strip_notebook.json`` was made by executing, from
    garrisongys/STRIP 6588a38 ``STRIP_CIFAR10DeepArchit_Tb.ipynb``, cell 19's ``superimpose`` and ``entropyCal``
    (OpenCV 5.1.0's ``cv2.addWeighted``) with ``model.predict`` = ``LinearSoftmax.predict_hwc``, N = 100, the pool
    ``images(12, 0)`` split as ``STRIP.run`` splits it at seed 0, and ``np.random.randint`` returning the overlays
    artmed's streams draw (``rng.choice(6, 100, replace=True)`` per input from ``SeedSequence([0, stream])``); the
    entropies divided by N as cell 19 does; cell 22's ``norm.fit`` and ``norm.ppf(0.01)`` for the threshold and its
    FAR on the triggered inputs. Everything is float64 after the float32 sums (bit-equal in both): only summation
    order differs (measured Δ <= 5e-16)."""
    ref = golden("strip_notebook.json")
    screen = STRIP(verbose=False).run(context())
    extra = screen.extra
    assert extra["params"]["n_superimpose"] == ref["n_superimpose"] == 100
    np.testing.assert_allclose(extra["clean_entropies"], ref["clean_entropies"], rtol=1e-12)
    assert extra["clean_entropy_mean"] == pytest.approx(ref["mu"], rel=1e-12)
    assert extra["clean_entropy_std"] == pytest.approx(ref["sigma"], rel=1e-12)
    assert extra["entropy_threshold"] == pytest.approx(ref["threshold"], rel=1e-12)
    x_test = images(4, 100)
    np.testing.assert_allclose(-screen.score(x_test), ref["test_clean"], rtol=1e-12)
    triggered_entropy = -screen.score(triggered(x_test))
    np.testing.assert_allclose(triggered_entropy, ref["test_triggered"], rtol=1e-12)
    assert np.mean(triggered_entropy > extra["entropy_threshold"]) == ref["far"] == 0.75


def test_add_is_the_sum_clipped_to_the_pixel_range():
    """``superimpose="add"`` hands the estimator ``min(x + x_n, 1)``, never a pixel above 1 (the notebook's float sum
    reaches 2); "blend" hands it ``(x + x_n) / 2``."""
    seen = []

    class Recorder(LinearSoftmax):
        def predict(self, x, batch_size=None):
            seen.append(np.array(x))
            return super().predict(x)

    x, pool = images(2, 50), images(3, 0)
    for superimpose in ("add", "blend"):
        seen.clear()
        STRIP(n_superimpose=3, overlays="distinct", superimpose=superimpose, verbose=False).entropy(
            Recorder(), x, pool, stream=2
        )
        perturbed = np.concatenate(seen).reshape(2, 3, *x.shape[1:])
        rng = np.random.default_rng(np.random.SeedSequence([0, 2]))
        overlays = [rng.choice(3, size=3, replace=False) for _ in range(2)]
        sums = np.stack([x[i] + pool[overlays[i]] for i in range(2)])
        expected = np.minimum(sums, 1.0) if superimpose == "add" else 0.5 * x[:, None] + 0.5 * pool[np.stack(overlays)]
        np.testing.assert_array_equal(perturbed, expected)
    assert sums.max() > 1.5 and np.all(np.concatenate(seen) <= 1.0)


def test_overlays_with_replacement_may_repeat():
    """The release draws each overlay independently (``np.random.randint``); "distinct" never repeats one while the
    pool suffices."""
    seen = []

    class Recorder(LinearSoftmax):
        def predict(self, x, batch_size=None):
            seen.append(np.array(x))
            return super().predict(x)

    pool = images(8, 0)
    for overlays in ("replacement", "distinct"):
        seen.clear()
        STRIP(n_superimpose=8, overlays=overlays, superimpose="blend", verbose=False).entropy(
            Recorder(), images(1, 50), pool, stream=2
        )
        copies = np.concatenate(seen).reshape(8, -1)
        n_unique = len(np.unique(copies, axis=0))
        assert n_unique == 8 if overlays == "distinct" else n_unique < 8  # seeded: 6 distinct of 8 draws


def test_former_defaults_are_options_giving_the_same_results():
    """``STRIP(n_superimpose=20, superimpose="blend", overlays="distinct")`` is artmed's STRIP before the released
    choices became the defaults: ``strip_regression.json`` holds what that code (artmed eb375ce ``STRIP()``) gave on
    this context at seed 0 (the threshold and the scores of ``images(4, 100)`` and their triggered copies). Same
    computation in float64 on the same float32 blends: equal up to summation order across machines."""
    ref = golden("strip_regression.json")
    screen = STRIP(n_superimpose=20, superimpose="blend", overlays="distinct", verbose=False).run(context())
    x_test = images(4, 100)
    assert screen.threshold == pytest.approx(ref["threshold"], rel=1e-12)
    np.testing.assert_allclose(screen.extra["clean_entropies"], ref["clean_entropies"], rtol=1e-12)
    np.testing.assert_allclose(screen.score(x_test), ref["clean"], rtol=1e-12)
    np.testing.assert_allclose(screen.score(triggered(x_test)), ref["triggered"], rtol=1e-12)
