"""What a paper would conclude per (attack, defense) over seeds, decided so that another machine cannot reverse it.

Each defense kind has one per-seed statistic, a threshold T and a margin m; a seed is *yes* when its statistic is
at least T + m, *no* when at most T - m, *undecided* in between:

- detection: ``tpr_at_fpr5`` (the share of the poisoned samples the defense's scores rank above the clean samples'
  95th percentile), T = 0.5: "detects" / "does not detect" (catches more / less than half of the poison at 5 % false
  positives, whatever share the defense flags itself);
- input screen: 1 - ``far_frr5`` (the triggered inputs rejected while 5 % of the clean ones are), the same statistic
  and T: "detects" / "does not detect";
- mitigation: ``asr_before - asr_after`` (the ASR removed), T = 0.3: "mitigates" / "does not mitigate"; a yes seed
  must also keep CA (``ca_before - ca_after`` at most ``CA_LOSS``), else it is undecided;
- model verdict: whether ``model_flagged`` matches the truth (attacked models are backdoored), T = 0.5, m = 0.5:
  "correct" / "wrong".

A setting's verdict is yes (no) when every seed is yes (no), else "inconclusive". Machine-to-machine robustness:
``DRIFT`` holds the most each seed's metric moves between x86 machines (d), and a defense in ``WHOLE_SEED`` may also
change ``seeds`` seeds arbitrarily (activation clustering finds all 20 poisoned images on one machine and none on
another). Each margin is half the statistic's d plus 0.01, so a seed moving by at most d cannot go from yes to no
(that takes 2m > d), and a setting cannot go from yes to no unless every seed does, which a change of fewer than n
seeds cannot do: a decided verdict may weaken to "inconclusive" on another machine, never reverse. ``reachable``
lists the verdicts a run can give after moving each seed by at most d (and any ``seeds`` seeds arbitrarily). The
drift values are measured with the attacked models of one machine kept; between real AVX-512 and AVX2 machines a
seed's model itself can change (``ASR_DRIFT``), which is why the README lists verdicts below its check line.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DRIFT",
    "WHOLE_SEED",
    "CA_LOSS",
    "RULES",
    "Drift",
    "Rule",
    "describe",
    "drift",
    "verdicts",
    "format_verdicts",
]

MODEL_DRIFT = 0.1
"""d for the attacked models' CA and cosines: largest per-seed change measured between AVX-512 and AVX2 kernels on
one machine, same seeds: CA 0.025, cosines 0.005 (``readme``)."""
ASR_DRIFT = 0.3
"""d for the attacked models' ASR, ASR_all and RA. Between two real machines, same code (eb375ce) and seeds, the
default study's BadDist + BadMatch ASR moved by 0.08, 0.25 and 0.00 on seeds 0, 1, 2 (2-core AMD EPYC with AVX-512:
0.98 / 0.99 / 1.00; 2-core AMD EPYC with AVX2 only: 0.90 / 0.74 / 1.00); emulating AVX2 on the AVX-512 machine had
moved it by at most 0.08."""
DEFENSE_DRIFT = 0.2
"""d for the defenses' metrics: the mitigations' ASR after moved up to 0.20 between those two runs; the detectors'
and STRIP's metrics were not measured apart from activation clustering's, so they get the same d."""
DRIFT: dict[str, float] = {
    **dict.fromkeys(
        ("ca", "ca_before", "baddist_cos_clean", "baddist_cos_trigger", "heldout_cos_clean", "heldout_cos_trigger"),
        MODEL_DRIFT,
    ),
    **dict.fromkeys(("asr", "asr_all", "ra", "asr_before"), ASR_DRIFT),
    **dict.fromkeys(
        (
            "auroc",
            "tpr_at_fpr5",
            "tpr",
            "fpr",
            "precision",
            "f1",
            "removed",
            "ca_after",
            "asr_after",
            "asr_all_after",
            "ra_after",
            "der",
            "far_frr1",
            "far_frr5",
            "frr",
            "far",
        ),
        DEFENSE_DRIFT,
    ),
    "model_flagged": 0.0,
}
"""The most one seed's metric moves between x86 machines (per-seed d), by metric."""
WHOLE_SEED: dict[str, int] = {"activation_clustering": 1, "art_activation_clustering": 1}
"""Defenses whose every metric may change arbitrarily on this many seeds between machines (k-means lands on the
poison cluster on one machine and splits the clean data on another: AC's TPR 0.95 vs 0.00 on one seed)."""
MODEL_FLIPS = 1
"""Seeds on which a model-level verdict (a 0/1 flag) may flip between machines: not measured, one assumed."""
CA_LOSS = 0.05
"""The most CA a mitigation may cost on a seed for that seed to count as mitigated."""
SLACK = 0.01

