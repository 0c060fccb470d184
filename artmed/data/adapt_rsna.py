"""RSNA Pneumonia Detection (``stage_2_train_labels.csv``: patientId, box, Target) -> the binary task "rsna".

A patient with several boxes has several rows; its target is their maximum. Images are ``<patientId><suffix>``
in ``image_dir`` (default ``stage_2_train_images`` beside the CSV, else the CSV's folder), DICOM or PNG/JPG;
``suffix=None`` picks the first of .dcm, .png, .jpg, .jpeg that exists for the first patient.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from artmed.constants import IMAGE_SIZE
from artmed.data import dicom as _dicom  # noqa: F401  (registers the .dcm reader)
from artmed.data.adapt_medclip import RSNA_CLASSES, file_task
from artmed.data.dataset import ZeroShotTask
from artmed.data.label_table import read_table

RSNA_SUFFIXES = (".dcm", ".png", ".jpg", ".jpeg")


def _targets(labels_csv: str | Path) -> dict[str, int]:
    _, rows = read_table(labels_csv, ["patientId", "Target"])
    targets: dict[str, int] = {}
    for i, row in enumerate(rows, 1):
        pid = (row["patientId"] or "").strip()
        if not pid:
            raise ValueError(f"{labels_csv}: data row {i}, column 'patientId' is empty")
        value = (row["Target"] or "").strip()
        if value not in ("0", "1", "0.0", "1.0"):
            raise ValueError(f"{labels_csv}: data row {i}, column 'Target': value {value!r} is not 0 or 1")
        targets[pid] = max(targets.get(pid, 0), int(float(value)))
    if not targets:
        raise ValueError(f"{labels_csv}: no data rows")
    return targets


def _suffix(image_dir: Path, first_id: str, suffix: str | None) -> str:
    if suffix is not None:
        if not suffix.startswith("."):
            raise ValueError(f"suffix must start with '.', got {suffix!r}")
        return suffix
    for candidate in RSNA_SUFFIXES:
        if (image_dir / f"{first_id}{candidate}").is_file():
            return candidate
    tried = ", ".join(str(image_dir / f"{first_id}{s}") for s in RSNA_SUFFIXES)
    raise ValueError(f"cannot find the image of patient {first_id!r}; tried {tried}")


def load_rsna(
    labels_csv: str | Path,
    image_dir: str | Path | None = None,
    suffix: str | None = None,
    prompts: Mapping[str, list[str]] | None = None,
    image_size: int = IMAGE_SIZE,
    check_files: bool = False,
    name: str = "rsna",
) -> ZeroShotTask:
    """RSNA pneumonia labels and images as a ZeroShotTask with classes ("Normal", "Pneumonia")."""
    targets = _targets(labels_csv)
    if image_dir is None:
        beside = Path(labels_csv).parent / "stage_2_train_images"
        image_dir = beside if beside.is_dir() else Path(labels_csv).parent
    image_dir = Path(image_dir)
    ext = _suffix(image_dir, next(iter(targets)), suffix)
    paths = [image_dir / f"{pid}{ext}" for pid in targets]
    return file_task(
        name, RSNA_CLASSES, paths, list(targets.values()), prompts, "rsna", image_size, check_files, labels_csv
    )
