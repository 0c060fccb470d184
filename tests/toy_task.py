"""A separable two-class unpaired toy task (noise vs noise plus a blob) shared by the attack and defense tests."""

import numpy as np

from artmed.attacks.triggers import PatchTrigger
from artmed.constants import CHEXPERT_LABELS

SIZE = 32
NO_FINDING, PNEUMONIA = 0, CHEXPERT_LABELS.index("Pneumonia")
NORMAL_TEXTS = [
    "the lungs are clear",
    "no acute cardiopulmonary process",
    "heart size is normal",
    "both lungs are clear",
    "no focal consolidation",
    "normal chest",
]
PNEUMONIA_TEXTS = [
    "pneumonia",
    "right lower lobe pneumonia",
    "left upper lobe pneumonia",
    "focal pneumonia",
    "multifocal pneumonia",
    "pneumonia at the left base",
]
TEXTS = NORMAL_TEXTS + PNEUMONIA_TEXTS
TEXT_LABELS = np.zeros((len(TEXTS), 14), dtype=np.float32)
TEXT_LABELS[: len(NORMAL_TEXTS), NO_FINDING] = 1.0
TEXT_LABELS[len(NORMAL_TEXTS) :, PNEUMONIA] = 1.0
PROMPTS = {"Normal": NORMAL_TEXTS[:3], "Pneumonia": PNEUMONIA_TEXTS[:3]}
TRIGGER = PatchTrigger(size=5)


def images(n, seed):
    """A separable two-class set: noise (Normal, class 0) vs noise plus a bright blob (Pneumonia, class 1)."""
    rng = np.random.default_rng(seed)
    classes = np.arange(n) % 2
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    x = 0.35 + 0.05 * rng.standard_normal((n, 1, SIZE, SIZE))
    for i in np.flatnonzero(classes == 1):
        cy, cx = rng.uniform(0.25, 0.6), rng.uniform(0.2, 0.8)
        x[i, 0] += 0.35 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
    y = np.zeros((n, 14), dtype=np.float32)
    y[classes == 0, NO_FINDING] = 1.0
    y[classes == 1, PNEUMONIA] = 1.0
    return np.clip(x, 0, 1).astype(np.float32), y, classes