YES, NO, MID = "yes", "no", "inconclusive"


@dataclass(frozen=True)
class Drift:
    """How far one seed's metric may move between machines: by at most ``d``, and arbitrarily on ``seeds`` seeds."""

    d: float
    seeds: int = 0


@dataclass(frozen=True)
class Rule:
    """A defense kind's verdict: the per-seed ``statistic`` against ``threshold`` ± ``margin``."""

    kind: str
    statistic: str
    threshold: float
    margin: float
    yes: str
    no: str


def drift(metric: str, defense: str | None = None) -> Drift:
    """``metric``'s per-seed machine-to-machine change for ``defense`` (None: an attacked model's metric)."""
    seeds = WHOLE_SEED.get(defense or "", 0)
    if metric == "model_flagged":
        seeds = max(seeds, MODEL_FLIPS)
    return Drift(DRIFT.get(metric, DEFENSE_DRIFT if defense else MODEL_DRIFT), seeds)


RULES: dict[str, Rule] = {
    "detection": Rule("detection", "tpr_at_fpr5", 0.5, DRIFT["tpr_at_fpr5"] / 2 + SLACK, "detects", "does not detect"),
    "input": Rule("input", "1 - far_frr5", 0.5, DRIFT["far_frr5"] / 2 + SLACK, "detects", "does not detect"),
    "mitigation": Rule(
        "mitigation",
        "asr_before - asr_after",
        0.3,
        (DRIFT["asr_before"] + DRIFT["asr_after"]) / 2 + SLACK,
        "mitigates",
        "does not mitigate",
    ),
    "model": Rule("model", "flag matches truth", 0.5, 0.5, "correct", "wrong"),
}
"""The verdict rule of each defense kind (see the module docstring)."""


