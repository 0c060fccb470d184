"""CheXpert (``train.csv`` / ``valid.csv``) -> a lazy labelled ImageSet.

``Path`` cells look like ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``: relative to the
folder that holds the dataset folder, so ``root`` defaults to the CSV's grandparent. Blank labels become 0,
-1 (uncertain) is kept or mapped by ``uncertain`` ("keep", "zeros", "ones").
"""

from __future__ import annotations

from pathlib import Path

from artmed.constants import CHEXPERT_LABELS, IMAGE_SIZE
from artmed.data.dataset import FileImageSet
from artmed.data.label_table import (
    check_files_exist,
    check_uncertain,
    chexpert_labels,
    read_table,
    resolve_path,
    unique_rows,
)


def load_chexpert(
    csv_path: str | Path,
    root: str | Path | None = None,
    image_size: int = IMAGE_SIZE,
    uncertain: str = "keep",
    frontal_only: bool = False,
    check_files: bool = False,
) -> FileImageSet:
    """CheXpert's ``train.csv``/``valid.csv`` as a FileImageSet; ``frontal_only`` keeps "Frontal" views
    (column ``Frontal/Lateral``)."""
    check_uncertain(uncertain)
    required = ["Path", *CHEXPERT_LABELS] + (["Frontal/Lateral"] if frontal_only else [])
    _, rows = read_table(csv_path, required)
    numbered = [
        (i, r)
        for i, r in enumerate(rows, 1)
        if not frontal_only or (r.get("Frontal/Lateral") or "").strip().lower() == "frontal"
    ]
    if not numbered:
        raise ValueError(f"{csv_path}: no {'frontal ' if frontal_only else ''}images listed")
    base = Path(root) if root is not None else Path(csv_path).resolve().parent.parent
    labels = chexpert_labels([r for _, r in numbered], csv_path, uncertain, [i for i, _ in numbered])
    paths = [resolve_path(r["Path"], base, csv_path, i, "Path") for i, r in numbered]
    keep = unique_rows(paths, labels, csv_path, [i for i, _ in numbered])
    paths, labels = [paths[i] for i in keep], labels[keep]
    if check_files:
        check_files_exist(paths, csv_path)
    return FileImageSet(paths, labels, image_size)
