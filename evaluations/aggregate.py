"""Seed replicates -> one row per setting: mean, sample standard deviation and a 95 % t-interval of every metric.

A study runs every attack (and defense) once per seed; records that differ only in their seed are one setting.
For each metric the row gets ``<metric>`` (the mean over the seeds where it is finite), ``<metric>_std`` (sample
standard deviation, ddof 1), ``<metric>_ci95`` (half-width of the 95 % Student-t interval of the mean:
t(0.975, n-1) * std / sqrt(n)), ``<metric>_lo`` / ``<metric>_hi`` (the interval shown) and ``<metric>_n``; one seed
gives NaN spread. ``n_seeds`` counts the replicates.

Bounded metrics (rates, AUROC, DER in [0, 1]; cosines in [-1, 1]: ``metric_range``) get the t-interval intersected
with their range. Why that interval: the mean of a bounded metric lies in its range, so the mean is inside the
clipped interval exactly when it is inside the t-interval: the intersection keeps the t-interval's coverage and
only drops values the mean cannot take (the usual construction for a confidence set on a restricted parameter
space). It is 1-Lipschitz in the t-bounds, so a bound moves no more than the t-interval's would when a seed's metric
moves (what ``artmed.evaluations.readme`` derives its check tolerances from). The alternatives were weighed:
a t-interval on the logit scale needs a continuity offset whose choice sets the bounds near 0 and 1, covers the
back-transformed logit mean rather than the mean, and moves without bound near 0 and 1 when one seed moves;
Wilson / Clopper-Pearson on counts pooled over seeds treat seeds as one binomial sample, ignoring the between-seed
spread that dominates here (activation clustering finds all 20 poisoned images on one seed and none on another),
and the summaries hold no counts for ASR or CA; a bootstrap over 3 seeds has 10 distinct resamples. With 3 seeds
the t-interval assumes roughly normal seed values; for a metric that is 0 on some seeds and 1 on others its bounds
are wide (often the whole range) and say just that. The plain mean ± std stays beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
from scipy import stats

__all__ = [
    "MODEL_KEYS",
    "MODEL_METRICS",
    "DEFENSE_KEYS",
    "DEFENSE_METRICS",
    "SHOWN_MODEL_METRICS",
    "SHOWN_DETECTION_METRICS",
    "SHOWN_INPUT_METRICS",
    "SHOWN_MITIGATION_METRICS",
    "SHOWN_VERDICT_METRICS",
    "format_summary",
    "mean_interval",
    "metric_range",
    "summarize",
    "interval",
]

MODEL_KEYS = ("attack", "trigger", "percent_poison", "target")
MODEL_METRICS = (
    "ca",
    "asr",
    "asr_all",
    "ra",
    "n_poison",
    "baddist_cos_clean",
    "baddist_cos_trigger",
    "heldout_cos_clean",
    "heldout_cos_trigger",
)
DEFENSE_KEYS = MODEL_KEYS + ("defense",)
DEFENSE_METRICS = (
    "auroc",
    "tpr_at_fpr5",
    "tpr",
    "fpr",
    "precision",
    "f1",
    "removed",
    "ca_before",
    "asr_before",
    "ca_after",
    "asr_after",
    "ra_after",
    "der",
    "far_frr1",
    "far_frr5",
    "frr",
    "far",
    "model_score",
    "model_flagged",
    "mask_overlap",
    "unexamined",
    "seconds",
)
SHOWN_MODEL_METRICS = ("ca", "asr", "asr_all", "ra", "heldout_cos_clean", "heldout_cos_trigger")
SHOWN_DETECTION_METRICS = ("auroc", "tpr_at_fpr5", "tpr", "fpr", "f1", "removed", "unexamined")
SHOWN_MITIGATION_METRICS = ("ca_after", "asr_after", "der")
SHOWN_INPUT_METRICS = ("auroc", "far_frr1", "far_frr5")
SHOWN_VERDICT_METRICS = ("model_score", "model_flagged", "mask_overlap")
"""The summary columns the terminal summary and the README show (the summary tables on disk hold all of them)."""
UNIT_METRICS = frozenset(
    {
        "ca",
        "asr",
        "asr_all",
        "ra",
        "auroc",
        "tpr_at_fpr5",
        "tpr",
        "fpr",
        "precision",
        "f1",
        "removed",
        "ca_before",
        "asr_before",
        "ca_after",
        "asr_after",
        "asr_all_after",
        "ra_after",
        "der",
        "frr",
        "far",
        "model_flagged",
        "mask_overlap",
    }
)
"""Metrics that are shares or probabilities, in [0, 1] (``far_frr<r>`` too)."""
COSINE_METRICS = frozenset({"baddist_cos_clean", "baddist_cos_trigger", "heldout_cos_clean", "heldout_cos_trigger"})
COUNT_METRICS = frozenset({"n_poison", "unexamined"})
"""Metrics that count rows, in [0, inf)."""


def metric_range(metric: str) -> tuple[float, float] | None:
    """The values ``metric`` can take: (0, 1) for rates, AUROC and DER, (-1, 1) for cosines, (0, inf) for counts,
    None when unbounded."""
    if metric in UNIT_METRICS or metric.startswith("far_frr"):
        return 0.0, 1.0
    if metric in COSINE_METRICS:
        return -1.0, 1.0
    if metric in COUNT_METRICS:
        return 0.0, math.inf
    return None


def interval(mean: float, half: float, metric: str) -> tuple[float, float]:
    """The 95 % interval ``mean ± half`` intersected with ``metric_range(metric)`` (see the module docstring)."""
    lo, hi = mean - half, mean + half
    bounds = metric_range(metric)
    if bounds is None:
        return lo, hi
    return min(max(lo, bounds[0]), bounds[1]), max(min(hi, bounds[1]), bounds[0])


def mean_interval(values: Sequence[Any]) -> dict[str, float]:
    """``mean``, ``std`` (ddof 1), ``ci95`` (t-interval half-width) and ``n`` over the finite numbers in ``values``."""
    finite = np.array([float(v) for v in values if _is_finite(v)], dtype=np.float64)
    n = finite.size
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "ci95": math.nan, "n": 0}
    if n == 1:
        return {"mean": float(finite[0]), "std": math.nan, "ci95": math.nan, "n": 1}
    std = float(np.std(finite, ddof=1))
    return {
        "mean": float(np.mean(finite)),
        "std": std,
        "ci95": float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)),
        "n": n,
    }


def summarize(
    records: Sequence[Mapping[str, Any]], keys: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
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
            row[f"{metric}_lo"], row[f"{metric}_hi"] = interval(stats_["mean"], stats_["ci95"], metric)
        rows.append(row)
    return rows


def format_summary(
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    metrics: Sequence[str],
    interval: bool = True,
    digits: int = 3,
) -> str:
    """A markdown table of ``summarize`` rows: the ``keys``, ``n`` (seeds), then ``mean ± std [lo, hi]`` per metric
    (``interval=False`` drops the 95 % interval, kept inside ``metric_range``); "-" where a row has no value."""
    present = [m for m in metrics if any(m in row for row in rows)]
    header = [*keys, "n", *present]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < len(keys) else "---:" for i in range(len(header))) + "|",
    ]
    for row in rows:
        cells = [_text(row.get(k)) for k in keys] + [str(row.get("n_seeds", "-"))]
        cells += [_spread(row, m, interval, digits) for m in present]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spread(row: Mapping[str, Any], metric: str, show_interval: bool, digits: int) -> str:
    mean, std, half = (row.get(metric), row.get(f"{metric}_std"), row.get(f"{metric}_ci95"))
    if not _is_finite(mean):
        return "-"
    text = f"{mean:.{digits}f}"
    if _is_finite(std):
        text += f" ± {std:.{digits}f}"
    if show_interval and _is_finite(half):
        lo, hi = interval(cast(float, mean), cast(float, half), metric)  # finite numbers (checked above)
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def _is_finite(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.number))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(float(value))
    )


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, (dict, list)) else value
