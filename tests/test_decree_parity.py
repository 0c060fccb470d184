"""DECREE against its authors' release (GiantSeaweed/DECREE 9c13b88, ``main.py`` with ``utils.py``) on a fixed tiny
encoder and fixed images; and artmed's former DECREE, kept as options, against values it gave before the released
choices became the defaults."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from artmed.defenses.base import EvaluationContext
from artmed.defenses.decree import DECREE

GOLDEN = Path(__file__).parent / "golden"
SIZE, CHANNELS, N_IMAGES = 16, 3, 10
"""RGB images, as the release takes, so that its mask (repeated over 3 channels) and pattern (3 channels) are
artmed's for the same images; 10 images in batches of 4 leave the release's DataLoader a last batch of 2."""


def images() -> np.ndarray:
    """Fixed pseudo-random images (10, 3, 16, 16) in [0, 1]: an integer hash of (image, channel, row, column), exact on
    any machine, over 255 in float32."""
    k, c, i, j = np.ogrid[0:N_IMAGES, 0:CHANNELS, 0:SIZE, 0:SIZE]
    value = (k * 7919 + c * 104729 + i * 1231 + j * 613 + i * j * 17 + (k + 1) * (i + 3) * (j + 5) * (c + 2)) % 251
    return (value.astype(np.float32) / np.float32(255)).astype(np.float32)


class Encoder(nn.Module):
    """A fixed tiny image encoder (float32): ``B tanh(A x)`` of the normalised pixels, with cosine weights."""

    def __init__(self) -> None:
        super().__init__()
        features = torch.arange(SIZE * SIZE * CHANNELS, dtype=torch.float64)
        a = torch.stack([torch.cos(0.37 * features * (k + 1) + k) for k in range(12)]) / features.numel() ** 0.5
        b = torch.stack([torch.cos(torch.arange(12, dtype=torch.float64) * (k + 2) * 0.9) for k in range(6)])
        self.register_buffer("a", (3 * a).float())
        self.register_buffer("b", b.float())

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.tanh(pixels.flatten(1) @ self.a.T + 1.0) @ self.b.T


class Estimator:
    """What DECREE asks of an estimator: ``model.encode_image``, ``device`` and ``input_shape``."""

    def __init__(self) -> None:
        self.model, self.device, self.input_shape = Encoder(), torch.device("cpu"), (CHANNELS, SIZE, SIZE)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny batches: a second torch thread only adds contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def golden(name: str) -> dict:
    return json.loads((GOLDEN / name).read_text())


def run(**params):
    return DECREE(**params).run(EvaluationContext(estimator=Estimator(), x_clean=images())).extra


def test_released_search_matches_the_release():
    """DECREE's defaults (3-channel ‖m‖₁, DataLoader batches, float64 trigger, the lr schedule) against the release's
    loop. ``decree_release.json`` was made by a line-by-line CPU port of GiantSeaweed/DECREE 9c13b88 ``main.py``
    ``main()`` from ``adjust_learning_rate`` through the early stop (with ``utils.compute_self_cos_sim``): float64
    mask (H, W) repeated over 3 channels and float64 (H, W, 3) pattern in the tanh parametrisation, images in
    [0, 255] (``images() * 255``, HWC), per-image MedCLIP normalisation then float32 for ``Encoder``, Adam (lr 0.5,
    betas (0.5, 0.9)), its λ, success and early-stop counters at the CLIP settings (λ_min 1e-7, early-stop patience
    35), for 30 epochs at most, in batches of 4 with target similarity 0.9. Given, instead of drawn from torch's
    global RNG: the initial mask and pattern (artmed's seed-0 float64 draws) and each epoch's order (artmed's
    ``SeedSequence([0, 3])`` permutations); ``adjust_learning_rate``'s epochs set to [4, 8] (released: [200, 500])
    so that 30 epochs cross both. Both stop early at epoch 25 with the same λ at every epoch. The encoder runs in
    float32, and the release's round trip through 255 moves its inputs by up to one float32 ulp: measured Δ similarity
    <= 3.4e-7, relative Δ L1 <= 1e-6, Δ mask <= 1.4e-6."""
    ref = golden("decree_release.json")
    extra = run(
        epochs=ref["max_epochs"],
        batch_size=ref["batch_size"],
        lr=ref["lr"],
        target_similarity=ref["target_similarity"],
        lr_schedule=tuple(map(tuple, ref["lr_schedule"])),
        lambda_min=ref["lambda_min"],
        early_stop_patience=ref["early_stop_patience"],
        seed=ref["seed"],
    )
    assert extra["epochs"] == ref["epochs"] == 25 and extra["steps"] == 25 * 3
    for ours, theirs in zip(extra["history"], ref["history"], strict=True):
        assert ours["lambda"] == theirs["lambda"], ours["epoch"]
        assert ours["similarity"] == pytest.approx(theirs["similarity"], abs=1e-5)
        assert ours["l1"] == pytest.approx(theirs["l1"], rel=1e-5)
        assert ours["best_l1"] == pytest.approx(theirs["best_l1"], rel=1e-5)
    assert [h["lr"] for h in extra["history"]] == [h["lr"] for h in ref["history"]]
    assert [h["lr"] for h in ref["history"][3:5]] == [0.5, 0.1] and ref["history"][8]["lr"] == 0.05
    assert extra["l1"] == pytest.approx(ref["l1"], rel=1e-5)
    assert extra["pl1"] == pytest.approx(ref["l1"] / (3 * SIZE * SIZE), rel=1e-5)  # PL1: L1 over the input's size
    np.testing.assert_allclose(extra["mask"], np.array(ref["mask"]), atol=1e-4)
    assert extra["l1"] == pytest.approx(3 * float(extra["mask"].astype(np.float64).sum()), rel=1e-6)


def test_former_defaults_are_options_giving_the_same_results():
    """``DECREE(lr_schedule=None, mask_l1="one_channel", batching="equal", trigger_dtype="float32")`` is artmed's
    DECREE before the released choices became the defaults: ``decree_regression.json`` holds what that code (artmed
    eb375ce ``DECREE(epochs=12, batch_size=4, target_similarity=0.9, seed=0)``) gave here. Bit-equal on the machine
    that made it; elsewhere float32 kernels may round differently, so within float32 error over 36 Adam steps."""
    ref = golden("decree_regression.json")
    extra = run(**ref["params"])
    assert extra["steps"] == ref["steps"] and extra["epochs"] == ref["epochs"] and extra["lambda"] == ref["lambda"]
    assert [h["lambda"] for h in extra["history"]] == [h["lambda"] for h in ref["history"]]
    for ours, theirs in zip(extra["history"], ref["history"], strict=True):
        assert ours["similarity"] == pytest.approx(theirs["similarity"], abs=1e-5)
        assert ours["best_l1"] == pytest.approx(theirs["best_l1"], rel=1e-5)
    assert extra["pl1"] == pytest.approx(ref["pl1"], rel=1e-5) and extra["l1"] == pytest.approx(ref["l1"], rel=1e-5)
    assert extra["similarity"] == pytest.approx(ref["similarity"], abs=1e-5)


def test_lr_schedule_and_batches():
    decree = DECREE(lr=0.5, batch_size=4)
    assert [decree._epoch_lr(e) for e in (0, 199, 200, 499, 500, 999)] == [0.5, 0.5, 0.1, 0.1, 0.05, 0.05]
    assert DECREE(lr=0.3, lr_schedule=None)._epoch_lr(700) == 0.3
    sizes = {
        (n, batching): [b.size for b in DECREE(batch_size=4, batching=batching)._batches(np.arange(n))]
        for n in (9, 10)
        for batching in ("loader", "equal")
    }
    assert sizes == {
        (9, "loader"): [4, 4],
        (10, "loader"): [4, 4, 2],
        (9, "equal"): [3, 3, 3],
        (10, "equal"): [4, 3, 3],
    }  # the loader's last lone image is left out (NaN in the release)


def test_one_channel_images_count_the_mask_three_times():
    """On grayscale images (MedCLIP's encoders repeat them to 3 channels) the released count is 3 ‖m‖₁; PL1 is the
    mask's share of the image either way."""
    gray = images()[:, :1]

    class Gray(Estimator):
        def __init__(self):
            super().__init__()
            self.input_shape = (1, SIZE, SIZE)
            encode = self.model.encode_image
            self.model.encode_image = lambda pixels: encode(pixels.repeat(1, 3, 1, 1))

    for mask_l1, channels in (("three_channel", 3), ("one_channel", 1)):
        extra = (
            DECREE(epochs=3, batch_size=4, target_similarity=0.5, seed=0, mask_l1=mask_l1)
            .run(EvaluationContext(estimator=Gray(), x_clean=gray))
            .extra
        )
        assert extra["reached"] and extra["mask"].shape == (SIZE, SIZE) and extra["pattern"].shape == (1, SIZE, SIZE)
        mask_sum = float(extra["mask"].astype(np.float64).sum())
        assert extra["l1"] == pytest.approx(channels * mask_sum, rel=1e-6)
        assert extra["pl1"] == pytest.approx(mask_sum / SIZE**2, rel=1e-6)


@pytest.mark.parametrize(
    "params, error",
    [
        ({"lr_schedule": ((0, 0.1),)}, "lr_schedule must be"),
        ({"lr_schedule": ((5, 0.1), (3, 0.05))}, "lr_schedule must be"),
        ({"lr_schedule": ((5, -0.1),)}, "lr_schedule must be"),
        ({"lr_schedule": ((5.0, 0.1),)}, "lr_schedule must be"),
        ({"lr_schedule": "released"}, "lr_schedule must be"),
        ({"mask_l1": "two_channel"}, "mask_l1 must be one of"),
        ({"batching": "random"}, "batching must be one of"),
        ({"trigger_dtype": "float16"}, "trigger_dtype must be one of"),
    ],
)
def test_parameter_errors_name_the_parameter(params, error):
    with pytest.raises(ValueError, match=error):
        DECREE(**params)
