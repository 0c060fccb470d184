"""Backdoor triggers: callables that stamp a pattern on pixel-space images in [0, 1], channels first.

Each trigger takes a batch (N, C, H, W) or a single image (C, H, W), returns a new array of the same shape and dtype
(the input is never modified), and so plugs into ``art.attacks.poisoning.PoisoningAttackBackdoor(trigger)`` as well
as into :class:`artmed.attacks.poisoning.BadMatch`. Triggers act *before* MedCLIP normalisation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from artmed.constants import IMAGE_MEAN, IMAGE_SIZE, IMAGE_STD
from artmed.params import Bool, Choice, Int, Items, OrNone, Params, Real
from artmed.suggest import did_you_mean

__all__ = ["Trigger", "PatchTrigger", "FourierTrigger", "BlendedTrigger", "TRIGGERS", "make_trigger"]

CORNERS: tuple[str, ...] = ("top_left", "top_right", "bottom_left", "bottom_right")


class Trigger(Params):
    """Base class: input validation, single-image handling and dtype round-trip shared by every trigger.

    Parameters follow :mod:`artmed.params`: stored unchanged as passed, checked by ``_check_params`` (``param_rules``
    and any cross-checks), read back by ``get_params`` and changed all-or-nothing by ``set_params``, which drops the
    patterns a trigger cached for the old values.
    """

    name: str = "trigger"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Return a triggered copy of ``x`` ((N, C, H, W) or (C, H, W), floats in [0, 1])."""
        batch = self._validate(x)
        out = self._apply(batch.astype(np.float64 if batch.dtype == np.float64 else np.float32, copy=True))
        out = out.astype(batch.dtype, copy=False)
        return out[0] if np.ndim(x) == 3 else out

    def mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """Boolean array of ``shape`` ((H, W), (C, H, W) or (N, C, H, W)): True where the trigger may change pixels."""
        return np.ones(_check_shape(shape), dtype=bool)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if not isinstance(v, np.ndarray))
        return f"{type(self).__name__}({params})"

    def _apply(self, x: np.ndarray) -> np.ndarray:
        """Trigger a validated (N, C, H, W) float batch (a private copy, free to modify) and return it."""
        raise NotImplementedError

    @staticmethod
    def _validate(x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise ValueError(f"trigger input must be a numpy array, got {type(x).__name__}")
        if x.ndim not in (3, 4):
            raise ValueError(f"trigger input must be (N, C, H, W) or (C, H, W), got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"trigger input must be a float array in [0, 1], got dtype {x.dtype}")
        batch = x[None] if x.ndim == 3 else x
        if batch.shape[1] not in (1, 3):
            raise ValueError(
                f"trigger input must be channels-first with 1 or 3 channels, got shape {x.shape} "
                "(channels-last input? transpose to (N, C, H, W))"
            )
        if batch.size and not np.all(np.isfinite(batch)):
            raise ValueError("trigger input contains NaN or infinite values")
        if batch.size and (batch.min() < 0.0 or batch.max() > 1.0):
            raise ValueError(
                f"trigger input must be pixel-space images in [0, 1], got range [{batch.min():.3g}, {batch.max():.3g}]"
                " (triggers act before MedCLIP normalisation)"
            )
        return batch


class PatchTrigger(Trigger):
    """A solid square in one corner: the paper's 32×32 black bottom-right patch at 224 px.

    ``size`` is the side in pixels; when None it is ``round(relative_size · W)`` (at least 1), so the patch covers the
    same share of a smaller image as 32 px does of a 224 px one. ``inset`` = (dx, dy) pixels between the patch and the
    corner's vertical and horizontal edges (default flush). The released code pastes its 32 px patch on the image
    file at native resolution with inset (1, 1) ("right_bottom"), or inset (100, 1) in white (245/255) for its
    training script's "mid_bottom", which is 100 px left of the right edge, not centred.

    ``native_size`` (default None: off) emulates that on images that have no native-resolution file (the phantom,
    any array): the image is taken as a ``native_size`` × ``native_size`` square resized to the array's size, the
    patch's ``size`` and ``inset`` are native pixels, and the patch is drawn as it looks after an area-averaging
    resize: each pixel is blended towards ``colour`` by the share of its area the scaled patch covers
    (``coverage``). ``PatchTrigger(size=32, inset=(1, 1), native_size=1024)`` covers ~2 px at 64 and ~7 px at 224.
    For file-backed images, apply a trigger without ``native_size`` to the native image instead
    (``FileImageSet.triggered``).
    """

    name = "patch"
    param_rules = {
        "size": OrNone(Int(1), text="a positive integer or None"),
        "relative_size": Real(0.0, 1.0, "(]", text="in (0, 1]"),
        "colour": Real(0.0, 1.0, text="a pixel value in [0, 1]"),
        "corner": Choice(CORNERS),
        "inset": Items(Int(0), 2, text="two non-negative integers (dx, dy)"),
        "native_size": OrNone(Int(1), text="a positive integer or None"),
    }

    def __init__(
        self,
        size: int | None = None,
        relative_size: float = 32 / IMAGE_SIZE,
        colour: float = 0.0,
        corner: str = "bottom_right",
        inset: tuple[int, int] = (0, 0),
        native_size: int | None = None,
    ) -> None:
        self.size = size
        self.relative_size = relative_size
        self.colour = colour
        self.corner = corner
        self.inset = inset
        self.native_size = native_size
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()
        if self.native_size is not None:
            self.side(int(self.native_size), int(self.native_size))

    @property
    def offsets(self) -> tuple[int, int]:
        """``inset`` as a pair of Python ints (dx, dy)."""
        return int(self.inset[0]), int(self.inset[1])

    def side(self, height: int, width: int) -> int:
        """The patch side in pixels for an image of this size; ValueError when it does not fit."""
        side = int(self.size) if self.size is not None else max(1, int(round(float(self.relative_size) * width)))
        dx, dy = self.offsets
        if side + dy > height or side + dx > width:
            raise ValueError(
                f"PatchTrigger of side {side} px at inset {(dx, dy)} does not fit a {height}×{width} image"
            )
        return side

    def mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """Boolean array of ``shape``: True inside the patch (with ``native_size``: where it covers any area)."""
        shape = _check_shape(shape)
        height, width = shape[-2:]
        if self.native_size is not None:
            return np.broadcast_to(self.coverage(height, width) > 0.0, shape).copy()
        rows, cols = self._region(height, width)
        plane = np.zeros((height, width), dtype=bool)
        plane[rows, cols] = True
        return np.broadcast_to(plane, shape).copy()

    def coverage(self, height: int, width: int) -> np.ndarray:
        """(H, W) float64 in [0, 1]: the share of each pixel's area the patch covers. Without ``native_size`` the
        patch's pixels (1) and the rest (0); with it, the native patch scaled by (H, W) / native_size (area
        averaging), so edge pixels are partly covered."""
        if self.native_size is None:
            rows, cols = self._region(height, width)
            plane = np.zeros((height, width), dtype=np.float64)
            plane[rows, cols] = 1.0
            return plane
        n = int(self.native_size)
        rows, cols = self._region(n, n)
        return np.outer(_overlap(rows, height / n, height), _overlap(cols, width / n, width))

    def _region(self, height: int, width: int) -> tuple[slice, slice]:
        side = self.side(height, width)
        dx, dy = self.offsets
        rows = slice(dy, dy + side) if self.corner.startswith("top") else slice(height - side - dy, height - dy)
        cols = slice(dx, dx + side) if self.corner.endswith("left") else slice(width - side - dx, width - dx)
        return rows, cols

    def _apply(self, x: np.ndarray) -> np.ndarray:
        if self.native_size is not None:
            cover = self.coverage(*x.shape[-2:])
            out = x * (1.0 - cover).astype(x.dtype) + (cover * float(self.colour)).astype(x.dtype)
            return np.clip(out, 0.0, 1.0, out=out)
        rows, cols = self._region(*x.shape[-2:])
        x[..., rows, cols] = float(self.colour)
        return x


class FourierTrigger(Trigger):
    """FIBA-style frequency trigger (Feng et al., CVPR 2022): blend the low-frequency amplitude spectrum.

    Per image and channel: FFT, centre the spectrum, replace the amplitude inside the centred window of half-width
    ``floor(window · min(H, W))`` (FIBA's β) by ``(1 − alpha)·A_image + alpha·A_reference``, keep the image's phase,
    inverse FFT, clip to [0, 1] (the window convention of FIBA and of the seed paper's code). The reference is a
    smooth random texture drawn from ``seed`` at 224 px (the seed code used a COCO photo; nothing is downloaded here),
    or the user's ``reference`` image ((H, W) or (C, H, W) in [0, 1]); it is resized to each image size.
    ``unnormalized=True`` reproduces the released code, which feeds Fourier-triggered images to MedCLIP *without*
    its mean/std normalisation: the result is mapped to ``x · IMAGE_STD + IMAGE_MEAN``, the pixels that the model's
    normalisation turns back into ``x`` (a strong intensity change on top of the spectral one).
    """

    name = "fourier"
    param_rules = {
        "window": Real(0.0, 0.5, "()", text="FIBA's β in (0, 0.5)"),
        "alpha": Real(0.0, 1.0, "(]", text="in (0, 1]"),
        "seed": Int(0, text="a non-negative integer"),
        "unnormalized": Bool(text="True or False"),
    }

    def __init__(
        self,
        window: float = 0.2,
        alpha: float = 0.1,
        seed: int = 0,
        reference: np.ndarray | None = None,
        unnormalized: bool = False,
    ):
        self.window = window
        self.alpha = alpha
        self.seed = seed
        self.reference = reference
        self.unnormalized = unnormalized
        self._amplitudes: dict[tuple[int, int, int], np.ndarray] = {}
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()
        if self.reference is not None:
            _check_pattern(self.reference, "FourierTrigger reference")

    def _params_changed(self) -> None:
        self._amplitudes.clear()

    def half_width(self, height: int, width: int) -> int:
        """FIBA's low-frequency half-width b = floor(β · min(H, W)); the window is (2b + 1)² centred bins."""
        return int(np.floor(float(self.window) * min(height, width)))

    def frequency_window(self, height: int, width: int) -> np.ndarray:
        """Boolean (H, W) mask over the *centred* (fftshift-ed) spectrum: True where the amplitude is blended."""
        b = self.half_width(height, width)
        ch, cw = height // 2, width // 2
        window = np.zeros((height, width), dtype=bool)
        window[max(ch - b, 0) : ch + b + 1, max(cw - b, 0) : cw + b + 1] = True
        return window

    def reference_image(self, height: int, width: int, channels: int = 1) -> np.ndarray:
        """The reference image resized to (channels, H, W), float64 in [0, 1]."""
        base = (
            _as_pattern(self.reference) if self.reference is not None else _smooth_texture(int(self.seed), IMAGE_SIZE)
        )
        return _resize(base, height, width, channels)

    def _apply(self, x: np.ndarray) -> np.ndarray:
        _, channels, height, width = x.shape
        key = (channels, height, width)
        if key not in self._amplitudes:
            ref = self.reference_image(height, width, channels)
            self._amplitudes[key] = np.fft.fftshift(np.abs(np.fft.fft2(ref)), axes=(-2, -1))
        ref_amp = self._amplitudes[key]
        window = self.frequency_window(height, width)
        spectrum = np.fft.fftshift(np.fft.fft2(x.astype(np.float64)), axes=(-2, -1))
        amplitude, phase = np.abs(spectrum), np.angle(spectrum)
        alpha = float(self.alpha)
        amplitude[..., window] = (1.0 - alpha) * amplitude[..., window] + alpha * ref_amp[..., window]
        mixed = np.fft.ifftshift(amplitude * np.exp(1j * phase), axes=(-2, -1))
        out = np.clip(np.real(np.fft.ifft2(mixed)), 0.0, 1.0)
        return (out * IMAGE_STD + IMAGE_MEAN if self.unnormalized else out).astype(x.dtype)


class BlendedTrigger(Trigger):
    """Blended trigger (Chen et al., 2017): ``(1 − alpha)·x + alpha·pattern`` over the whole image.

    The pattern is uniform noise drawn from ``seed`` at 224 px, or the user's ``pattern`` ((H, W) or (C, H, W) in
    [0, 1]); it is resized to each image size.
    """

    name = "blended"
    param_rules = {"alpha": Real(0.0, 1.0, "(]", text="in (0, 1]"), "seed": Int(0, text="a non-negative integer")}

    def __init__(self, alpha: float = 0.1, seed: int = 0, pattern: np.ndarray | None = None) -> None:
        self.alpha = alpha
        self.seed = seed
        self.pattern = pattern
        self._patterns: dict[tuple[int, int, int], np.ndarray] = {}
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()
        if self.pattern is not None:
            _check_pattern(self.pattern, "BlendedTrigger pattern")

    def _params_changed(self) -> None:
        self._patterns.clear()

    def pattern_image(self, height: int, width: int, channels: int = 1) -> np.ndarray:
        """The blend pattern resized to (channels, H, W), float64 in [0, 1]."""
        key = (channels, height, width)
        if key not in self._patterns:
            if self.pattern is not None:
                base = _as_pattern(self.pattern)
            else:
                base = np.random.default_rng(int(self.seed)).random((IMAGE_SIZE, IMAGE_SIZE))
            self._patterns[key] = _resize(base, height, width, channels)
        return self._patterns[key]

    def _apply(self, x: np.ndarray) -> np.ndarray:
        pattern = self.pattern_image(x.shape[-2], x.shape[-1], channels=x.shape[1]).astype(x.dtype)
        alpha = float(self.alpha)
        return ((1.0 - alpha) * x + alpha * pattern).astype(x.dtype)


TRIGGERS: dict[str, type[Trigger]] = {cls.name: cls for cls in (PatchTrigger, FourierTrigger, BlendedTrigger)}


def make_trigger(name: str, **params: Any) -> Trigger:
    """Build a trigger from its name ("patch", "fourier", "blended") and constructor parameters (for configs)."""
    if name not in TRIGGERS:
        raise ValueError(f"unknown trigger {name!r}{did_you_mean(name, TRIGGERS)}; valid: {sorted(TRIGGERS)}")
    return TRIGGERS[name](**params)


def _check_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3, 4) or min(shape) < 1:
        raise ValueError(f"mask shape must be (H, W), (C, H, W) or (N, C, H, W) with positive sizes, got {shape}")
    return shape


def _overlap(span: slice, scale: float, length: int) -> np.ndarray:
    """(length,) share of each output pixel [i, i + 1) covered by the native pixel span scaled by ``scale``."""
    lo, hi = span.start * scale, span.stop * scale
    edges = np.arange(length, dtype=np.float64)
    return np.clip(np.minimum(edges + 1.0, hi) - np.maximum(edges, lo), 0.0, 1.0)


def _as_pattern(pattern: np.ndarray) -> np.ndarray:
    """A user's pattern (any array-like of pixel values) as float64, as the triggers compute with it."""
    return np.asarray(pattern, dtype=np.float64)


def _check_pattern(pattern: np.ndarray, what: str) -> None:
    """ValueError naming ``what`` unless ``pattern`` is an (H, W) or (C, H, W) image of finite values in [0, 1]."""
    try:
        pattern = _as_pattern(pattern)
    except (TypeError, ValueError):
        raise ValueError(
            f"{what} must be an (H, W) or (C, H, W) array of pixel values in [0, 1], got {type(pattern).__name__}"
        ) from None
    if pattern.ndim == 3 and pattern.shape[0] not in (1, 3):
        raise ValueError(f"{what} must be (H, W) or channels-first (C, H, W) with C in (1, 3), got {pattern.shape}")
    if pattern.ndim not in (2, 3) or min(pattern.shape) < 1:
        raise ValueError(f"{what} must be (H, W) or (C, H, W), got shape {pattern.shape}")
    if not np.all(np.isfinite(pattern)) or pattern.min() < 0.0 or pattern.max() > 1.0:
        raise ValueError(f"{what} must hold finite pixel values in [0, 1]")


def _smooth_texture(seed: int, size: int) -> np.ndarray:
    """A deterministic smooth random texture in [0, 1]: seeded Gaussian noise with a 1/f² power spectrum."""
    rng = np.random.default_rng(seed)
    noise = np.fft.fft2(rng.standard_normal((size, size)))
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    texture = np.real(np.fft.ifft2(noise / radius))
    texture -= texture.min()
    return texture / texture.max()


def _resize(image: np.ndarray, height: int, width: int, channels: int) -> np.ndarray:
    """Resize an (H, W) or (C, H, W) image to (channels, height, width): bilinear, antialiased, clipped to [0, 1]."""
    planes = image[None] if image.ndim == 2 else image
    if planes.shape[0] not in (1, channels):
        raise ValueError(f"pattern has {planes.shape[0]} channels but the images have {channels}")
    if planes.shape[-2:] != (height, width):
        tensor = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float64))[None]
        resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        planes = resized[0].numpy()
    return np.clip(np.broadcast_to(planes, (channels, height, width)), 0.0, 1.0).astype(np.float64)
