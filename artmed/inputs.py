"""Turn user inputs (pixel arrays, ImageSets, sentences, label arrays) into validated model tensors.

Shared by the estimator and the training loops so every entry point checks inputs the same way and MedCLIP's
normalisation happens in exactly one place.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import torch

from artmed.constants import CHEXPERT_LABELS, IMAGE_MEAN, IMAGE_STD, NUM_LABELS, TEXT_MAX_LENGTH


@runtime_checkable
class BatchSource(Protocol):
    """Anything that serves images by index: an ``ImageSet`` (``get_batch``/``__len__``) or the like."""

    def __len__(self) -> int: ...

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> np.ndarray: ...


Images = np.ndarray | BatchSource
PIXEL_TOLERANCE: float = 1e-3
"""How far outside [0, 1] a pixel may stray (rounding in attacks) before images are rejected as mis-scaled."""
LABEL_VALUES: tuple[float, ...] = (1.0, 0.0, -1.0)
"""The values of a CheXpert label cell: positive, negative or blank, uncertain (kept by the "keep" policy)."""


def normalize_pixels(x: torch.Tensor) -> torch.Tensor:
    """MedCLIP normalisation of pixel-space [0, 1] images: ``(x - IMAGE_MEAN) / IMAGE_STD``."""
    return (x - IMAGE_MEAN) / IMAGE_STD


def check_image_array(x: Any, input_shape: tuple[int, ...]) -> np.ndarray:
    """Return ``x`` as float32 (N, C, H, W) after checking rank, channels (1 or 3), spatial size and [0, 1] range."""
    arr = np.asarray(x, dtype=np.float32)
    expected = f"(N, 1|3, {input_shape[1]}, {input_shape[2]})"
    if arr.ndim != 4:
        raise ValueError(f"images must have shape {expected}, got rank {arr.ndim} shape {arr.shape}")
    if arr.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels {expected}, got shape {arr.shape}")
    if tuple(arr.shape[2:]) != tuple(input_shape[1:]):
        raise ValueError(f"images must have spatial size {tuple(input_shape[1:])} {expected}, got shape {arr.shape}")
    if arr.size:
        lo, hi = float(arr.min()), float(arr.max())
        if not (lo >= -PIXEL_TOLERANCE and hi <= 1.0 + PIXEL_TOLERANCE):
            raise ValueError(
                f"images must be pixel values in [0, 1], got range [{lo:.4g}, {hi:.4g}] "
                "(MedCLIP normalisation happens inside the estimator)"
            )
    return arr


def num_images(x: Images) -> int:
    """Number of images in an array or batch source."""
    return len(x) if isinstance(x, BatchSource) else int(np.shape(x)[0])


def image_batch(x: Images, indices: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Checked float32 images at ``indices`` from an array or a batch source."""
    batch = x.get_batch(indices) if isinstance(x, BatchSource) else np.asarray(x)[indices]
    return check_image_array(batch, input_shape)


def as_images(x: Any, input_shape: tuple[int, ...]) -> Images:
    """Keep a batch source as is (checking one image), otherwise return a checked float32 array."""
    if isinstance(x, BatchSource) and not isinstance(x, np.ndarray):
        if len(x) > 0:
            image_batch(x, np.array([0]), input_shape)
        return x
    return check_image_array(x, input_shape)


def check_label_matrix(labels: Any, n: int, what: str) -> np.ndarray:
    """Return ``labels`` as float32 (n, 14) CheXpert labels: 1 (positive), 0 (negative or blank), -1 (uncertain).

    Anything else (another shape, NaN, inf, 5, 0.5) raises a ValueError naming ``what`` and the first bad cell.
    """
    arr = np.asarray(labels, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != NUM_LABELS:
        raise ValueError(f"{what} must have shape (N, {NUM_LABELS}), got {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{what} has {arr.shape[0]} rows for {n} items")
    bad = ~np.isin(arr, LABEL_VALUES)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{what} holds values other than 1, 0, -1 in {int(bad.any(axis=1).sum())} row(s); first: "
            f"row {row}, column {col} ({CHEXPERT_LABELS[col]}) = {arr[row, col]} (labels are 1 positive, "
            "0 negative or blank, -1 uncertain)"
        )
    return arr


def check_batch_size(batch_size: Any, what: str = "batch_size") -> int:
    """``batch_size`` as an int; ValueError unless it is a whole number >= 1 (8.0 is taken as 8; 0, 2.5, NaN, a bool
    or a string are refused)."""
    if (
        isinstance(batch_size, (bool, np.bool_))
        or not isinstance(batch_size, numbers.Real)
        or not float(batch_size).is_integer()
        or batch_size < 1
    ):
        raise ValueError(f"{what} must be a positive integer, got {batch_size!r}")
    return int(cast(float, batch_size))  # a whole real number (checked above)


def check_texts(texts: Any, what: str = "texts") -> list[str]:
    """Return ``texts`` as a non-empty list of non-empty strings."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"{what} must be a list of strings, got {type(texts).__name__}")
    out = list(texts)
    if not out:
        raise ValueError(f"{what} is empty")
    for i, t in enumerate(out):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"{what}[{i}] must be a non-empty string, got {t!r}")
    return out


def tokenize(
    tokenizer: Any, texts: list[str], device: torch.device, max_length: int = TEXT_MAX_LENGTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise sentences (padded to the longest, truncated at ``max_length``) to ids and mask on ``device``."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)
