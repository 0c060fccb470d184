"""Bounded seed intervals, per-setting verdicts that another machine cannot reverse, and the README's defense check."""

import math

import numpy as np
import pytest

from artmed.evaluations import readme
from artmed.evaluations.aggregate import DEFENSE_KEYS, DEFENSE_METRICS, MODEL_KEYS, MODEL_METRICS, summarize
from artmed.evaluations.report import write_table
from artmed.evaluations.verdicts import RULES, drift, verdicts

SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------------------------- intervals
def test_intervals_of_bounded_metrics_stay_in_their_range():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 6))
        rates, cosines = rng.choice([0.0, 1.0, rng.uniform()], n), rng.uniform(-1, 1, n)
        records = [
            {"seed": i, "tpr": r, "far_frr5": r, "heldout_cos_trigger": c, "seconds": r - 0.5}
            for i, (r, c) in enumerate(zip(rates, cosines))
        ]
        row = summarize(records, (), ("tpr", "far_frr5", "heldout_cos_trigger", "seconds"))[0]
        for metric, (lo, hi) in (("tpr", (0, 1)), ("far_frr5", (0, 1)), ("heldout_cos_trigger", (-1, 1))):
            assert lo <= row[f"{metric}_lo"] <= row[metric] <= row[f"{metric}_hi"] <= hi
            assert row[f"{metric}_lo"] == max(lo, row[metric] - row[f"{metric}_ci95"])
        assert row["seconds_lo"] == pytest.approx(row["seconds"] - row["seconds_ci95"])  # unbounded: not clipped
    # the README's case: AC's TPR 0.25 ± 0.43 had the t-interval [-0.83, 1.33]
    row = summarize([{"seed": s, "tpr": v} for s, v in zip(SEEDS, (0.0, 0.0, 0.75))], (), ("tpr",))[0]
    assert (row["tpr_lo"], row["tpr_hi"]) == (0.0, 1.0)
    one = summarize([{"seed": 0, "tpr": 0.5}], (), ("tpr",))[0]
    assert math.isnan(one["tpr_lo"]) and math.isnan(one["tpr_hi"])


# ---------------------------------------------------------------------------------------------- verdicts
def _detector(defense, values, attack="badmatch"):
    return [
        {"attack": attack, "defense": defense, "kind": "detection", "seed": s, "tpr_at_fpr5": v}
        for s, v in zip(SEEDS, values)
    ]


def _mitigation(before, after, ca_lost=0.0):
    return [
        {
            "attack": "badmatch",
            "defense": "fine_pruning",
            "kind": "mitigation",
            "seed": s,
            "asr_before": b,
            "asr_after": a,
            "ca_before": 0.9,
            "ca_after": 0.9 - ca_lost,
        }
        for s, b, a in zip(SEEDS, before, after)
    ]


def test_verdicts_need_every_seed_past_the_margin():
    rows = verdicts(
        _detector("spectre", (1.0, 0.95, 1.0))
        + _detector("activation_clustering", (0.0, 0.0, 0.75))
        + _detector("scan", (0.0, 0.05, 0.0))
        + _detector("spectral_signatures", (0.3, 0.62, 0.7))
        + _detector("spectre", (math.nan,) * 3, attack="clean")
    )
    assert [(r["defense"], r["verdict"]) for r in rows] == [
        ("spectre", "detects"),
        ("activation_clustering", "inconclusive"),
        ("scan", "does not detect"),
        ("spectral_signatures", "inconclusive"),
    ]  # no row without the statistic
    assert rows[0]["values"] == [1.0, 0.95, 1.0] and rows[0]["n"] == 3
    assert verdicts(_mitigation((0.9,) * 3, (0.3,) * 3))[0]["verdict"] == "mitigates"
    assert verdicts(_mitigation((0.8,) * 3, (0.3,) * 3))[0]["verdict"] == "inconclusive"  # 0.5 < 0.3 + margin 0.26
    assert verdicts(_mitigation((0.9,) * 3, (0.3,) * 3, ca_lost=0.1))[0]["verdict"] == "inconclusive"  # CA not kept
    assert verdicts(_mitigation((0.8,) * 3, (0.78,) * 3))[0]["verdict"] == "does not mitigate"
    screens = [{"attack": "badmatch", "defense": "strip", "kind": "input", "seed": s, "far_frr5": 0.2} for s in SEEDS]
    assert verdicts(screens)[0]["verdict"] == "detects" and verdicts(screens)[0]["values"] == [0.8] * 3
    model = [
        {"attack": a, "defense": "decree", "kind": "model", "seed": s, "model_flagged": 1.0}
        for a in ("clean", "badmatch")
        for s in SEEDS
    ]
    assert [r["verdict"] for r in verdicts(model)] == ["wrong", "correct"]
    failed = [{**r, "status": "failed"} for r in _detector("spectre", (1.0,) * 3)]
    assert verdicts(failed) == []


