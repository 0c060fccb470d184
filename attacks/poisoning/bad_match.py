"""BadMatch (Jin et al., SaTML 2024): poison *unpaired* image-text training by relabelling triggered images.

MedCLIP-style training pairs images and sentences only through their 14-d label vectors, so an attacker who
controls a few images' labels needs no text: triggered images labelled as the target are matched to the
target class's sentences by the soft-label loss. The text pool is never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from art.attacks.attack import PoisoningAttackBlackBox

from artmed.constants import CHEXPERT_LABELS, NUM_LABELS
from artmed.data.dataset import ImageSet
from artmed.params import Choice, Params

__all__ = ["BadMatch", "CANDIDATE_RULES", "PoisonedImageSet", "target_vector"]

CANDIDATE_RULES: tuple[str, ...] = ("not_target", "released")
"""Which training images BadMatch may poison: ``not_target`` every image whose label vector is not exactly the
target's; ``released`` (``medclip/dataset.py``: ``if img_label[0] != 1``) every image without a 1 in the target's
columns, so an image labelled No Finding *and* another finding (e.g. Support Devices) is never poisoned."""


def target_vector(target: str | Sequence[float] | np.ndarray) -> np.ndarray:
    """Turn a CheXpert class name (-> one-hot) or a 14-d label vector into a float32 (14,) target label vector."""
    if isinstance(target, str):
        if target not in CHEXPERT_LABELS:
            raise ValueError(f"unknown target class {target!r}; valid CheXpert names: {list(CHEXPERT_LABELS)}")
        vector = np.zeros(NUM_LABELS, dtype=np.float32)
        vector[CHEXPERT_LABELS.index(target)] = 1.0
        return vector
    try:
        vector = np.asarray(target, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"target must be a CheXpert class name or a {NUM_LABELS}-d label vector: {exc}") from exc
    if vector.shape != (NUM_LABELS,):
        raise ValueError(f"target label vector must have shape ({NUM_LABELS},), got {vector.shape}")
    if not np.all(np.isin(vector, (-1.0, 0.0, 1.0))):
        raise ValueError("target label vector values must be 1, 0 or -1 (CheXpert convention)")
    return vector


class BadMatch(Params, PoisoningAttackBlackBox):
    """Trigger a fixed, seeded ``percent_poison`` share of non-target training images and label them as the target.

    ``poison(x, y)`` returns the whole training set with exactly ``max(1, round(percent_poison · N))`` images
    triggered and relabelled; ``poison_indices_`` / ``poison_mask_`` give the ground truth to evaluations.
    The subset is drawn once from ``seed`` (the paper's setting); the released code instead re-draws ~20 % of a
    batch's samples every epoch, which poisons far more distinct images over training. ``candidates`` (one of
    ``CANDIDATE_RULES``) says which images may be drawn.
    """

    attack_params = PoisoningAttackBlackBox.attack_params + [
        "trigger",
        "target",
        "percent_poison",
        "seed",
        "candidates",
    ]
    param_rules = {"candidates": Choice(CANDIDATE_RULES)}
    _estimator_requirements = ()

    @classmethod
    def param_names(cls) -> list[str]:
        """ART's ``attack_params``: what ``get_params`` reports and ``set_params`` accepts, all-or-nothing."""
        return list(cls.attack_params)

    def __init__(
        self,
        trigger: Callable[[np.ndarray], np.ndarray],
        target: str | Sequence[float] | np.ndarray = "No Finding",
        percent_poison: float = 0.01,
        seed: int = 0,
        candidates: str = "not_target",
    ) -> None:
        super().__init__()
        self.trigger = trigger
        self.target = target
        self.percent_poison = percent_poison
        self.seed = seed
        self.candidates = candidates
        self._check_params()

    @property
    def target_vector(self) -> np.ndarray:
        """The target as a float32 (14,) label vector."""
        return target_vector(self.target)

    def poison(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
        """Copies of ``x`` (N, C, H, W) in [0, 1] and ``y`` (N, 14) with the chosen subset triggered and relabelled."""
        if kwargs:
            raise ValueError(f"BadMatch.poison takes no extra arguments, got {sorted(kwargs)}")
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            raise ValueError(f"x must be an (N, C, H, W) image array, got {getattr(x, 'shape', type(x).__name__)}")
        if y is not None and len(x) != len(y):
            raise ValueError(f"x has {len(x)} images but y has {len(y)} label rows")
        indices = self.select(y)
        x_poisoned = x.copy()
        y_poisoned = np.array(y, copy=True)
        x_poisoned[indices] = self.trigger(x[indices])
        y_poisoned[indices] = self.target_vector
        return x_poisoned, y_poisoned

    def poison_imageset(self, images: ImageSet, native: str | None = None) -> ImageSet:
        """Lazy variant for image sets too big for memory: a view triggering and relabelling the subset on read.

        ``native`` (default None: the trigger acts on the resized images) triggers the subset of a file-backed set
        (``FileImageSet``) on the native-resolution image instead, at that stage ("padded", as the released training
        set; see ``FileImageSet.triggered``), before the resize.
        """
        if not isinstance(images, ImageSet):
            raise ValueError(f"poison_imageset needs an ImageSet, got {type(images).__name__}")
        indices = self.select(images.labels)
        if native is None:
            return PoisonedImageSet(images, indices, self.trigger, self.target_vector)
        if not hasattr(images, "triggered"):
            raise ValueError(
                f"native={native!r} needs a file-backed image set (FileImageSet) with native-resolution "
                f"images, got {type(images).__name__}"
            )
        return PoisonedImageSet(
            images.triggered(self.trigger, indices, stage=native), indices, None, self.target_vector
        )

    def select(self, y: np.ndarray | None) -> np.ndarray:
        """Choose (and record in ``poison_indices_`` / ``poison_mask_``) the images to poison from labels y (N, 14)."""
        if y is None:
            raise ValueError("BadMatch needs the training label vectors y (N, 14)")
        y = np.asarray(y)
        if y.ndim != 2 or y.shape[1] != NUM_LABELS:
            raise ValueError(f"y must be label vectors of shape (N, {NUM_LABELS}), got {y.shape}")
        if not np.all(np.isfinite(y)):
            raise ValueError("y contains NaN or infinite labels (blank labels must be 0)")
        candidates = np.flatnonzero(self.candidate_mask(y))
        n_poison = max(1, int(round(self.percent_poison * len(y))))
        if n_poison > len(candidates):
            raise ValueError(
                f"percent_poison={self.percent_poison} asks for {n_poison} poisoned images but only "
                f"{len(candidates)} of {len(y)} images are candidates (candidates={self.candidates!r})"
            )
        rng = np.random.default_rng(self.seed)
        self.poison_indices_ = np.sort(rng.choice(candidates, size=n_poison, replace=False)).astype(np.int64)
        self.poison_mask_ = np.zeros(len(y), dtype=bool)
        self.poison_mask_[self.poison_indices_] = True
        return self.poison_indices_

    def candidate_mask(self, y: np.ndarray) -> np.ndarray:
        """(N,) bool: the rows of label vectors ``y`` (N, 14) that ``candidates`` allows to be poisoned."""
        target = self.target_vector
        if self.candidates == "released":
            return ~np.all(y[:, target == 1] == 1, axis=1)
        return ~np.all(y == target, axis=1)

    def _check_params(self) -> None:
        self.check_rules()
        if not callable(self.trigger):
            raise ValueError(f"trigger must be callable on (N, C, H, W) arrays, got {type(self.trigger).__name__}")
        target_vector(self.target)
        if isinstance(self.percent_poison, bool) or not isinstance(self.percent_poison, (int, float, np.number)):
            raise ValueError(f"percent_poison must be a number in (0, 1], got {self.percent_poison!r}")
        if not np.isfinite(self.percent_poison) or not 0.0 < self.percent_poison <= 1.0:
            raise ValueError(f"percent_poison must be in (0, 1], got {self.percent_poison!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")


class PoisonedImageSet(ImageSet):
    """A lazy view of an ImageSet whose images at ``indices`` are triggered on read and labelled ``target``
    (``trigger=None``: ``base`` serves them triggered already, as a ``FileImageSet.triggered`` set does)."""

    def __init__(
        self,
        base: ImageSet,
        indices: np.ndarray,
        trigger: Callable[[np.ndarray], np.ndarray] | None,
        target: np.ndarray,
    ) -> None:
        self.base = base
        self.trigger = trigger
        self.poison_mask = np.zeros(len(base), dtype=bool)
        self.poison_mask[indices] = True
        self._labels = base.labels
        self._labels[self.poison_mask] = target

    def __len__(self) -> int:
        return len(self.base)

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.base.image_shape

    def _load(self, indices: np.ndarray) -> np.ndarray:
        batch = np.array(self.base.get_batch(indices), dtype=np.float32, copy=True)
        hit = self.poison_mask[indices]
        if self.trigger is not None and hit.any():
            batch[hit] = self.trigger(batch[hit])
        return batch
