"""CSV label tables of real chest X-ray datasets: reading (.csv/.csv.gz), strict CheXpert label parsing, image paths.

Every adapter reads its metadata through here so bad input fails the same way: a missing column names the file
and the column(s); a bad label value names the file, the 1-based data row and the column; a missing image names
the path. An image listed on several rows is refused when the rows' labels differ (naming the file and the rows);
rows repeating the same labels are kept once, with one warning per file (``unique_rows``).
"""

from __future__ import annotations

import csv
import gzip
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from artmed.constants import CHEXPERT_LABELS

UNCERTAIN_POLICIES = ("keep", "zeros", "ones")
"""What to do with -1 (uncertain) labels: keep them, map them to 0 (U-Zeros) or to 1 (U-Ones), as in CheXpert."""

_BLANKS = {"", "nan"}
_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0}


def find_table(root: str | Path, stem: str) -> Path:
    """``root/stem.csv`` or ``root/stem.csv.gz``, whichever exists; ValueError naming both when neither does."""
    root = Path(root)
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (root / name).is_file():
            return root / name
    raise ValueError(f"{root}: found neither {stem}.csv nor {stem}.csv.gz")


def open_text(path: str | Path) -> TextIO:
    """Open a text/CSV file for reading (gunzipped when it ends in .gz), UTF-8 with an optional BOM."""
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8-sig", newline="")


def read_table(path: str | Path, required: Sequence[str] = ()) -> tuple[list[str], list[dict[str, str]]]:
    """(column names, rows) of a CSV (.csv or .csv.gz, UTF-8, optional BOM); ValueError naming the file and any
    ``required`` columns it lacks."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CSV file {str(path)!r} does not exist")
    csv.field_size_limit(2**31 - 1)
    try:
        with open_text(path) as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read CSV file {str(path)!r}: {exc}") from exc
    if not columns:
        raise ValueError(f"CSV file {str(path)!r} has no header row")
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"CSV file {str(path)!r} lacks column(s) {missing}; it has {columns}")
    return columns, rows


def pick_column(columns: Sequence[str], candidates: Sequence[str], path: str | Path, what: str) -> str:
    """The first of ``candidates`` (case-insensitive) among ``columns``; ValueError naming the file otherwise."""
    lower = {c.lower(): c for c in columns}
    for name in candidates:
        if name.lower() in lower:
            return lower[name.lower()]
    raise ValueError(
        f"CSV file {str(path)!r} has no {what} column (looked for {list(candidates)}); it has {list(columns)}"
    )


def parse_label(value: str | None, path: str | Path, row: int, column: str) -> float:
    """One CheXpert label cell: 1, 0, -1 (also as 1.0 ...) or blank/NaN (-> 0); anything else is a ValueError
    naming the file, the 1-based data row and the column."""
    text = (value or "").strip()
    if text.lower() in _BLANKS:
        return 0.0
    if text in _VALUES:
        return _VALUES[text]
    raise ValueError(f"{path}: data row {row}, column {column!r}: label value {text!r} is not 1, 0, -1 or blank")


def check_uncertain(policy: str) -> str:
    """Validate an uncertainty policy name."""
    if policy not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {policy!r}")
    return policy


def apply_uncertain(labels: np.ndarray, policy: str) -> np.ndarray:
    """Apply an uncertainty policy to a label matrix (a new array)."""
    out = np.array(labels, dtype=np.float32)
    if check_uncertain(policy) != "keep":
        out[out == -1.0] = 0.0 if policy == "zeros" else 1.0
    return out


def label_matrix(
    rows: Sequence[dict[str, str]],
    path: str | Path,
    columns: Sequence[str] = CHEXPERT_LABELS,
    row_numbers: Sequence[int] | None = None,
) -> np.ndarray:
    """(N, len(columns)) float32 labels parsed strictly from ``rows`` (``row_numbers``: 1-based data rows for
    error messages, default 1..N)."""
    numbers = range(1, len(rows) + 1) if row_numbers is None else row_numbers
    out = np.zeros((len(rows), len(columns)), dtype=np.float32)
    for i, (row, number) in enumerate(zip(rows, numbers)):
        for j, column in enumerate(columns):
            out[i, j] = parse_label(row.get(column), path, number, column)
    return out


def chexpert_labels(
    rows: Sequence[dict[str, str]], path: str | Path, uncertain: str = "keep", row_numbers: Sequence[int] | None = None
) -> np.ndarray:
    """The (N, 14) CheXpert label matrix of ``rows`` (columns named as in CHEXPERT_LABELS), policy applied."""
    check_uncertain(uncertain)
    return apply_uncertain(label_matrix(rows, path, CHEXPERT_LABELS, row_numbers), uncertain)


def resolve_path(value: str, root: Path, path: str | Path, row: int, column: str) -> Path:
    """An image path cell resolved against ``root`` (absolute paths kept); ValueError naming the row when empty."""
    text = (value or "").strip()
    if not text:
        raise ValueError(f"{path}: data row {row}, column {column!r}: empty image path")
    p = Path(text).expanduser()
    return p if p.is_absolute() else root / p


def check_files_exist(paths: Sequence[Path], source: str | Path) -> None:
    """ValueError naming the first missing image (and how many are missing) listed by ``source``."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ValueError(
            f"{source}: image file {str(missing[0])!r} does not exist "
            f"({len(missing)} of {len(paths)} listed images are missing)"
        )


def unique_rows(
    paths: Sequence[Path], labels: np.ndarray, source: str | Path, row_numbers: Sequence[int] | None = None
) -> np.ndarray:
    """Indices of ``paths`` to keep, each image once: an image listed on several rows with different ``labels`` is a
    ValueError naming ``source`` and the 1-based data rows (it would be trained on once per row, each time with
    another label); rows repeating one image with the same labels are kept once (the first), with one warning."""
    numbers = list(row_numbers) if row_numbers is not None else list(range(1, len(paths) + 1))
    first: dict[Path, int] = {}
    repeats: dict[Path, list[int]] = {}
    for i, path in enumerate(paths):
        if first.setdefault(path, i) != i:
            repeats.setdefault(path, [first[path]]).append(i)
    if not repeats:
        return np.arange(len(paths))
    labels = np.asarray(labels)
    for path, rows in repeats.items():
        if any(not np.array_equal(labels[rows[0]], labels[k], equal_nan=True) for k in rows[1:]):
            shown = "; ".join(f"row {numbers[k]}: {_positives(labels[k])}" for k in rows)
            raise ValueError(
                f"{source}: image {str(path)!r} is listed on data rows {[numbers[k] for k in rows]} with "
                f"different labels ({shown}); keep one row per image"
            )
    dropped = sum(len(rows) - 1 for rows in repeats.values())
    path, rows = next(iter(repeats.items()))
    warnings.warn(
        f"{source}: {len(repeats)} image(s) are listed on several data rows with the same labels (e.g. "
        f"{str(path)!r} on rows {[numbers[k] for k in rows]}); each is used once ({dropped} row(s) left out)",
        stacklevel=3,
    )
    repeated = {k for rows in repeats.values() for k in rows[1:]}
    return np.array([i for i in range(len(paths)) if i not in repeated], dtype=np.int64)


def _positives(row: np.ndarray) -> str:
    """A label row as its non-zero CheXpert labels (``Edema=1, Pneumonia=-1``), else its values."""
    if len(row) != len(CHEXPERT_LABELS):
        return str(np.asarray(row).tolist())
    return ", ".join(f"{CHEXPERT_LABELS[j]}={row[j]:g}" for j in np.flatnonzero(row)) or "no label set"
