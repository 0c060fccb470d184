"""COVID-19 chest X-ray collections -> the binary task "covid" (classes "Normal", "COVID").

Two layouts: a folder with one sub-folder per class (``Normal``/``normal``; ``COVID``/``COVID-19``/``covid19``,
any case; images directly inside or in an ``images`` sub-folder, as in the COVID-19 Radiography Database), or a
CSV with an image path column (``imgpath``/``path``/``filename``/``image``/``file``) and either one-hot
``Normal``/``COVID`` columns (MedCLIP's format) or a class-name column (``label``/``class``/``finding``).
Images may be PNG/JPG or DICOM.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from artmed.constants import IMAGE_SIZE
from artmed.data import dicom as _dicom  # noqa: F401  (registers the .dcm reader)
from artmed.data.adapt_medclip import COVID_CLASSES, file_task, load_binary_meta
from artmed.data.dataset import ZeroShotTask
from artmed.data.label_table import pick_column, read_table, resolve_path

CLASS_ALIASES: dict[str, tuple[str, ...]] = {
    "Normal": ("normal",),
    "COVID": ("covid", "covid-19", "covid19", "covid_19"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
PATH_COLUMNS = ("imgpath", "path", "filename", "image", "file")
LABEL_COLUMNS = ("label", "class", "finding")


def _from_folders(root: Path) -> tuple[list[Path], list[int]]:
    folders = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    paths: list[Path] = []
    targets: list[int] = []
    for k, cls in enumerate(COVID_CLASSES):
        match = next((folders[a] for a in CLASS_ALIASES[cls] if a in folders), None)
        if match is None:
            raise ValueError(f"{root}: no folder for class {cls!r} (looked for {list(CLASS_ALIASES[cls])}, any case)")
        inner = match / "images" if (match / "images").is_dir() else match
        files = sorted(p for p in inner.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{inner}: no images ({', '.join(IMAGE_SUFFIXES)}) for class {cls!r}")
        paths += files
        targets += [k] * len(files)
    return paths, targets


def _class_of(value: str, csv_path: Path, row: int, column: str) -> int:
    text = (value or "").strip().lower()
    for k, cls in enumerate(COVID_CLASSES):
        if text in CLASS_ALIASES[cls]:
            return k
    raise ValueError(
        f"{csv_path}: data row {row}, column {column!r}: class {value!r} is not one of "
        f"{[a for cls in COVID_CLASSES for a in CLASS_ALIASES[cls]]}"
    )


def load_covid(
    source: str | Path,
    prompts: Mapping[str, list[str]] | None = None,
    image_root: str | Path | None = None,
    image_size: int = IMAGE_SIZE,
    check_files: bool = False,
    name: str = "covid",
) -> ZeroShotTask:
    """A COVID-19 class-folder tree or CSV as a ZeroShotTask; CSV paths resolve against ``image_root``
    (default: the CSV's folder)."""
    path = Path(source)
    if path.is_dir():
        paths, targets = _from_folders(path)
        return file_task(name, COVID_CLASSES, paths, targets, prompts, "covid", image_size, check_files, path)
    if not path.is_file():
        raise ValueError(f"COVID-19 source {str(path)!r} does not exist")
    columns, rows = read_table(path)
    path_col = pick_column(columns, PATH_COLUMNS, path, "image path")
    if all(c in columns for c in COVID_CLASSES):
        return load_binary_meta(
            path, COVID_CLASSES, name, "covid", prompts, image_root, image_size, check_files, path_column=path_col
        )
    label_col = pick_column(columns, LABEL_COLUMNS, path, "class (or one-hot Normal/COVID)")
    root = Path(image_root) if image_root is not None else path.parent
    paths = [resolve_path(r[path_col], root, path, i, path_col) for i, r in enumerate(rows, 1)]
    targets = [_class_of(r[label_col], path, i, label_col) for i, r in enumerate(rows, 1)]
    return file_task(name, COVID_CLASSES, paths, targets, prompts, "covid", image_size, check_files, path)
