"""The data interface every part of artmed codes against: image sets, text pools, zero-shot tasks, datasets.

Images are float32 pixel-space arrays in [0, 1], channels-first (N, 1, H, W); labels are float32 (N, 14)
CheXpert vectors with values 1, 0, -1. MedCLIP normalisation happens in the estimator, never here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from artmed.constants import CHEXPERT_LABELS, NUM_LABELS

ImageReader = Callable[[Path], np.ndarray]
"""A reader turns a file into a 2-D float array in [0, 1] (grayscale, native size)."""

_READERS: dict[str, ImageReader] = {}
DEFAULT_MAX_BYTES: int = 2 * 1024**3


def register_reader(suffix: str, reader: ImageReader) -> None:
    """Register `reader` for files ending in `suffix` (e.g. ".dcm"); FileImageSet uses it instead of PIL."""
    if not suffix.startswith("."):
        raise ValueError(f"suffix must start with '.', got {suffix!r}")
    _READERS[suffix.lower()] = reader


def validate_labels(labels: np.ndarray | Sequence, n: int | None = None, what: str = "labels") -> np.ndarray:
    """Return `labels` as float32 (N, 14) after checking shape and that every value is 1, 0 or -1."""
    arr = np.asarray(labels, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != NUM_LABELS:
        raise ValueError(f"{what} must have shape (N, {NUM_LABELS}), got {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{what} has {arr.shape[0]} rows but there are {n} items")
    bad = ~np.isin(arr, (1.0, 0.0, -1.0))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{what} must contain only 1, 0 or -1; row {row}, column {col} ({CHEXPERT_LABELS[col]!r}) "
            f"is {arr[row, col]}"
        )
    return arr


def _as_index_array(indices: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
    if idx.size == 0:
        return idx.astype(np.int64)
    if idx.dtype == bool:
        if idx.shape[0] != n:
            raise ValueError(f"boolean mask has length {idx.shape[0]}, expected {n}")
        return np.flatnonzero(idx)
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    if idx.min() < -n or idx.max() >= n:
        raise IndexError(f"index out of range for a set of {n} images")
    return np.where(idx < 0, idx + n, idx).astype(np.int64)


class ImageSet(ABC):
    """A labelled set of grayscale images served in batches, so large sets need not sit in memory."""

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    @abstractmethod
    def labels(self) -> np.ndarray:
        """The (N, 14) float32 label matrix (a copy)."""

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one image, (1, H, W)."""

    @abstractmethod
    def _load(self, indices: np.ndarray) -> np.ndarray:
        """Load images at validated, non-negative `indices` as (B, 1, H, W) float32."""

    @property
    def image_size(self) -> int:
        """Side length of the (square) images."""
        _, h, w = self.image_shape
        if h != w:
            raise ValueError(f"images are not square ({h}x{w}); use image_shape")
        return h

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images at `indices` as a (B, 1, H, W) float32 array in [0, 1]."""
        idx = _as_index_array(indices, len(self))
        if idx.size == 0:
            return np.zeros((0, *self.image_shape), dtype=np.float32)
        return self._load(idx)

    def __getitem__(self, i: int | Sequence[int] | np.ndarray) -> np.ndarray:
        """Image `i` as a (1, H, W) float32 array; an index array or boolean mask gives those images as one
        (B, 1, H, W) array, as for a numpy array (``get_batch``)."""
        if isinstance(i, (int, np.integer)):
            return self.get_batch([int(i)])[0]
        if isinstance(i, (list, tuple, np.ndarray)):
            return self.get_batch(i)
        raise TypeError(f"ImageSet indices must be integers or index arrays, got {type(i).__name__}")

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def batches(self, batch_size: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (images, labels) in order, `batch_size` at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        labels = self.labels
        for start in range(0, len(self), batch_size):
            idx = np.arange(start, min(start + batch_size, len(self)))
            yield self.get_batch(idx), labels[idx]

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """A new ImageSet holding only the images at `indices` (in that order)."""
        return SubsetImageSet(self, _as_index_array(indices, len(self)))

    def to_array(self, max_bytes: int = DEFAULT_MAX_BYTES, batch_size: int = 256) -> np.ndarray:
        """All images as one (N, 1, H, W) float32 array; refuses when that would exceed `max_bytes`."""
        need = len(self) * int(np.prod(self.image_shape)) * 4
        if need > max_bytes:
            raise ValueError(
                f"to_array would need {need / 1024**3:.2f} GiB (> max_bytes={max_bytes}); "
                "take a subset(), iterate batches(), or raise max_bytes"
            )
        out = np.empty((len(self), *self.image_shape), dtype=np.float32)
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            out[start:stop] = self.get_batch(np.arange(start, stop))
        return out


class ArrayImageSet(ImageSet):
    """Images held in memory as one (N, 1, H, W) float32 array (kept by reference when already float32)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        arr = np.asarray(images, dtype=np.float32)
        if arr.ndim != 4 or arr.shape[1] != 1:
            raise ValueError(f"images must have shape (N, 1, H, W), got {arr.shape}")
        if arr.size and not np.isfinite(arr).all():
            raise ValueError("images contain NaN or infinite values")
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise ValueError(f"images must be in [0, 1], got range [{arr.min():.4g}, {arr.max():.4g}]")
        self.images = arr
        self._labels = validate_labels(labels, arr.shape[0])

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def _load(self, indices: np.ndarray) -> np.ndarray:
        return self.images[indices]

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArrayImageSet:
        idx = _as_index_array(indices, len(self))
        return ArrayImageSet(self.images[idx], self._labels[idx])

    def to_array(self, max_bytes: int = DEFAULT_MAX_BYTES, batch_size: int = 256) -> np.ndarray:
        return self.images.copy()


