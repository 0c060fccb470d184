"""CheXpert-style rule labeler: radiology report text -> sentence-level 14-d labels (1, 0, -1), pure Python.

The rules (cue phrases, mention finding, negation/uncertainty scopes, sentence splitting, labelling a sentence or
report, and the decisions they follow) live in ``artmed.data.labeler_rules`` and are re-exported here; this module
reads reports (folders of .txt files, CSVs; strictly as UTF-8), writes MedCLIP's ``sentence-label.csv`` and is the
``artmed label`` command line.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import gzip
import itertools
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from artmed.constants import CHEXPERT_LABELS
from artmed.data.label_table import open_text
from artmed.data.labeler_rules import (
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    extract_findings,
    label_report,
    label_sentence,
    report_labels,
    sentence_labels,
    split_sentences,
)
from artmed.files import atomic_file
from artmed.progress import tqdm

__all__ = [
    "NEGATIVE",
    "POSITIVE",
    "UNCERTAIN",
    "check_output",
    "extract_findings",
    "iter_reports",
    "label_report",
    "label_sentence",
    "main",
    "read_report",
    "report_labels",
    "sentence_labels",
    "split_sentences",
    "write_sentence_labels",
]


# ----- sentence-label.csv -----

_REPORT_COLUMNS = ("report", "reports", "text", "findings", "impression")


def _report_columns(fieldnames: Sequence[str], column: str | None, path: Path) -> list[str]:
    if column is not None:
        if column not in fieldnames:
            raise ValueError(f"{path}: no column {column!r}; columns are {list(fieldnames)}")
        return [column]
    lower = {name.strip().lower(): name for name in fieldnames}
    for name in ("report", "reports", "text"):
        if name in lower:
            return [lower[name]]
    found = [lower[name] for name in ("findings", "impression") if name in lower]
    if not found:
        raise ValueError(
            f"{path}: no report column (looked for {', '.join(_REPORT_COLUMNS)}, any case); "
            f"columns are {list(fieldnames)}"
        )
    return found


_CHUNK = 1 << 20
"""Bytes read at a time when looking for where a file stops being UTF-8 text."""


def _not_text(path: Path, chunks: Iterable[bytes]) -> ValueError:
    """The error for a file that is not UTF-8 text, naming it and the byte offset of its first NUL byte (a binary
    file) or, failing that, of its first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, bad = 0, ""
    for chunk in itertools.chain(chunks, [b""]):
        nul = chunk.find(b"\0")
        if nul >= 0:
            return ValueError(f"{path}: binary file (NUL byte at byte offset {offset + nul}), not a text report")
        if not bad:
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                bad = f": byte 0x{exc.object[exc.start]:02x} at byte offset {offset - pending + exc.start}"
        offset += len(chunk)
    return ValueError(
        f"{path}: not UTF-8 text{bad}; convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8 OLD > NEW for a Latin-1 file)"
    )


def _raw_chunks(path: Path) -> Iterator[bytes]:
    """The bytes of a file (gunzipped when it ends in .gz), ``_CHUNK`` at a time."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        yield from iter(lambda: fh.read(_CHUNK), b"")


def read_report(path: str | Path) -> str:
    """One report file as text: strict UTF-8 (a leading BOM dropped); ValueError naming the file and the byte offset
    for a binary file (NUL bytes) or one in another encoding."""
    path = Path(path)
    data = path.read_bytes()
    if b"\0" not in data:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError:
            pass
    raise _not_text(path, [data])


def _text_lines(path: Path) -> Iterator[str]:
    """The lines of a CSV (.csv/.csv.gz) read strictly as UTF-8, for the csv module; ValueError as ``read_report``."""
    try:
        with open_text(path) as fh:
            for line in fh:
                if "\0" in line:
                    raise _not_text(path, _raw_chunks(path))
                yield line
    except UnicodeDecodeError:
        raise _not_text(path, _raw_chunks(path)) from None


def iter_reports(source: str | Path, column: str | None = None) -> Iterator[str]:
    """Report texts from a folder of .txt files (recursive, sorted), one .txt file, or a CSV (.csv/.csv.gz) with a
    report column (autodetected: report, Reports, text, or findings + impression; or ``column``). Files are read
    strictly as UTF-8: a binary file or one in another encoding is a ValueError naming it (``read_report``)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise ValueError(f"{path}: folder holds no .txt reports")
        for f in tqdm(files, desc="reports", leave=False):
            yield read_report(f)
    elif not path.exists():
        raise ValueError(f"report source {str(path)!r} does not exist")
    elif path.suffix.lower() == ".txt":
        yield read_report(path)
    elif path.name.lower().endswith((".csv", ".csv.gz")):
        csv.field_size_limit(2**31 - 1)
        reader = csv.DictReader(_text_lines(path))
        if not reader.fieldnames:
            raise ValueError(f"{path}: CSV has no header row")
        cols = _report_columns(reader.fieldnames, column, path)
        for row in tqdm(reader, desc="reports", leave=False):
            yield "\n\n".join(row[c] for c in cols if row.get(c))
    else:
        raise ValueError(f"{path}: expected a folder of .txt reports, a .txt file or a .csv file")


