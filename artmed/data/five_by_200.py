"""CheXpert-5x200 / MIMIC-5x200: the five-class zero-shot task of GLoRIA and MedCLIP, drawn from labelled images.

A class's candidates are the images whose only finding is that class: its label is 1 and each of the other twelve
findings (every label but "No Finding") is 0, so an uncertain (-1) finding rules an image out, as in GLoRIA's
``preprocess_chexpert_5x200_data`` (MedCLIP's MIMIC-5x200 maps uncertain labels to 0 first: load those images with
``uncertain="zeros"``). Up to ``per_class`` (200) are drawn per class from a seed; the prompts are artmed's own
(``task_prompts("chexpert5")``).
"""

from __future__ import annotations

import warnings

import numpy as np

from artmed.constants import CHEXPERT_LABELS
from artmed.data.dataset import ImageSet, ZeroShotTask
from artmed.data.tasks import CHEXPERT5_CLASSES, task_prompts

PER_CLASS = 200


def exclusive_positives(labels: np.ndarray, finding: str) -> np.ndarray:
    """Row indices of (N, 14) ``labels`` whose only finding is ``finding`` (1 there, 0 for the other twelve)."""
    columns = [i for i, name in enumerate(CHEXPERT_LABELS) if name != "No Finding"]
    wanted = np.array([CHEXPERT_LABELS[i] == finding for i in columns], dtype=np.float32)
    return np.flatnonzero((labels[:, columns] == wanted).all(axis=1))


def five_by_200_task(name: str, images: ImageSet, seed: int, per_class: int = PER_CLASS) -> ZeroShotTask:
    """The 5x200 task over ``images``: up to ``per_class`` seeded exclusive positives of each of Atelectasis,
    Cardiomegaly, Consolidation, Edema and Pleural Effusion (a warning when a class has fewer; a ValueError when it
    has none)."""
    labels = images.labels
    rng = np.random.default_rng(seed)
    chosen, targets = [], []
    for k, finding in enumerate(CHEXPERT5_CLASSES):
        rows = exclusive_positives(labels, finding)
        if rows.size == 0:
            raise ValueError(f"task {name!r}: no image has {finding!r} as its only finding (of {len(images)} images)")
        if rows.size < per_class:
            warnings.warn(
                f"task {name!r}: only {rows.size} images have {finding!r} as their only finding "
                f"({per_class} wanted); the class is smaller",
                stacklevel=2,
            )
        chosen.append(np.sort(rng.choice(rows, size=min(per_class, rows.size), replace=False)))
        targets.append(np.full(chosen[-1].size, k))
    return ZeroShotTask(
        name,
        list(CHEXPERT5_CLASSES),
        task_prompts("chexpert5"),
        images.subset(np.concatenate(chosen)),
        np.concatenate(targets),
    )
