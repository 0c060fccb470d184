"""Seed replicates -> one row per setting: mean, sample standard deviation and a 95 % t-interval of every metric.

A study runs every attack (and defense) once per seed; records that differ only in their seed are one setting.
For each metric the row gets ``<metric>`` (the mean over the seeds where it is finite), ``<metric>_std`` (sample
standard deviation, ddof 1), ``<metric>_ci95`` (half-width of the 95 % Student-t interval of the mean:
t(0.975, n-1) * std / sqrt(n)) and ``<metric>_n``; one seed gives NaN spread. ``n_seeds`` counts the replicates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["MODEL_KEYS", "MODEL_METRICS", "DEFENSE_KEYS", "DEFENSE_METRICS", "SHOWN_MODEL_METRICS",
           "SHOWN_DETECTION_METRICS", "SHOWN_INPUT_METRICS", "SHOWN_MITIGATION_METRICS", "SHOWN_VERDICT_METRICS",
           "format_summary", "mean_interval", "summarize"]

MODEL_KEYS = ("attack", "trigger", "percent_poison", "target")
MODEL_METRICS = ("ca", "asr", "asr_all", "ra", "n_poison", "baddist_cos_clean", "baddist_cos_trigger",
                 "heldout_cos_clean", "heldout_cos_trigger")
DEFENSE_KEYS = MODEL_KEYS + ("defense",)
DEFENSE_METRICS = ("auroc", "tpr", "fpr", "precision", "f1", "removed", "ca_before", "asr_before", "ca_after",
                   "asr_after", "ra_after", "der", "far_frr1", "far_frr5", "frr", "far", "model_score",
                   "model_flagged", "mask_overlap", "seconds")
SHOWN_MODEL_METRICS = ("ca", "asr", "asr_all", "ra", "heldout_cos_clean", "heldout_cos_trigger")
SHOWN_DETECTION_METRICS = ("auroc", "tpr", "fpr", "f1", "removed")
SHOWN_MITIGATION_METRICS = ("ca_after", "asr_after", "der")
SHOWN_INPUT_METRICS = ("auroc", "far_frr1", "far_frr5")
SHOWN_VERDICT_METRICS = ("model_score", "model_flagged", "mask_overlap")
"""The summary columns the terminal summary and the README show (the summary tables on disk hold all of them)."""


def mean_interval(values: Sequence[Any]) -> dict[str, float]:
    """``mean``, ``std`` (ddof 1), ``ci95`` (t-interval half-width) and ``n`` over the finite numbers in ``values``."""
    finite = np.array([float(v) for v in values if _is_finite(v)], dtype=np.float64)
    n = finite.size
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "ci95": math.nan, "n": 0}
    if n == 1:
        return {"mean": float(finite[0]), "std": math.nan, "ci95": math.nan, "n": 1}
    std = float(np.std(finite, ddof=1))
    return {"mean": float(np.mean(finite)), "std": std, "ci95": float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)),
            "n": n}


def summarize(records: Sequence[Mapping[str, Any]], keys: Sequence[str],
              metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per distinct ``keys`` tuple (in first-seen order) with the seed statistics of every ``metric``.

    Metrics no record of a group has are left out of its row; ``seeds`` lists the group's seeds (space-separated).
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(_hashable(record.get(k)) for k in keys), []).append(record)
    rows = []
    for group in groups.values():
        row: dict[str, Any] = {k: group[0].get(k) for k in keys}
        row["seeds"] = " ".join(str(r.get("seed")) for r in group)
        row["n_seeds"] = len(group)
        for metric in metrics:
            if not any(metric in r for r in group):
                continue
            stats_ = mean_interval([r.get(metric) for r in group])
            row[metric] = stats_["mean"]
            row.update({f"{metric}_{k}": v for k, v in stats_.items() if k != "mean"})
        rows.append(row)
    return rows


def format_summary(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], metrics: Sequence[str],
                   interval: bool = True, digits: int = 3) -> str:
    """A markdown table of ``summarize`` rows: the ``keys``, ``n`` (seeds), then ``mean ± std [lo, hi]`` per metric
    (``interval=False`` drops the 95 % interval); "-" where a row has no value."""
    present = [m for m in metrics if any(m in row for row in rows)]
    header = [*keys, "n", *present]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < len(keys) else "---:"
                                                           for i in range(len(header))) + "|"]
    for row in rows:
        cells = [_text(row.get(k)) for k in keys] + [str(row.get("n_seeds", "-"))]
        cells += [_spread(row, m, interval, digits) for m in present]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spread(row: Mapping[str, Any], metric: str, interval: bool, digits: int) -> str:
    mean, std, half = (row.get(metric), row.get(f"{metric}_std"), row.get(f"{metric}_ci95"))
    if not _is_finite(mean):
        return "-"
    text = f"{mean:.{digits}f}"
    if _is_finite(std):
        text += f" ± {std:.{digits}f}"
    if interval and _is_finite(half):
        text += f" [{mean - half:.{digits}f}, {mean + half:.{digits}f}]"
    return text


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def _is_finite(value: Any) -> bool:
    return (isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(float(value)))


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, (dict, list)) else value