class SubsetImageSet(ImageSet):
    """A view of another ImageSet restricted to some of its indices."""

    def __init__(self, parent: ImageSet, indices: np.ndarray) -> None:
        self.parent = parent
        self.indices = _as_index_array(indices, len(parent))

    def __len__(self) -> int:
        return self.indices.shape[0]

    @property
    def labels(self) -> np.ndarray:
        return self.parent.labels[self.indices]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.parent.image_shape

    def _load(self, indices: np.ndarray) -> np.ndarray:
        return self.parent.get_batch(self.indices[indices])


def _pil_to_float(img: Image.Image) -> np.ndarray:
    """A PIL image as a 2-D float32 grayscale array in [0, 1] (8-bit, 16-bit, 32-bit integer and float modes).

    Integer images are divided by their bit depth's range, never by their own maximum, so two images of one source
    keep their relative brightness: 16-bit ("I;16") and 32-bit integer ("I") images by 65535 (a 32-bit file of
    medical images holds 16-bit values); an "I" image with values outside 0..65535 is refused, as no fixed range
    would place it in [0, 1]."""
    if img.mode.startswith("I;16"):
        return np.asarray(img, dtype=np.float32) / 65535.0
    if img.mode == "I":
        arr = np.asarray(img, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(
                f"32-bit integer pixel values span {arr.min()}..{arr.max()}, outside the 16-bit range "
                "0..65535 that such images are scaled by; save the image as 16-bit or float"
            )
        return arr.astype(np.float32) / 65535.0
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) if arr.size else 1.0
        lo = float(arr.min()) if arr.size else 0.0
        if lo >= 0.0 and hi <= 1.0:
            return arr
        if lo >= 0.0 and hi <= 255.0:
            return arr / 255.0
        if lo >= 0.0 and hi <= 65535.0:
            return arr / 65535.0
        return (arr - lo) / max(hi - lo, 1e-12)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA").convert("RGB")
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def read_image_file(path: str | Path) -> np.ndarray:
    """Read one image file as a 2-D float32 array in [0, 1]; a registered reader handles its suffix if any."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    try:
        if reader is not None:
            arr = np.asarray(reader(path), dtype=np.float32)
        else:
            with Image.open(path) as img:
                img.load()
                arr = _pil_to_float(img)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(path) in str(exc):
            raise
        raise ValueError(f"cannot read image file {str(path)!r}: {exc}") from exc
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        arr = arr[..., :3].mean(axis=-1)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"image file {str(path)!r} did not decode to a 2-D grayscale image (shape {arr.shape})")
    return arr


INTERPOLATIONS: tuple[str, ...] = ("bicubic", "bilinear", "bilinear_tensor")
"""Resize filters of ``preprocess_image``: "bicubic" (artmed's default; MedCLIP's feature extractor), "bilinear" (PIL's
antialiased bilinear, what torchvision's ``transforms.Resize`` does to the PIL images of the released training and
zero-shot scripts), "bilinear_tensor" (bilinear without antialiasing, ``align_corners=False``: ``transforms.Resize``
on the tensors of the released BadDist script, torchvision 0.11)."""
PADDINGS: tuple[str, ...] = ("square", "no_upscale", "none")
"""How ``preprocess_image`` squares an image: "square" (artmed's default: centred zero padding to max(h, w), then a
resize to the target size, up or down), "no_upscale" (MedCLIP's and the released scripts' ``_pad_img``: padding to
max(size, h, w), so a small image is padded, never enlarged), "none" (no padding: the image is stretched to a square,
as the released BadDist script's ``ToTensor`` + ``Resize((224, 224))`` does)."""
TRIGGER_STAGES: tuple[str, ...] = ("padded", "raw")
"""Where a native-resolution trigger acts: "padded" (on the padded square, before the resize: the released training
set, ``ImageTextContrastiveDataset``), "raw" (on the image as read, before padding: the released zero-shot test set,
``ZeroShotImageDataset``, and BadDist's ``TriggerDataset``)."""


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}")
    return value


