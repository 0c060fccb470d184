"""DICOM images for FileImageSet: pydicom (optional extra ``artmed[dicom]``) turned into a [0, 1] grayscale array.

Importing this module registers the reader for ``.dcm``/``.dicom`` files; pydicom itself is imported only when a
DICOM file is read, so the rest of artmed works without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from artmed.data.dataset import register_reader

DICOM_SUFFIXES = (".dcm", ".dicom")


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:
        raise ImportError("reading DICOM files needs pydicom: pip install 'artmed[dicom]'") from exc
    return pydicom


def _first(value: Any) -> float:
    """A DICOM numeric value that may be multi-valued (window centre/width): its first entry as float."""
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
        value = list(value)[0]
    return float(value)


def dicom_to_unit(ds: Any) -> np.ndarray:
    """A pydicom dataset's image as 2-D float32 in [0, 1]: first frame, colour averaged, rescale slope/intercept,
    the stored VOI window (else min-max), MONOCHROME1 inverted so that bright is always dense."""
    arr = np.asarray(ds.pixel_array, dtype=np.float32)
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        arr = arr.mean(axis=-1)
    if arr.ndim == 3:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got pixel data of shape {arr.shape}")
    slope, intercept = ds.get("RescaleSlope", None), ds.get("RescaleIntercept", None)
    if slope not in (None, ""):
        arr = arr * _first(slope)
    if intercept not in (None, ""):
        arr = arr + _first(intercept)
    centre, width = ds.get("WindowCenter", None), ds.get("WindowWidth", None)
    if centre not in (None, "") and width not in (None, "") and _first(width) > 1.0:
        c, w = _first(centre), _first(width)
        out = (arr - (c - 0.5)) / (w - 1.0) + 0.5
    else:
        lo, hi = float(arr.min()), float(arr.max())
        out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    out = np.clip(out, 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


def read_dicom(path: str | Path) -> np.ndarray:
    """Read one DICOM file as a 2-D float32 array in [0, 1] (see ``dicom_to_unit``); ValueError naming the file
    when it is not a readable DICOM image, ImportError when pydicom is missing."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(str(path))
        return dicom_to_unit(ds)
    except (pydicom.errors.InvalidDicomError, AttributeError, KeyError, TypeError, ValueError, RuntimeError,
            NotImplementedError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read DICOM file {str(path)!r}: {type(exc).__name__}: {exc}") from exc


def register_dicom_reader() -> None:
    """Make FileImageSet (``read_image_file``) read ``.dcm``/``.dicom`` files with ``read_dicom``."""
    for suffix in DICOM_SUFFIXES:
        register_reader(suffix, read_dicom)


register_dicom_reader()
