"""Carlini & Terzis (ICLR 2022, "Poisoning and Backdooring Contrastive Learning"): backdoor a CLIP-style model by
adding a patch to a handful of training images and pairing them with captions of the target.

We found no code released by the authors; the patch follows the widely used re-implementation of CleanCLIP
(Bansal et al., ICCV 2023; github.com/nishadsinghi/CleanCLIP c19dfc4, ``backdoor/utils.py``
``apply_trigger(patch_type="random", patch_location="random")`` and ``backdoor/create_backdoor_data.py``, vendored
unchanged in BadCLIP's repository): a 16×16 patch (at 224 px) of each image's channel mean plus standard normal
noise, clipped to [0, 1], pasted at a uniformly random position of each image; the poisoned images are a random
subset of ALL training images whose captions become "a photo of a <target>"-style captions.

MedCLIP adaptation: MedCLIP pairs images and report sentences only through their 14-d CheXpert label vectors, so
"captions of the target" become the target's label vector, as in BadMatch. What differs from BadMatch:

=====================  ==============================================  ==========================================
choice                 Carlini-Terzis (here)                           BadMatch
=====================  ==============================================  ==========================================
trigger                noise patch at a random position per image      any trigger; the paper's black corner patch
                       (``RandomPositionPatch``)
how many               a tiny count: ``num_poison`` images, else       ``percent_poison`` of N (default 1 %), at
                       ``percent_poison`` (paper: 0.01 % backdoors)    least 1
which images           any image, target-labelled ones included        only images whose label is not the target's
                       (no candidate filter, as released)              (``candidates`` rules)
labels                 the target's label vector                       the target's label vector
=====================  ==============================================  ==========================================

Released vs ours for the patch: noise drawn fresh per image in the re-implementation, here one pattern drawn from
``seed`` (so the trigger is one fixed pattern and the run reproducible); the released top-left corner is drawn from
[0, 223 − l] (never touching the last row and column), here from [0, H − l].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from art.attacks.attack import PoisoningAttackBlackBox

from artmed.attacks.poisoning.bad_match import target_vector
from artmed.attacks.triggers import Trigger
from artmed.constants import IMAGE_SIZE, NUM_LABELS
from artmed.params import Check, Int, OrNone, Params, Real

__all__ = ["CarliniTerzis", "RandomPositionPatch"]


class RandomPositionPatch(Trigger):
    """Carlini-Terzis's patch: each image's channel mean plus a seeded standard normal pattern, clipped to [0, 1],
    at a random position of each image (positions drawn from ``seed`` afresh on each call, so a batch triggers the
    same way every time). ``size`` pixels, else ``round(relative_size · W)`` (at least 1): 16 px at 224."""

    name = "random_position_patch"
    param_rules = {
        "size": OrNone(Int(1), text="a positive integer or None"),
        "relative_size": Real(0.0, 1.0, "(]", text="in (0, 1]"),
        "seed": Int(0),
    }

    def __init__(self, size: int | None = None, relative_size: float = 16 / IMAGE_SIZE, seed: int = 0) -> None:
        self.size = size
        self.relative_size = relative_size
        self.seed = seed
        self._check_params()

    def side(self, height: int, width: int) -> int:
        """The patch side in pixels for (H, W) images."""
        side = self.size if self.size is not None else max(1, int(round(self.relative_size * width)))
        if side > min(height, width):
            raise ValueError(f"RandomPositionPatch size {side} is larger than the {height}×{width} images")
        return side

    def pattern(self, channels: int, side: int) -> np.ndarray:
        """The seeded standard normal noise (C, side, side) added to each image's channel mean."""
        return np.random.default_rng([self.seed, side]).standard_normal((channels, side, side))

    def _apply(self, x: np.ndarray) -> np.ndarray:
        n, channels, height, width = x.shape
        side = self.side(height, width)
        noise = self.pattern(channels, side)
        rng = np.random.default_rng(self.seed)
        tops = rng.integers(0, height - side + 1, size=n)
        lefts = rng.integers(0, width - side + 1, size=n)
        means = x.mean(axis=(2, 3))
        for i in range(n):
            patch = np.clip(means[i][:, None, None] + noise, 0.0, 1.0)
            x[i, :, tops[i] : tops[i] + side, lefts[i] : lefts[i] + side] = patch
        return x


