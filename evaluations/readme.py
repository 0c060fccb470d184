"""The published result tables (docs/results.md), written from a study's output folder and checked against a fresh run.

``python -m artmed.evaluations.readme artmed-output`` replaces the block between the ``results:begin`` and
``results:end`` markers of docs/results.md (``--readme`` names another file) with tables rendered from
``models_summary.json``, ``defenses_summary.json`` and ``defenses.json``; ``--check`` renders the same tables and
compares them with the file's: the text must be equal, every number of the *checked* part within its tolerance and
no verdict reversed, else it lists each difference and exits 1 (CI runs it after the README's ``artmed run``).

The checked part holds the attacked models whose backdoor comes from poisoned training (CA, ASR, ASR_all, RA, and
BadDist's cosines) and the verdict table (``artmed.evaluations.verdicts``): what each defense shows over the seeds.
A verdict is checked as the verdict rules guarantee across machines: a decided verdict ("detects", "does not
detect", "mitigates", ...) must not turn into its opposite; it may weaken to "inconclusive", and an inconclusive one
may be decided on another machine (one seed's model can change whole between machines: between a 2-core AMD EPYC
with AVX-512 and one with AVX2 only, same code and seeds, one BadDist + BadMatch model moved from ASR 0.99 to 0.74 and
SPECTRE's catch on it from all 20 poisoned images to none). The per-seed values are shown, not compared. After the
``UNCHECKED`` marker come BadDist without poisoned data and every defense's metric table, written from the same run
and not compared: no tolerance short of the metric's range absorbs such a change.

Numbers: each column has a per-seed drift d (the larger of ``tolerance``, default 0.1, and ``verdicts.DRIFT``: 0.1
for CA and the cosines, 0.3 for ASR, ASR_all and RA, measured 0.25 between the two machines above). For n seeds a
mean moves at most d; a sample standard deviation, ||Δx||/sqrt(n-1) at most, by at most d·sqrt(n/(n-1)) (≤ 1.23 d
for n ≥ 3); a 95 % bound mean ± t·std/sqrt(n), clipped to the metric's range or not, at most d + t·d·sqrt(n/(n-1))
/sqrt(n) (t = 4.30 for n = 3: 4.05 d). Rounding adds half the last digit to each.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scipy import stats

from artmed.evaluations.aggregate import (
    SHOWN_DETECTION_METRICS,
    SHOWN_INPUT_METRICS,
    SHOWN_MITIGATION_METRICS,
    SHOWN_MODEL_METRICS,
    format_summary,
)
from artmed.evaluations.report import read_table
from artmed.evaluations.verdicts import DRIFT, RULES, describe, format_verdicts, verdicts

__all__ = ["BEGIN", "END", "UNCHECKED", "DEFAULT_TOLERANCE", "RESULTS", "render", "update", "check"]

BEGIN = "<!-- results:begin: written by `python -m artmed.evaluations.readme artmed-output`, checked by CI -->"
END = "<!-- results:end -->"
UNCHECKED = "<!-- results:unchecked: these numbers move between x86 machines; the CI check stops here -->"
RESULTS = "docs/results.md"
"""The file holding the results block, relative to the repository root."""
DEFAULT_TOLERANCE = 0.1
"""d: the per-seed change between x86 machines accepted on the attacked models' metrics. Measured with the default
study run twice on one machine, with AVX-512 and with AVX2 kernels (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA,
MKL_ENABLE_INSTRUCTIONS): largest per-seed change CA 0.025, ASR / RA 0.08, ASR_all 0.04, cosines 0.005. The
defenses' metrics take theirs from ``artmed.evaluations.verdicts.DRIFT``."""

_CELL = re.compile(r"^(-?\d+\.\d+)(?: ± (\d+\.\d+))?(?: \[(-?\d+\.\d+), (-?\d+\.\d+)\])?$")


def render(output_dir: str | Path) -> str:
    """The results block (markers included) for the study in ``output_dir``."""
    out = Path(output_dir)
    models = _table(out / "models_summary.json")
    defenses = _table(out / "defenses_summary.json", required=False)
    per_seed = _table(out / "defenses.json", required=False)
    seeds = sorted({int(s) for row in models for s in str(row.get("seeds") or "").split()})
    keys = ("attack", "trigger", "percent_poison")
    parts = [
        BEGIN,
        "",
        f"Attacked models, mean ± std over seeds {seeds} and the 95 % t-interval of the mean (kept inside the "
        "metric's range); cos = the BadDist encoder's cosine to the base encoder on held-out clean / triggered "
        "test images:",
        "",
        format_summary([r for r in models if r.get("attack") != "baddist"], keys, SHOWN_MODEL_METRICS, digits=3),
    ]
    found = verdicts(per_seed)
    if found:
        parts += [
            "",
            f"What each defense shows over the seeds (`artmed.evaluations.verdicts`: {describe()}; per seed: "
            "the deciding statistic; checked: no verdict reversed):",
            "",
            format_verdicts(found),
        ]
    parts += [
        "",
        UNCHECKED,
        "",
        "Not stable across machines (see `artmed.evaluations.readme`), so not checked: BadDist alone (no "
        "poisoned data),",
        "",
        format_summary([r for r in models if r.get("attack") == "baddist"], keys, SHOWN_MODEL_METRICS, digits=3),
    ]
    parts += _defense_tables(
        defenses,
        "the detection defenses on the training set (tpr_at_fpr5: TPR of the "
        "defense's scores at 5 % FPR; tpr / fpr: of the samples it flags; unexamined: "
        "rows in groups too small to analyse),",
    )
    return "\n".join(parts + ["", END])