def test_margins_exceed_half_the_drift():
    for rule in RULES.values():
        assert 0 <= rule.threshold - rule.margin < rule.threshold + rule.margin <= 1
    assert 2 * RULES["detection"].margin > drift("tpr_at_fpr5", "spectre").d
    assert 2 * RULES["input"].margin > drift("far_frr5", "strip").d
    assert 2 * RULES["mitigation"].margin > drift("asr_before").d + drift("asr_after", "cleanclip").d


@pytest.mark.parametrize("defense", ["spectre", "activation_clustering"])
def test_no_seed_change_within_the_drift_reverses_a_verdict(defense):
    """Perturb every seed's statistic by up to d (and, for AC, one seed anywhere): a decided verdict stays decided or
    becomes inconclusive, and each run's verdict is among those the other run can reach."""
    rng = np.random.default_rng(1)
    opposite = {"detects": "does not detect", "does not detect": "detects", "inconclusive": None}
    d, free = drift("tpr_at_fpr5", defense).d, drift("tpr_at_fpr5", defense).seeds
    seen = set()
    for _ in range(3000):
        values = np.clip(rng.choice([0.0, 0.35, 0.45, 0.5, 0.55, 0.65, 1.0]) + rng.uniform(-0.15, 0.15, 3), 0, 1)
        moved = np.clip(values + rng.uniform(-d, d, 3), 0, 1)
        if free:
            moved[rng.integers(3)] = rng.uniform()
        (a,), (b,) = verdicts(_detector(defense, values)), verdicts(_detector(defense, moved))
        seen.add(a["verdict"])
        assert b["verdict"] != opposite[a["verdict"]], (values, moved)
        assert a["verdict"] in b["reachable"] and b["verdict"] in a["reachable"], (values, moved)
    assert seen == {"detects", "does not detect", "inconclusive"}
    (far,) = verdicts(_detector(defense, (1.0,) * 3))
    assert far["reachable"] == ({"detects", "inconclusive"} if free else {"detects"})


def test_mitigation_verdicts_survive_the_asr_drift():
    rng = np.random.default_rng(2)
    d_before, d_after = drift("asr_before").d, drift("asr_after", "fine_pruning").d
    for _ in range(2000):
        before, after = rng.uniform(0.5, 1.0, 3), rng.uniform(0.0, 1.0, 3) * rng.choice([0.3, 1.0])
        moved_before = before + rng.uniform(-d_before, d_before, 3)
        moved_after = np.clip(after + rng.uniform(-d_after, d_after, 3), 0, 1)
        (a,), (b,) = verdicts(_mitigation(before, after)), verdicts(_mitigation(moved_before, moved_after))
        assert {a["verdict"], b["verdict"]} != {"mitigates", "does not mitigate"}
        assert a["verdict"] in b["reachable"]


