"""Report text -> TextPool through the rule labeler: report folders/CSVs and Open-i (IU X-ray) XML files.

Open-i text is licensed non-derivatively: artmed never ships it; ``load_openi_reports`` reads a user's own copy.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

from artmed.data.dataset import TextPool
from artmed.data.labeler import iter_reports, sentence_labels
from artmed.progress import tqdm

OPENI_SECTIONS: tuple[str, ...] = ("FINDINGS", "IMPRESSION")


def reports_to_pool(reports: Iterable[str], source: str | Path, findings_only: bool = True) -> TextPool:
    """Label the sentences of ``reports`` (de-duplicated) into a TextPool; ValueError naming ``source`` if none."""
    sentences, labels = sentence_labels(reports, findings_only)
    if not sentences:
        raise ValueError(f"{source}: no report sentences found")
    return TextPool(sentences, labels)


def load_reports(source: str | Path, column: str | None = None, findings_only: bool = True) -> TextPool:
    """A folder of .txt reports (recursive), a .txt file or a CSV with a report column, labelled into a TextPool."""
    return reports_to_pool(iter_reports(source, column), source, findings_only)


def read_openi_report(xml_path: str | Path, sections: Sequence[str] = OPENI_SECTIONS) -> str:
    """The ``AbstractText`` paragraphs of an Open-i report XML whose ``Label`` is in ``sections``, in file order
    (blank paragraphs skipped); ValueError naming the file when it is not well-formed XML."""
    wanted = {s.upper() for s in sections}
    try:
        tree = ET.parse(xml_path)
    except (ET.ParseError, OSError) as exc:
        raise ValueError(f"cannot parse Open-i report {str(xml_path)!r}: {exc}") from exc
    parts = [
        "".join(el.itertext()).strip()
        for el in tree.iter()
        if el.tag.rsplit("}", 1)[-1] == "AbstractText" and (el.get("Label") or "").strip().upper() in wanted
    ]
    return "\n\n".join(p for p in parts if p)


def load_openi_reports(folder: str | Path, sections: Sequence[str] = OPENI_SECTIONS) -> TextPool:
    """Every ``*.xml`` report under ``folder`` (recursive): its FINDINGS/IMPRESSION text labelled into a TextPool."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"Open-i report folder {str(root)!r} does not exist")
    files = sorted(root.rglob("*.xml"))
    if not files:
        raise ValueError(f"{root}: no .xml report files found")
    reports = (read_openi_report(f, sections) for f in tqdm(files, desc="Open-i reports", leave=False))
    return reports_to_pool(reports, root, findings_only=False)