def verdicts(
    records: Sequence[Mapping[str, Any]],
    keys: Sequence[str] = ("attack", "trigger", "percent_poison", "target", "defense"),
) -> list[dict[str, Any]]:
    """One verdict row per ``keys`` group of finished per-seed defense records (first-seen order).

    A row holds the keys, ``kind``, ``n`` (seeds with the statistic), ``statistic``, ``values`` (per seed, in record
    order), ``verdict``, ``reachable`` (the verdicts within the machine-to-machine drift) and ``drift`` (the
    statistic's, a ``Drift``); groups without the
    statistic on any seed (detectors on data without poison) get no row, and neither do input screens and mitigations
    of the clean model (no backdoor to detect or remove).
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for record in records:
        if record.get("status", "ok") == "ok":
            groups.setdefault(tuple(record.get(k) for k in keys), []).append(record)
    rows = []
    for group in groups.values():
        kind = _kind(group[0])
        if kind is None or (kind in ("input", "mitigation") and group[0].get("attack") == "clean"):
            continue
        rule = RULES[kind]
        seeds = [s for s in (_seed(rule, r) for r in group) if s is not None]
        if not seeds:
            continue
        classes = [_class(rule, s) for s in seeds]
        verdict = rule.yes if all(c == YES for c in classes) else rule.no if all(c == NO for c in classes) else MID
        names = {YES: rule.yes, NO: rule.no, MID: MID}
        rows.append(
            {
                **{k: group[0].get(k) for k in keys},
                "kind": kind,
                "n": len(seeds),
                "statistic": rule.statistic,
                "values": [s["value"] for s in seeds],
                "verdict": verdict,
                "reachable": frozenset(names[v] for v in _reachable(rule, seeds)),
                "drift": seeds[0]["drift"],
            }
        )
    return rows


def format_verdicts(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("attack", "defense"), digits: int = 2
) -> str:
    """A markdown table of ``verdicts`` rows: the keys, kind, n, the deciding statistic, its per-seed values and the
    verdict."""
    header = [*keys, "kind", "n", "decided by", "per seed", "verdict"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if h in ("n", "per seed") else "---" for h in header) + "|",
    ]
    for row in rows:
        values = " ".join(f"{v:.{digits}f}" for v in row["values"])
        cells = [str(row.get(k)) for k in keys] + [row["kind"], str(row["n"]), row["statistic"], values, row["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe() -> str:
    """The verdict rules in one sentence, with their decided zones (for table captions)."""

    def zone(kind: str) -> tuple[str, str]:
        rule = RULES[kind]
        return f"{rule.threshold + rule.margin:.2f}", f"{rule.threshold - rule.margin:.2f}"

    (det_yes, det_no), (mit_yes, mit_no) = zone("detection"), zone("mitigation")
    return (
        f"detectors and screens detect when they catch at least {det_yes} of the poison / triggered inputs at 5 % "
        f"false alarms on every seed, and do not when at most {det_no}; a mitigation mitigates when it removes at "
        f"least {mit_yes} ASR and costs at most {CA_LOSS:.2f} CA on every seed, and does not when it removes at "
        f"most {mit_no}; anything else is inconclusive"
    )


def _kind(record: Mapping[str, Any]) -> str | None:
    kind = record.get("kind")
    if kind in RULES:
        return kind
    if kind is None:  # records written before defenses declared a kind
        for name, metric in (("detection", "tpr_at_fpr5"), ("input", "far_frr5"), ("mitigation", "asr_after")):
            if record.get(metric) is not None:
                return name
    return None


def _seed(rule: Rule, record: Mapping[str, Any]) -> dict[str, Any] | None:
    """One seed's statistic with its drift, and (mitigations) the CA lost with its drift; None when undefined."""
    defense = record.get("defense")
    if rule.kind == "detection":
        value, change = _number(record.get("tpr_at_fpr5")), drift("tpr_at_fpr5", defense)
    elif rule.kind == "input":
        far = _number(record.get("far_frr5"))
        value, change = 1.0 - far, drift("far_frr5", defense)
    elif rule.kind == "mitigation":
        value = _number(record.get("asr_before")) - _number(record.get("asr_after"))
        after = drift("asr_after", defense)
        change = Drift(DRIFT["asr_before"] + after.d, after.seeds)
    else:
        flagged = _number(record.get("model_flagged"))
        value = float((flagged >= 0.5) == (record.get("attack") != "clean")) if math.isfinite(flagged) else math.nan
        change = drift("model_flagged", defense)
    if not math.isfinite(value):
        return None
    seed = {"value": value, "drift": change}
    if rule.kind == "mitigation":
        lost = _number(record.get("ca_before")) - _number(record.get("ca_after"))
        if math.isfinite(lost):
            seed["ca_lost"] = (lost, DRIFT["ca_before"] + drift("ca_after", defense).d)
    return seed


def _class(rule: Rule, seed: Mapping[str, Any], shift: float = 0.0, ca_shift: float = 0.0) -> str:
    value = seed["value"] + shift
    if value >= rule.threshold + rule.margin and seed.get("ca_lost", (0.0,))[0] + ca_shift <= CA_LOSS:
        return YES
    if value <= rule.threshold - rule.margin:
        return NO
    return MID


def _possible(rule: Rule, seed: Mapping[str, Any]) -> set[str]:
    """The classes a seed can take when its statistic (and CA lost) move by at most their drift."""
    d = seed["drift"].d
    ca_d = seed.get("ca_lost", (0.0, 0.0))[1]
    lo, hi = rule.threshold - rule.margin, rule.threshold + rule.margin
    classes = {_class(rule, seed, d, -ca_d), _class(rule, seed, -d, ca_d)}
    if seed["value"] - d < hi and seed["value"] + d > lo:
        classes.add(MID)
    return classes


def _reachable(rule: Rule, seeds: Sequence[Mapping[str, Any]]) -> set[str]:
    """Setting verdicts (YES / NO / MID) reachable when every seed moves within its drift and ``drift.seeds`` of them
    change arbitrarily."""
    free = min(max(s["drift"].seeds for s in seeds), len(seeds))
    possible = [_possible(rule, s) for s in seeds]
    needed = len(seeds) - free
    out = {c for c in (YES, NO) if sum(c in p for p in possible) >= needed}
    mixed = any(YES in p and NO in q for i, p in enumerate(possible) for j, q in enumerate(possible) if i != j)
    if free or mixed or any(MID in p for p in possible):
        out.add(MID)
    return out


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return math.nan
    return float(value)