def _defense_tables(rows: list[dict[str, Any]], detection_caption: str) -> list[str]:
    """The detection, mitigation and input-screen tables of ``rows`` (summary rows), each only when it has rows."""
    parts: list[str] = []
    tables = (
        ("fpr", detection_caption, SHOWN_DETECTION_METRICS),
        ("ca_after", "the mitigations (the repaired model, same test set),", SHOWN_MITIGATION_METRICS),
        ("far_frr1", "the input screens (clean vs triggered test images; FAR at FRR 1 % / 5 %),", SHOWN_INPUT_METRICS),
    )
    for marker, caption, metrics in tables:
        chosen = [r for r in rows if r.get(marker) is not None]
        if chosen:
            parts += ["", caption, "", format_summary(chosen, ("attack", "defense"), metrics, digits=3)]
    return parts


def update(readme: str | Path, output_dir: str | Path) -> Path:
    """Replace the results block of ``readme`` (docs/results.md) with ``render(output_dir)``."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    start, stop = _block(text, path)
    path.write_text(text[:start] + render(output_dir) + text[stop:], encoding="utf-8")
    return path


def check(readme: str | Path, output_dir: str | Path, tolerance: float = DEFAULT_TOLERANCE) -> list[str]:
    """Differences between the results block of ``readme`` (docs/results.md) and a fresh render of ``output_dir``
    (empty: they agree)."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    start, stop = _block(text, path)
    rendered = render(output_dir)
    ours, fresh = text[start:stop].splitlines(), rendered.splitlines()
    if UNCHECKED not in ours:
        return [f"the results block of {path} has no {UNCHECKED!r} line: rewrite it"]
    ours, fresh = ours[: ours.index(UNCHECKED)], fresh[: fresh.index(UNCHECKED)]
    if len(ours) != len(fresh):
        return [f"the results block of {path} has {len(ours)} checked lines, a fresh render {len(fresh)}"]
    problems: list[str] = []
    header: list[str] = []
    for number, (old, new) in enumerate(zip(ours, fresh), start=1):
        old_cells, new_cells = _cells(old), _cells(new)
        if len(old_cells) != len(new_cells):
            problems.append(f"line {number}: {old!r} != {new!r}")
            continue
        if len(new_cells) == 1 or new_cells[0] == "attack" or set(new) <= set("|-: "):
            header = new_cells if new_cells[0] == "attack" else header
            if old != new:
                problems.append(f"line {number}: text differs ({path.name} {old!r}, fresh run {new!r})")
            continue
        row = dict(zip(header, new_cells))
        n = int(row["n"]) if row.get("n", "").isdigit() else 1
        where = f"line {number} ({' / '.join(new_cells[: header.index('n')] if 'n' in header else new_cells[:1])})"
        for column, a, b in zip(header, old_cells, new_cells):
            if "verdict" in header:
                problem = _compare_verdict(column, a, b)
            else:
                problem = _compare(a, b, _limits(max(tolerance, DRIFT.get(column, 0.0)), n))
            if problem:
                problems.append(f"{where}: {column}: {problem} ({path.name} {a!r}, fresh run {b!r})")
    return problems


_OPPOSITE = {**{rule.yes: rule.no for rule in RULES.values()}, **{rule.no: rule.yes for rule in RULES.values()}}
"""Each decided verdict's opposite: the one change between machines the verdict rules rule out."""


def _compare_verdict(column: str, old: str, new: str) -> str | None:
    """A verdict-table cell: the per-seed values may move, a verdict may not reverse, every other cell is text."""
    if column == "per seed":
        return None
    if column == "verdict":
        return f"reversed: {old} became {new}" if _OPPOSITE.get(old) == new else None
    return None if old == new else "text differs"


def _limits(d: float, n: int) -> tuple[float, float, float]:
    """How far a mean, a standard deviation and a 95 % bound over ``n`` seeds may move when each seed moves by ``d``
    (the module docstring)."""
    if n < 2:
        return d, 0.0, d
    std = d * math.sqrt(n / (n - 1))
    return d, std, d + float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)


def _compare(old: str, new: str, limits: tuple[float, float, float]) -> str | None:
    a, b = _CELL.match(old), _CELL.match(new)
    if a is None or b is None:
        return None if old == new else "text differs"
    if [g is None for g in a.groups()] != [g is None for g in b.groups()]:
        return "cell shape differs"
    names = ("mean", "std", "lower bound", "upper bound")
    for name, x, y, limit in zip(names, a.groups(), b.groups(), (*limits, limits[2])):
        if x is not None and abs(float(x) - float(y)) > limit + 0.0005 + 1e-12:
            return f"{name} {x} vs {y} differs by more than {limit:.3f}"
    return None


def _cells(line: str) -> list[str]:
    if line.startswith("|"):
        return [c.strip() for c in line.strip().strip("|").split("|")]
    return [line]


def _table(path: Path, required: bool = True) -> list[dict[str, Any]]:
    if not path.is_file():
        if required:
            raise ValueError(f"{path} not found: run the study first (artmed run --output {path.parent})")
        return []
    return read_table(path)


def _block(text: str, path: Path) -> tuple[int, int]:
    start = text.find(BEGIN)
    end = text.find(END, start + 1)
    if start < 0 or end < 0:
        raise ValueError(f"{path} has no results block: add the lines {BEGIN!r} and {END!r}")
    return start, end + len(END)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m artmed.evaluations.readme",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("output", help="the study's output folder (artmed-output)")
    parser.add_argument("--readme", default=RESULTS, help=f"the file with the results block (default: {RESULTS})")
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="per-seed change accepted between machines (see the module docstring)",
    )
    args = parser.parse_args(argv)
    try:
        if not args.check:
            print(f"wrote the results block of {update(args.readme, args.output)}")
            return 0
        problems = check(args.readme, args.output, args.tolerance)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    print(f"{args.readme}: results match the fresh run" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