class CarliniTerzis(Params, PoisoningAttackBlackBox):
    """Patch a seeded random handful of training images (any label) and label them as the target.

    ``poison(x, y)`` returns copies of ``x`` (N, C, H, W) and ``y`` (N, 14) with exactly ``num_poison`` images (when
    given; else ``max(1, round(percent_poison · N))``) triggered and relabelled; ``poison_indices_`` /
    ``poison_mask_`` give the ground truth, as BadMatch's do. ``trigger`` None means
    ``RandomPositionPatch(seed=seed)``, which ``trigger_`` returns for test-time use.
    """

    attack_params = PoisoningAttackBlackBox.attack_params + [
        "trigger",
        "target",
        "num_poison",
        "percent_poison",
        "seed",
    ]
    param_rules = {
        "trigger": OrNone(Check(callable), text="callable on (N, C, H, W) arrays, or None"),
        "num_poison": OrNone(Int(1), text="a positive integer or None"),
        "percent_poison": Real(0.0, 1.0, "(]", text="in (0, 1]"),
        "seed": Int(0),
    }
    _estimator_requirements = ()

    @classmethod
    def param_names(cls) -> list[str]:
        """ART's ``attack_params``: what ``get_params`` reports and ``set_params`` accepts, all-or-nothing."""
        return list(cls.attack_params)

    def __init__(
        self,
        trigger: Callable[[np.ndarray], np.ndarray] | None = None,
        target: str | Sequence[float] | np.ndarray = "No Finding",
        num_poison: int | None = None,
        percent_poison: float = 1e-4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.trigger = trigger
        self.target = target
        self.num_poison = num_poison
        self.percent_poison = percent_poison
        self.seed = seed
        self._check_params()

    @property
    def trigger_(self) -> Callable[[np.ndarray], np.ndarray]:
        """The trigger in use: ``trigger``, or the default ``RandomPositionPatch(seed=seed)``."""
        return self.trigger if self.trigger is not None else RandomPositionPatch(seed=self.seed)

    @property
    def target_vector(self) -> np.ndarray:
        """The target as a float32 (14,) label vector."""
        return target_vector(self.target)

    def poison(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
        """Copies of ``x`` (N, C, H, W) in [0, 1] and ``y`` (N, 14) with the chosen subset triggered and relabelled."""
        if kwargs:
            raise ValueError(f"CarliniTerzis.poison takes no extra arguments, got {sorted(kwargs)}")
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            raise ValueError(f"x must be an (N, C, H, W) image array, got {getattr(x, 'shape', type(x).__name__)}")
        if y is None:
            raise ValueError(f"CarliniTerzis needs the training label vectors y (N, {NUM_LABELS})")
        y = np.asarray(y)
        if y.ndim != 2 or y.shape[1] != NUM_LABELS:
            raise ValueError(f"y must be label vectors of shape (N, {NUM_LABELS}), got {y.shape}")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} images but y has {len(y)} label rows")
        n_poison = self.num_poison if self.num_poison is not None else max(1, int(round(self.percent_poison * len(y))))
        if n_poison > len(y):
            raise ValueError(f"num_poison={n_poison} is more than the {len(y)} training images")
        rng = np.random.default_rng(self.seed)
        self.poison_indices_ = np.sort(rng.choice(len(y), size=n_poison, replace=False)).astype(np.int64)
        self.poison_mask_ = np.zeros(len(y), dtype=bool)
        self.poison_mask_[self.poison_indices_] = True
        x_poisoned, y_poisoned = x.copy(), np.array(y, copy=True)
        x_poisoned[self.poison_indices_] = self.trigger_(x[self.poison_indices_])
        y_poisoned[self.poison_indices_] = self.target_vector
        return x_poisoned, y_poisoned

    def _check_params(self) -> None:
        self.check_rules()
        target_vector(self.target)