def check_output(source: str | Path, out_csv: str | Path) -> None:
    """ValueError naming ``out_csv`` when labels must not or cannot be written there: it is the report source itself
    or lies in the source folder (it would overwrite or join the reports), is a folder, or its folder cannot be
    created or written."""
    src, out = Path(source), Path(out_csv)
    target = out.resolve()
    if out.is_dir():
        raise ValueError(
            f"output {str(out)!r} is a folder; give a file path such as {str(out / 'sentence-label.csv')!r}"
        )
    if src.is_dir():
        if target.is_relative_to(src.resolve()) or (
            out.is_file() and out.stat().st_nlink > 1 and any(target.samefile(f) for f in src.rglob("*.txt"))
        ):
            raise ValueError(
                f"output {str(out)!r} lies in the report folder {str(src)!r}, where it would overwrite "
                f"or join the reports; write it elsewhere"
            )
    elif src.exists() and (target == src.resolve() or (out.exists() and out.samefile(src))):
        raise ValueError(
            f"output {str(out)!r} is the report source {str(src)!r}, which labelling would overwrite; "
            f"write it elsewhere"
        )
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"cannot create the folder of output {str(out)!r}: {str(folder)!r} is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write output {str(out)!r}: no write permission in {str(folder)!r}")
    if out.exists() and not os.access(out, os.W_OK):
        raise ValueError(f"cannot overwrite output {str(out)!r}: it is read-only")


def write_sentence_labels(
    source: str | Path, out_csv: str | Path, column: str | None = None, findings_only: bool = True
) -> int:
    """Label every sentence of the reports in ``source`` and write MedCLIP's ``sentence-label.csv`` (``Reports`` +
    the 14 labels, sentences de-duplicated case-insensitively); return the number of rows written. ``out_csv`` is
    checked (``check_output``) before any report is read.

    ``findings_only``: keep only the FINDINGS/IMPRESSION sections of reports that have such headers.
    """
    check_output(source, out_csv)
    sentences, labels = sentence_labels(iter_reports(source, column), findings_only)
    with atomic_file(out_csv) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:  # never a torn table
        writer = csv.writer(fh)
        writer.writerow(["Reports", *CHEXPERT_LABELS])
        writer.writerows([s, *(int(v) for v in row)] for s, row in zip(sentences, labels))
    return len(sentences)


def main(argv: Sequence[str] | None = None) -> int:
    """``artmed label SRC OUT.csv``: write MedCLIP's sentence-label.csv from a report folder or CSV."""
    parser = argparse.ArgumentParser(
        prog="artmed label",
        description="Label report sentences with CheXpert-style rules and write MedCLIP's sentence-label.csv.",
    )
    parser.add_argument("source", help="folder of .txt reports (searched recursively) or a CSV with a report column")
    parser.add_argument("out_csv", help="output CSV (Reports + the 14 CheXpert labels)")
    parser.add_argument("--column", default=None, help="report column of a CSV source (default: autodetect)")
    parser.add_argument(
        "--all-sections",
        action="store_true",
        help="label every section, not only FINDINGS/IMPRESSION when a report has those headers",
    )
    args = parser.parse_args(argv)
    try:
        n = write_sentence_labels(args.source, args.out_csv, column=args.column, findings_only=not args.all_sections)
    except (ValueError, OSError) as exc:
        print(f"artmed label: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} labelled sentences to {args.out_csv}")
    return 0
