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


def _luts() -> tuple[Any, Any]:
    """pydicom's ``apply_modality_lut`` and ``apply_voi_lut`` (pydicom 3's ``pydicom.pixels``, else pydicom 2's)."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        from pydicom.pixel_data_handlers.util import (  # type: ignore[no-redef]  # pydicom 2's names
            apply_modality_lut,
            apply_voi_lut,
        )
    return apply_modality_lut, apply_voi_lut


def _voi_range(ds: Any, apply_voi_lut: Any) -> tuple[float, float]:
    """The output range of the dataset's first VOI transform: the VOI LUT's entries, or the window's output range
    (what pydicom's windowing maps values far below and above the window to, for LINEAR, LINEAR_EXACT and SIGMOID
    alike)."""
    if ds.get("VOILUTSequence"):
        n, first, _ = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
        entries = apply_voi_lut(np.arange(first, first + (n or 65536), dtype=np.int64), ds, index=0)
        return float(np.min(entries)), float(np.max(entries))
    centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    far = abs(centre) + 1e6 * max(width, 1.0)
    with np.errstate(over="ignore"):
        ends = apply_voi_lut(np.array([centre - far, centre + far], dtype=np.float64), ds, index=0)
    return float(ends[0]), float(ends[1])


def dicom_to_unit(ds: Any) -> np.ndarray:
    """A pydicom dataset's image as 2-D float32 in [0, 1]: first frame; the modality LUT (Modality LUT Sequence or
    rescale slope/intercept) and the first VOI transform (VOI LUT Sequence, else the window with its VOI LUT Function:
    LINEAR, LINEAR_EXACT or SIGMOID), both by pydicom, scaled by the VOI's output range; without a VOI, min-max.
    Colour images are averaged and min-max scaled. MONOCHROME1 is inverted so that bright is always dense."""
    arr = np.asarray(ds.pixel_array)
    colour = int(ds.get("SamplesPerPixel", 1) or 1) > 1
    if colour:
        arr = arr.mean(axis=-1)
    if arr.ndim == 3:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got pixel data of shape {arr.shape}")
    windowed = (
        ds.get("WindowCenter", None) not in (None, "")
        and ds.get("WindowWidth", None) not in (None, "")
        and _first(ds.WindowWidth) > 1.0
    )
    if colour or not (ds.get("VOILUTSequence") or windowed):
        values = np.asarray(arr if colour else _luts()[0](arr, ds), dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        out = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    else:
        apply_modality_lut, apply_voi_lut = _luts()
        modality = np.asarray(apply_modality_lut(arr, ds))
        if ds.get("VOILUTSequence") and modality.dtype.kind == "f":  # a LUT is indexed by stored integers
            modality = np.rint(modality).astype(np.int64)
        with np.errstate(over="ignore"):
            values = np.asarray(apply_voi_lut(modality, ds, index=0), dtype=np.float64)
        lo, hi = _voi_range(ds, apply_voi_lut)
        out = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
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
    except (
        pydicom.errors.InvalidDicomError,
        AttributeError,
        KeyError,
        TypeError,
        ValueError,
        RuntimeError,
        NotImplementedError,
        OSError,
        EOFError,
    ) as exc:
        raise ValueError(f"cannot read DICOM file {str(path)!r}: {type(exc).__name__}: {exc}") from exc


def register_dicom_reader() -> None:
    """Make FileImageSet (``read_image_file``) read ``.dcm``/``.dicom`` files with ``read_dicom``."""
    for suffix in DICOM_SUFFIXES:
        register_reader(suffix, read_dicom)


register_dicom_reader()
