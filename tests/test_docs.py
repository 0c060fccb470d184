"""The README stays short and keeps CI's set-up markers; every relative link in it and in docs/ leads to a file."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 150

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def relative_links(path: Path) -> list[str]:
    """The link and image targets of a Markdown file outside code, without URLs, mail links and bare anchors."""
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    targets = [match.group(1) for match in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^([a-z][a-z0-9+.-]*:|#)", t, re.I)]


def ci_command(marker: str) -> str:
    """What .ci/run's awk reads for a marker: the line two below the marker comment (after the opening fence)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    at = lines.index(f"<!-- {marker} -->")
    assert lines[at + 1].startswith("```"), f"README.md: the line after <!-- {marker} --> must open a code fence"
    return lines[at + 2]


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail into docs/ (at most {MAX_README_LINES})"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    missing = [t for t in relative_links(page) if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_link_check_sees_links_and_skips_code(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        '[a](a.md) ![b](img/b.png "t") [c](https://x.org) [d](#top) `[e](e.md)`\n```\n[f](f.md)\n```\n[g](g.md#part)\n',
        encoding="utf-8",
    )
    assert relative_links(page) == ["a.md", "img/b.png", "g.md#part"]


def test_ci_markers_hold_the_set_up_commands() -> None:
    install, test = ci_command("ci:install"), ci_command("ci:test")
    assert "pip install -c constraints.txt -e " in install and install.rstrip().endswith("artmed run")
    assert "python -m pytest" in test


def test_results_block_lives_in_docs_results() -> None:
    markers = ("<!-- results:begin", "<!-- results:unchecked", "<!-- results:end -->")
    results = (DOCS / "results.md").read_text(encoding="utf-8")
    positions = [results.find(m) for m in markers]
    assert all(results.count(m) == 1 for m in markers), "docs/results.md needs each results marker exactly once"
    assert positions == sorted(positions), f"docs/results.md: results markers out of order: {positions}"
    assert "<!-- results:" not in README.read_text(encoding="utf-8"), "the result tables belong in docs/results.md"


def test_mkdocs_nav_matches_docs_pages() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def entries(node: object) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [e for item in node for e in entries(item)]
        if isinstance(node, dict):
            return [e for value in node.values() for e in entries(value)]
        return []

    nav = entries(config["nav"])
    missing = [page for page in nav if not (DOCS / page).is_file()]
    assert nav and not missing, f"mkdocs.yml nav lists pages missing from docs/: {missing}"
    unlisted = sorted({str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")} - set(nav))
    assert not unlisted, f"docs/ pages missing from mkdocs.yml's nav (mkdocs build --strict fails): {unlisted}"
