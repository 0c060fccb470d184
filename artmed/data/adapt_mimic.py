"""MIMIC-CXR-JPG -> artmed's interface: labelled lazy images of one split, and report sentences via the labeler.

Expected under ``root``: ``mimic-cxr-2.0.0-chexpert.csv(.gz)`` (study labels), ``mimic-cxr-2.0.0-split.csv(.gz)``,
optionally ``mimic-cxr-2.0.0-metadata.csv(.gz)`` (view positions, needed only to filter ``views``), and images at
``files/p<first 2 digits>/p<subject_id>/s<study_id>/<dicom_id>.jpg``. Reports (from MIMIC-CXR, at
``files/p../p<subject_id>/s<study_id>.txt``) are read from ``reports_root`` (default ``root``). Images of
studies without a label row are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from artmed.constants import CHEXPERT_LABELS, IMAGE_SIZE
from artmed.data.adapt_reports import reports_to_pool
from artmed.data.dataset import FileImageSet, MedDataset, TextPool
from artmed.data.label_table import check_files_exist, check_uncertain, chexpert_labels, find_table, read_table
from artmed.data.labeler import read_report
from artmed.progress import tqdm

CHEXPERT_TABLE = "mimic-cxr-2.0.0-chexpert"
SPLIT_TABLE = "mimic-cxr-2.0.0-split"
METADATA_TABLE = "mimic-cxr-2.0.0-metadata"
SPLITS = ("train", "validate", "test")


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")


def _cell(row: dict[str, str], column: str, path: Path, number: int) -> str:
    value = (row.get(column) or "").strip()
    if not value:
        raise ValueError(f"{path}: data row {number}, column {column!r} is empty")
    return value


def _split_rows(root: Path, split: str | None) -> tuple[Path, list[tuple[int, dict[str, str]]]]:
    path = find_table(root, SPLIT_TABLE)
    _, rows = read_table(path, ["dicom_id", "study_id", "subject_id", "split"])
    return path, [(i, r) for i, r in enumerate(rows, 1) if split is None or (r["split"] or "").strip() == split]


def mimic_image_path(root: str | Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    """Where MIMIC-CXR-JPG keeps one image."""
    return Path(root) / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}" / f"{dicom_id}.jpg"


def mimic_report_path(root: str | Path, subject_id: str, study_id: str) -> Path:
    """Where MIMIC-CXR keeps one study's free-text report."""
    return Path(root) / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}.txt"


def load_mimic_images(
    root: str | Path,
    split: str | None = "train",
    views: Sequence[str] | None = None,
    image_size: int = IMAGE_SIZE,
    uncertain: str = "keep",
    check_files: bool = False,
) -> FileImageSet:
    """The images of one split (None: all) with their study's CheXpert labels; ``views`` (e.g. ("PA", "AP"))
    keeps only those ``ViewPosition`` values from the metadata table."""
    root = Path(root)
    _check_split(split)
    check_uncertain(uncertain)
    split_path, split_rows = _split_rows(root, split)
    label_path = find_table(root, CHEXPERT_TABLE)
    _, label_rows = read_table(label_path, ["subject_id", "study_id", *CHEXPERT_LABELS])
    study_row = {
        (_cell(r, "subject_id", label_path, i), _cell(r, "study_id", label_path, i)): i - 1
        for i, r in enumerate(label_rows, 1)
    }
    view_of: dict[str, str] = {}
    wanted: set[str] = set()
    if views is not None:
        meta_path = find_table(root, METADATA_TABLE)
        _, meta_rows = read_table(meta_path, ["dicom_id", "ViewPosition"])
        view_of = {(r["dicom_id"] or "").strip(): (r["ViewPosition"] or "").strip().upper() for r in meta_rows}
        wanted = {v.upper() for v in views}
    paths, picked = [], []
    for i, r in split_rows:
        subject, study = _cell(r, "subject_id", split_path, i), _cell(r, "study_id", split_path, i)
        dicom_id = _cell(r, "dicom_id", split_path, i)
        k = study_row.get((subject, study))
        if k is None or (views is not None and view_of.get(dicom_id) not in wanted):
            continue
        paths.append(mimic_image_path(root, subject, study, dicom_id))
        picked.append(k)
    if not paths:
        raise ValueError(f"{root}: no labelled images for split={split!r}, views={views!r}")
    labels = chexpert_labels([label_rows[k] for k in picked], label_path, uncertain, [k + 1 for k in picked])
    if check_files:
        check_files_exist(paths, split_path)
    return FileImageSet(paths, labels, image_size)


def load_mimic_reports(
    root: str | Path, split: str | None = "train", reports_root: str | Path | None = None, findings_only: bool = True
) -> TextPool:
    """Sentences of the split's study reports labelled by the rule labeler (FINDINGS/IMPRESSION by default);
    studies without a report file are skipped; a report that is not UTF-8 text is a ValueError naming it."""
    root = Path(root)
    _check_split(split)
    split_path, split_rows = _split_rows(root, split)
    base = Path(reports_root) if reports_root is not None else root
    studies = dict.fromkeys(
        (_cell(r, "subject_id", split_path, i), _cell(r, "study_id", split_path, i)) for i, r in split_rows
    )
    paths = [mimic_report_path(base, subject, study) for subject, study in studies]
    found = [p for p in paths if p.is_file()]
    if not found:
        example = f" (e.g. {str(paths[0])!r})" if paths else ""
        raise ValueError(f"{base}: none of the {len(paths)} report files of split={split!r} exist{example}")
    reports = (read_report(p) for p in tqdm(found, desc="MIMIC reports", leave=False))
    return reports_to_pool(reports, base, findings_only)


def load_mimic(
    root: str | Path,
    split: str | None = "train",
    views: Sequence[str] | None = None,
    reports_root: str | Path | None = None,
    image_size: int = IMAGE_SIZE,
    uncertain: str = "keep",
    check_files: bool = False,
) -> MedDataset:
    """A MedDataset (no zero-shot tasks) of one MIMIC-CXR-JPG split: its images and its report sentences."""
    return MedDataset(
        load_mimic_images(root, split, views, image_size, uncertain, check_files),
        load_mimic_reports(root, split, reports_root),
    )
