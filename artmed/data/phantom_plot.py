"""Figures of the phantom generator: ``save_phantom_grid`` (matplotlib, imported only when a figure is drawn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from artmed.constants import CHEXPERT_LABELS, NUM_LABELS
from artmed.data.phantom import PhantomGenerator
from artmed.files import atomic_file


def save_phantom_grid(path: str | Path, image_size: int = 128, seed: int = 0) -> Path:
    """Write a PNG grid: the same phantom patient with each CheXpert finding alone, one titled panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.zeros((NUM_LABELS, NUM_LABELS), dtype=np.float32)
    labels[np.arange(NUM_LABELS), np.arange(NUM_LABELS)] = 1.0
    images = np.stack([PhantomGenerator(image_size, seed).generate(labels[i : i + 1])[0, 0] for i in range(NUM_LABELS)])
    cols = 7
    rows = int(np.ceil(NUM_LABELS / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.35 * rows))
    for ax in axes.ravel():
        ax.axis("off")
    for i, ax in enumerate(axes.ravel()[:NUM_LABELS]):
        ax.imshow(images[i], cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(CHEXPERT_LABELS[i], fontsize=9)
    fig.suptitle(f"artmed phantom chest radiographs ({image_size} px, seed {seed})", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_file(path) as tmp:  # a full disk leaves the previous figure and an OutputWriteError
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path