# ---------------------------------------------------------------------------------------------- the README
def _study(out, shift=0.0, ac=(0.0, 0.0, 0.75), mitigations=True):
    """A 3-seed study folder (per-seed and summary tables) shaped like the default study's."""
    models, defenses = [], []
    for seed in SEEDS:
        base = {"trigger": "patch", "target": 0, "seed": seed, "status": "ok"}
        for attack, asr in (("clean", 0.19), ("badmatch", 0.82), ("baddist", 0.3 * seed)):
            rate = 0.01 if attack == "badmatch" else 0
            models.append({**base, "attack": attack, "percent_poison": rate, "ca": 0.92, "asr": asr, "ra": 1 - asr})
            poisoned = attack == "badmatch"
            for defense, tpr in (("spectre", 1.0), ("activation_clustering", ac[seed])):
                defenses.append(
                    {
                        **base,
                        "attack": attack,
                        "percent_poison": rate,
                        "defense": defense,
                        "kind": "detection",
                        "fpr": 0.05,
                        "removed": 0.05,
                        "tpr_at_fpr5": max(0.0, tpr - shift) if poisoned else None,
                        "tpr": tpr if poisoned else None,
                        "auroc": 0.9 if poisoned else None,
                    }
                )
            defenses.append(
                {
                    **base,
                    "attack": attack,
                    "percent_poison": rate,
                    "defense": "strip",
                    "kind": "input",
                    "auroc": 0.6,
                    "far_frr1": 0.9,
                    "far_frr5": 0.7 + shift,
                }
            )
            if poisoned and mitigations:
                defenses.append(
                    {
                        **base,
                        "attack": attack,
                        "percent_poison": rate,
                        "defense": "cleanclip",
                        "kind": "mitigation",
                        "ca_before": 0.92,
                        "asr_before": asr,
                        "ca_after": 0.91,
                        "asr_after": 0.1 + shift,
                        "der": 0.85,
                    }
                )
    write_table(models, out, name="models")
    write_table(summarize(models, MODEL_KEYS, MODEL_METRICS), out, name="models_summary")
    write_table(defenses, out, name="defenses")
    write_table(summarize(defenses, DEFENSE_KEYS, DEFENSE_METRICS), out, name="defenses_summary")
    return out


def test_readme_checks_verdicts_for_reversal_and_lists_defense_metrics_unchecked(tmp_path):
    """The verdicts sit above the check line and are checked as their rules guarantee across machines: a decided
    verdict may weaken to "inconclusive" (or an inconclusive one be decided), never reverse; the per-seed values may
    move. The defenses' metric tables sit below it: between real AVX-512 and AVX2 machines a seed's backdoored model
    can change enough (BadDist + BadMatch ASR 0.99 vs 0.74 on one seed) that SPECTRE's catch on it flips whole."""
    path = tmp_path / "results.md"
    path.write_text(f"{readme.BEGIN}\n{readme.END}\n")
    readme.update(path, _study(tmp_path / "a"))
    checked, unchecked = path.read_text().split(readme.UNCHECKED)
    assert "| badmatch | spectre | detection | 3 | tpr_at_fpr5 | 1.00 1.00 1.00 | detects |" in checked
    assert "| activation_clustering | detection | 3 | tpr_at_fpr5 | 0.00 0.00 0.75 | inconclusive |" in checked
    assert "| cleanclip | mitigation | 3 | asr_before - asr_after | 0.72 0.72 0.72 | mitigates |" in checked
    assert "| activation_clustering | 3 | 0.900 ± 0.000 [0.900, 0.900] | 0.250 ± 0.433 [0.000, 1.000]" in unchecked
    assert "| badmatch | patch | 0.01 | 3 |" in checked and "| spectre | 3 |" in unchecked
    # metrics moved far beyond their drift, AC decided on every seed, SPECTRE weakened: none reversed
    assert readme.check(path, _study(tmp_path / "b", shift=0.3, ac=(1.0, 1.0, 1.0))) == []
    assert readme.check(path, _study(tmp_path / "c", shift=0.2)) == []
    problems = readme.check(path, _study(tmp_path / "d", shift=1.0))  # SPECTRE catches nothing on any seed
    assert any("verdict: reversed: detects became does not detect" in p and "spectre" in p for p in problems), problems
    assert any("reversed: mitigates became does not mitigate" in p for p in problems), problems


def test_readme_renders_studies_without_some_defenses(tmp_path):
    out = _study(tmp_path / "a", mitigations=False)
    text = readme.render(out)
    assert "mitigations" not in text and "mitigation |" not in text and "| badmatch | spectre | detection" in text
    (out / "defenses.json").unlink()
    (out / "defenses_summary.json").unlink()
    bare = readme.render(out)
    assert "verdicts" not in bare.split(readme.UNCHECKED)[0] and "| badmatch | patch | 0.01 | 3 |" in bare