def _native_trigger(trigger: Callable[[np.ndarray], np.ndarray], arr: np.ndarray) -> np.ndarray:
    """``trigger`` applied to one 2-D native image (as a (1, 1, H, W) batch in [0, 1])."""
    out = np.asarray(trigger(np.clip(arr, 0.0, 1.0).astype(np.float32)[None, None]), dtype=np.float32)
    if out.shape != (1, 1, *arr.shape):
        raise ValueError(f"trigger changed the native image's shape from {arr.shape} to {out.shape[2:]}")
    return out[0, 0]


def _resize(square: np.ndarray, image_size: int, interpolation: str) -> np.ndarray:
    """A 2-D float32 image resized to (image_size, image_size) with one of ``INTERPOLATIONS``."""
    if interpolation == "bilinear_tensor":
        import torch
        import torch.nn.functional as F

        out = F.interpolate(
            torch.from_numpy(np.ascontiguousarray(square))[None, None],
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
            antialias=False,
        )
        return out[0, 0].numpy()
    resample = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(square).resize((image_size, image_size), resample), dtype=np.float32)


def preprocess_image(
    arr: np.ndarray,
    image_size: int,
    interpolation: str = "bicubic",
    pad: str = "square",
    trigger: Callable[[np.ndarray], np.ndarray] | None = None,
    trigger_stage: str = "padded",
) -> np.ndarray:
    """MedCLIP preprocessing of a 2-D [0,1] image: pad to square with 0 (centred), bicubic resize, clip to [0,1].

    MedCLIP pads to max(224, h, w) and so never upscales small images; by default we always resize to `image_size`
    (``pad="no_upscale"`` pads as MedCLIP does, to max(image_size, h, w); ``pad="none"`` stretches). ``interpolation``
    is one of ``INTERPOLATIONS``. ``trigger`` (default none), a callable on (N, C, H, W) arrays in [0, 1] such as
    ``PatchTrigger(size=32, inset=(1, 1))``, is applied to the native-resolution image at ``trigger_stage`` (one of
    ``TRIGGER_STAGES``), before the resize, as the released code pastes its patch.
    """
    _check_choice(interpolation, INTERPOLATIONS, "interpolation")
    _check_choice(pad, PADDINGS, "pad")
    _check_choice(trigger_stage, TRIGGER_STAGES, "trigger_stage")
    if trigger is not None and trigger_stage == "raw":
        arr = _native_trigger(trigger, arr)
    h, w = arr.shape
    if pad == "none":
        square = np.asarray(arr, dtype=np.float32)
    else:
        side = max(h, w) if pad == "square" else max(image_size, h, w)
        square = np.zeros((side, side), dtype=np.float32)
        top, left = (side - h) // 2, (side - w) // 2
        square[top : top + h, left : left + w] = arr
    if trigger is not None and trigger_stage == "padded":
        square = _native_trigger(trigger, square)
    if square.shape != (image_size, image_size):
        square = _resize(square, image_size, interpolation)
    return np.clip(square, 0.0, 1.0)


