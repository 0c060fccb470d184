"""MedCLIP's own data files -> artmed's interface: the training meta-CSV, sentence-label.csv and the COVID/RSNA
zero-shot test metas, plus the binary-task builder and default prompts shared with the RSNA/COVID adapters.

Image paths in a meta-CSV are resolved against ``image_root`` (default: the CSV's folder); images stay on disk.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import numpy as np

from artmed.constants import CHEXPERT_LABELS, IMAGE_SIZE, NUM_LABELS
from artmed.data import dicom as _dicom  # noqa: F401  (registers the .dcm reader)
from artmed.data.dataset import FileImageSet, MedDataset, TextPool, ZeroShotTask
from artmed.data.label_table import (
    check_files_exist,
    check_uncertain,
    chexpert_labels,
    label_matrix,
    open_text,
    read_table,
    resolve_path,
    unique_rows,
)

COVID_CLASSES: tuple[str, str] = ("Normal", "COVID")
RSNA_CLASSES: tuple[str, str] = ("Normal", "Pneumonia")

DEFAULT_PROMPTS: dict[str, dict[str, list[str]]] = {
    "covid": {
        "Normal": [
            "the lungs are clear and the heart size is normal",
            "no acute cardiopulmonary abnormality",
            "normal chest radiograph without focal opacity",
            "clear lungs with no effusion or consolidation",
        ],
        "COVID": [
            "bilateral patchy peripheral opacities from covid-19 pneumonia",
            "multifocal ground glass opacities in both lungs consistent with viral pneumonia",
            "covid-19 pneumonia with diffuse bilateral airspace disease",
            "peripheral and basal predominant opacities typical of covid-19",
        ],
    },
    "rsna": {
        "Normal": [
            "the lungs are clear and the heart size is normal",
            "no acute cardiopulmonary abnormality",
            "normal chest radiograph without focal opacity",
            "clear lungs with no effusion or consolidation",
        ],
        "Pneumonia": [
            "focal airspace consolidation consistent with pneumonia",
            "patchy opacity in the lower lobe compatible with pneumonia",
            "lobar pneumonia with air bronchograms",
            "new airspace opacity representing infection",
        ],
    },
}
"""Default class prompts of the binary zero-shot tasks (our own wording, not MedCLIP's lists)."""

_CLASS_LABEL = {"Normal": "No Finding", "COVID": "Pneumonia", "Pneumonia": "Pneumonia"}


def _line_of(path: str | Path, row: int) -> int:
    """The file line on which 1-based data row ``row`` ends (blank lines skipped, as csv.DictReader does)."""
    with open_text(path) as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for number, _ in enumerate((r for r in reader if r), 1):
            if number == row:
                break
        return reader.line_num


def _read_rows(path: str | Path, required: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a MedCLIP CSV (``read_table``), each with exactly the header's fields: a row with fewer (whose
    cells csv would leave empty, i.e. label 0) or more is a ValueError naming the file, the line and the columns."""
    columns, rows = read_table(path, required)
    for i, row in enumerate(rows, 1):
        missing = [c for c in columns if row.get(c) is None]
        if missing:
            raise ValueError(
                f"{path}: line {_line_of(path, i)} (data row {i}) has fewer fields than the header; "
                f"missing column(s) {missing}"
            )
        if None in row:
            extra = cast("dict[str | None, list[str]]", row)[None]  # csv's restkey: the fields past the header
            raise ValueError(
                f"{path}: line {_line_of(path, i)} (data row {i}) has {len(extra)} field(s) more "
                f"than the header's {len(columns)}: {extra} (a value with a comma must be quoted)"
            )
    return rows


def default_prompts(kind: str) -> dict[str, list[str]]:
    """A copy of the default prompts of task ``kind`` ("covid" or "rsna")."""
    if kind not in DEFAULT_PROMPTS:
        raise ValueError(f"no default prompts for task kind {kind!r}; known: {sorted(DEFAULT_PROMPTS)}")
    return {c: list(p) for c, p in DEFAULT_PROMPTS[kind].items()}


def task_labels(class_names: Sequence[str], targets: np.ndarray) -> np.ndarray:
    """(N, 14) labels for binary-task images: "Normal" -> No Finding, "COVID"/"Pneumonia" -> Pneumonia."""
    labels = np.zeros((len(targets), NUM_LABELS), dtype=np.float32)
    for k, name in enumerate(class_names):
        if name in _CLASS_LABEL:
            labels[np.asarray(targets) == k, CHEXPERT_LABELS.index(_CLASS_LABEL[name])] = 1.0
    return labels


def file_task(
    name: str,
    class_names: Sequence[str],
    paths: Sequence[Path],
    targets: Sequence[int],
    prompts: Mapping[str, list[str]] | None,
    kind: str,
    image_size: int = IMAGE_SIZE,
    check_files: bool = False,
    source: str | Path = "",
) -> ZeroShotTask:
    """A ZeroShotTask over image files; ``prompts`` default to ``DEFAULT_PROMPTS[kind]``."""
    if not paths:
        raise ValueError(f"{source}: task {name!r} has no images")
    if check_files:
        check_files_exist(list(paths), source)
    target_ids = np.asarray(targets, dtype=np.int64)
    images = FileImageSet(list(paths), task_labels(class_names, target_ids), image_size)
    chosen = default_prompts(kind) if prompts is None else prompts
    # ZeroShotTask takes any mapping of prompts (it keeps a dict copy)
    return ZeroShotTask(name, list(class_names), cast("dict[str, list[str]]", chosen), images, target_ids)


def load_medclip_images(
    meta_csv: str | Path,
    image_root: str | Path | None = None,
    image_size: int = IMAGE_SIZE,
    uncertain: str = "keep",
    check_files: bool = False,
) -> FileImageSet:
    """MedCLIP's training meta-CSV (``imgpath`` + the 14 label columns; ``report`` ignored) as a lazy ImageSet."""
    check_uncertain(uncertain)
    rows = _read_rows(meta_csv, ["imgpath", *CHEXPERT_LABELS])
    root = Path(image_root) if image_root is not None else Path(meta_csv).parent
    labels = chexpert_labels(rows, meta_csv, uncertain)
    paths = [resolve_path(r["imgpath"], root, meta_csv, i, "imgpath") for i, r in enumerate(rows, 1)]
    if not paths:
        raise ValueError(f"{meta_csv}: no data rows")
    keep = unique_rows(paths, labels, meta_csv)
    paths, labels = [paths[i] for i in keep], labels[keep]
    if check_files:
        check_files_exist(paths, meta_csv)
    return FileImageSet(paths, labels, image_size)


def load_sentence_labels(csv_path: str | Path) -> TextPool:
    """MedCLIP's ``sentence-label.csv`` (``Reports`` + the 14 labels) as a TextPool; blank-text rows are skipped."""
    rows = _read_rows(csv_path, ["Reports", *CHEXPERT_LABELS])
    numbered = [(i, r) for i, r in enumerate(rows, 1) if (r.get("Reports") or "").strip()]
    if not numbered:
        raise ValueError(f"{csv_path}: no sentences (all 'Reports' cells are blank)")
    labels = chexpert_labels([r for _, r in numbered], csv_path, row_numbers=[i for i, _ in numbered])
    return TextPool([r["Reports"].strip() for _, r in numbered], labels)


def load_binary_meta(
    meta_csv: str | Path,
    class_names: Sequence[str],
    name: str,
    kind: str,
    prompts: Mapping[str, list[str]] | None = None,
    image_root: str | Path | None = None,
    image_size: int = IMAGE_SIZE,
    check_files: bool = False,
    path_column: str = "imgpath",
) -> ZeroShotTask:
    """A meta-CSV with an image path column and one 0/1 column per class (exactly one 1 per row) as a task."""
    rows = _read_rows(meta_csv, [path_column, *class_names])
    root = Path(image_root) if image_root is not None else Path(meta_csv).parent
    onehot = label_matrix(rows, meta_csv, class_names)
    for i, row in enumerate(onehot, 1):
        if not np.isin(row, (0.0, 1.0)).all() or row.sum() != 1.0:
            raise ValueError(
                f"{meta_csv}: data row {i}: columns {list(class_names)} must hold exactly one 1 and "
                f"otherwise 0, got {row.astype(int).tolist()}"
            )
    paths = [resolve_path(r[path_column], root, meta_csv, i, path_column) for i, r in enumerate(rows, 1)]
    keep = unique_rows(paths, onehot, meta_csv)
    return file_task(
        name,
        class_names,
        [paths[i] for i in keep],
        onehot[keep].argmax(axis=1),
        prompts,
        kind,
        image_size,
        check_files,
        meta_csv,
    )


def load_covid_meta(
    meta_csv: str | Path,
    prompts: Mapping[str, list[str]] | None = None,
    image_root: str | Path | None = None,
    image_size: int = IMAGE_SIZE,
    check_files: bool = False,
) -> ZeroShotTask:
    """MedCLIP's ``covid-test-meta.csv`` (``imgpath``, ``Normal``, ``COVID``) as the binary task "covid"."""
    return load_binary_meta(meta_csv, COVID_CLASSES, "covid", "covid", prompts, image_root, image_size, check_files)


def load_rsna_meta(
    meta_csv: str | Path,
    prompts: Mapping[str, list[str]] | None = None,
    image_root: str | Path | None = None,
    image_size: int = IMAGE_SIZE,
    check_files: bool = False,
) -> ZeroShotTask:
    """MedCLIP's ``rsna-test-meta.csv`` (``imgpath``, ``Normal``, ``Pneumonia``) as the binary task "rsna"."""
    return load_binary_meta(meta_csv, RSNA_CLASSES, "rsna", "rsna", prompts, image_root, image_size, check_files)


def load_medclip_dataset(
    train_meta: str | Path,
    sentence_labels: str | Path,
    covid_meta: str | Path | None = None,
    rsna_meta: str | Path | None = None,
    image_root: str | Path | None = None,
    image_size: int = IMAGE_SIZE,
    uncertain: str = "keep",
    check_files: bool = False,
) -> MedDataset:
    """A MedDataset from MedCLIP's files: training images, sentence pool, and the COVID/RSNA tasks given."""
    tasks = {}
    if covid_meta is not None:
        tasks["covid"] = load_covid_meta(covid_meta, None, image_root, image_size, check_files)
    if rsna_meta is not None:
        tasks["rsna"] = load_rsna_meta(rsna_meta, None, image_root, image_size, check_files)
    return MedDataset(
        load_medclip_images(train_meta, image_root, image_size, uncertain, check_files),
        load_sentence_labels(sentence_labels),
        tasks,
    )