class FileImageSet(ImageSet):
    """Images on disk, read lazily one file at a time and preprocessed like MedCLIP (pad, resize, [0,1]).

    ``interpolation`` and ``pad`` choose the resize (``preprocess_image``; defaults: bicubic, pad to max(h, w)).
    ``triggered`` gives a copy whose chosen images are triggered at native resolution as they are read.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: np.ndarray,
        image_size: int = 224,
        interpolation: str = "bicubic",
        pad: str = "square",
    ) -> None:
        self.paths = [Path(p) for p in paths]
        if int(image_size) != image_size or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        self._image_size = int(image_size)
        self._labels = validate_labels(labels, len(self.paths))
        self.interpolation = _check_choice(interpolation, INTERPOLATIONS, "interpolation")
        self.pad = _check_choice(pad, PADDINGS, "pad")
        self.trigger: Callable[[np.ndarray], np.ndarray] | None = None
        self.trigger_stage = "padded"
        self.trigger_mask = np.zeros(len(self.paths), dtype=bool)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, self._image_size, self._image_size)

    def _load(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((indices.shape[0], *self.image_shape), dtype=np.float32)
        for k, i in enumerate(indices):
            trigger = self.trigger if self.trigger_mask[i] else None
            out[k, 0] = preprocess_image(
                read_image_file(self.paths[i]),
                self._image_size,
                self.interpolation,
                self.pad,
                trigger,
                self.trigger_stage,
            )
        return out

    def subset(self, indices: Sequence[int] | np.ndarray) -> FileImageSet:
        idx = _as_index_array(indices, len(self))
        out = FileImageSet(
            [self.paths[i] for i in idx], self._labels[idx], self._image_size, self.interpolation, self.pad
        )
        if self.trigger is not None:
            out.trigger, out.trigger_stage, out.trigger_mask = self.trigger, self.trigger_stage, self.trigger_mask[idx]
        return out

    def triggered(
        self,
        trigger: Callable[[np.ndarray], np.ndarray],
        rows: Sequence[int] | np.ndarray | None = None,
        stage: str = "padded",
    ) -> FileImageSet:
        """A copy whose images at ``rows`` (indices or a boolean mask; default all) are read with ``trigger`` applied
        to the native-resolution image, at ``stage`` (``TRIGGER_STAGES``: "padded" as the released training set,
        "raw" as its test and BadDist sets), before the resize. ``trigger_mask`` marks them; labels are unchanged.

        ``trigger`` is used as given, in native pixels (``PatchTrigger(size=32, inset=(1, 1))`` is the released
        32 px patch); a PatchTrigger with ``native_size`` (the emulation for arrays) is refused.
        """
        if not callable(trigger):
            raise ValueError(f"trigger must be callable on (N, C, H, W) arrays, got {type(trigger).__name__}")
        if getattr(trigger, "native_size", None) is not None:
            raise ValueError(
                "a trigger with native_size emulates native resolution on resized arrays; give the "
                "trigger without native_size to apply it to the native image"
            )
        if self.trigger is not None:
            raise ValueError("this FileImageSet is already triggered; trigger the untriggered set")
        out = self.subset(np.arange(len(self)))
        out.trigger, out.trigger_stage = trigger, _check_choice(stage, TRIGGER_STAGES, "stage")
        out.trigger_mask = np.zeros(len(self), dtype=bool)
        out.trigger_mask[np.arange(len(self)) if rows is None else _as_index_array(rows, len(self))] = True
        return out


@dataclass
class TextPool:
    """Report sentences with their 14-d CheXpert labels: the text side of unpaired training."""

    sentences: list[str]
    labels: np.ndarray

    def __post_init__(self) -> None:
        if isinstance(self.sentences, str) or not all(isinstance(s, str) for s in self.sentences):
            raise ValueError("sentences must be a list of strings")
        self.sentences = list(self.sentences)
        for i, s in enumerate(self.sentences):
            if not s.strip():
                raise ValueError(f"sentence {i} is empty")
        self.labels = validate_labels(self.labels, len(self.sentences), what="text labels")

    def __len__(self) -> int:
        return len(self.sentences)

    def subset(self, indices: Sequence[int] | np.ndarray) -> TextPool:
        """A new TextPool with the sentences at `indices`."""
        idx = _as_index_array(indices, len(self))
        return TextPool([self.sentences[i] for i in idx], self.labels[idx])


@dataclass
class ZeroShotTask:
    """A zero-shot classification task: class prompts, held-out test images and their integer targets."""

    name: str
    class_names: list[str]
    prompts: dict[str, list[str]]
    images: ImageSet
    targets: np.ndarray

    def __post_init__(self) -> None:
        self.class_names = list(self.class_names)
        if len(self.class_names) < 2:
            raise ValueError(f"task {self.name!r} needs at least 2 classes, got {self.class_names}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"task {self.name!r} has duplicate class names: {self.class_names}")
        if not isinstance(self.prompts, Mapping):
            raise ValueError(f"task {self.name!r}: prompts must be a dict class name -> list of sentences")
        extra = set(self.prompts) - set(self.class_names)
        if extra:
            raise ValueError(f"task {self.name!r}: prompts given for unknown classes {sorted(extra)}")
        for c in self.class_names:
            ps = self.prompts.get(c)
            if not ps or isinstance(ps, str) or not all(isinstance(p, str) and p.strip() for p in ps):
                raise ValueError(f"task {self.name!r}: class {c!r} needs at least one non-empty prompt")
        self.prompts = {c: list(self.prompts[c]) for c in self.class_names}
        if not isinstance(self.images, ImageSet):
            raise ValueError(f"task {self.name!r}: images must be an ImageSet, got {type(self.images).__name__}")
        targets = np.asarray(self.targets)
        if targets.ndim != 1 or (targets.size and not np.issubdtype(targets.dtype, np.integer)):
            raise ValueError(
                f"task {self.name!r}: targets must be a 1-D integer array, got {targets.dtype} {targets.shape}"
            )
        if targets.shape[0] != len(self.images):
            raise ValueError(f"task {self.name!r}: {targets.shape[0]} targets for {len(self.images)} images")
        if targets.size and (targets.min() < 0 or targets.max() >= len(self.class_names)):
            raise ValueError(f"task {self.name!r}: targets must lie in [0, {len(self.class_names) - 1}]")
        self.targets = targets.astype(np.int64)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


@dataclass
class MedDataset:
    """Everything one experiment needs: the unpaired training images, the text pool and the zero-shot tasks."""

    train: ImageSet
    texts: TextPool
    tasks: dict[str, ZeroShotTask] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.train, ImageSet):
            raise ValueError(f"train must be an ImageSet, got {type(self.train).__name__}")
        if not isinstance(self.texts, TextPool):
            raise ValueError(f"texts must be a TextPool, got {type(self.texts).__name__}")
        for key, task in self.tasks.items():
            if not isinstance(task, ZeroShotTask):
                raise ValueError(f"tasks[{key!r}] must be a ZeroShotTask, got {type(task).__name__}")
            if task.name != key:
                raise ValueError(f"tasks[{key!r}] is named {task.name!r}; keys must equal task names")
        self.tasks = dict(self.tasks)
