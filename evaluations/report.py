"""Result tables (JSON, CSV, markdown) and figures (PNG via matplotlib's Agg canvas; pyplot is never touched).

Records are dicts, one per grid cell. Nested dicts are flattened to dotted columns ("cost.seconds"); arrays and
lists are left out of tables. The keys read, all optional (a missing, None or NaN value is skipped, never an error):

- identity: ``task``, ``attack``, ``trigger`` (a string, or a dict with a ``name``), ``target``,
  ``percent_poison`` (poisoned share of the training set, a fraction in (0, 1]), ``seed``, ``defense`` (absent,
  None or "none" = no defense), ``defense_kind``;
- before any defense: ``ca``, ``asr``, ``asr_all``, ``ra``; after a defense: ``ca_after``, ``asr_after``,
  ``asr_all_after``, ``ra_after``, ``der``; detection: ``auroc``, ``tpr``, ``fpr``, ``precision``, ``f1``,
  ``removed``; cost: ``seconds``, ``peak_mb``.

Tables put these columns first in the order above, then every other column in alphabetical order. Figures average
records that share a label (e.g. seeds) and draw the spread as error bars. AUROC comes from
``artmed.evaluations.metrics.detection_metrics``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from sklearn.metrics import roc_curve

from artmed.evaluations.aggregate import mean_interval
from artmed.evaluations.metrics import detection_metrics
from artmed.evaluations.store import atomic_write, to_jsonable

__all__ = [
    "COLUMNS",
    "flatten_record",
    "table_columns",
    "write_table",
    "read_table",
    "format_table",
    "plot_detection_roc",
    "plot_ca_asr_bars",
    "plot_score_histograms",
    "plot_feature_projection",
    "plot_poison_rate_sweep",
]

COLUMNS = (
    "task", "attack", "trigger", "target", "percent_poison", "seed", "defense", "defense_kind",
    "ca", "asr", "asr_all", "ra", "ca_after", "asr_after", "asr_all_after", "ra_after", "der",
    "auroc", "tpr", "fpr", "precision", "f1", "removed", "seconds", "peak_mb",
)  # fmt: skip
_NO_DEFENSE = (None, "", "none", "None")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def flatten_record(record: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """One table row: nested dicts/dataclasses flattened to ``a.b`` keys, NaN/±inf to None, arrays and lists left out,
    other objects as their ``str``."""
    if not isinstance(record, Mapping):
        raise ValueError(f"a record must be a mapping, got {type(record).__name__}")
    row: dict[str, Any] = {}
    for key, value in record.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping):
            row.update({f"{key}{sep}{k}": v for k, v in flatten_record(value, sep).items()})
        elif not isinstance(value, (np.ndarray, list, tuple)):
            try:
                row[str(key)] = to_jsonable(value, str(key))
            except ValueError:
                row[str(key)] = str(value)
    return row


def table_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Columns of flattened ``rows``: the known ``COLUMNS`` present, in their order, then the rest alphabetically."""
    present = set().union(*(row.keys() for row in rows))
    return [c for c in COLUMNS if c in present] + sorted(present.difference(COLUMNS))


def write_table(records: Sequence[Mapping[str, Any]], out_dir: str | Path, name: str = "results") -> tuple[Path, Path]:
    """Write ``records`` as ``out_dir/name.json`` (a list of rows) and ``name.csv`` (None -> empty), atomically."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"table name must be a file-safe name (letters, digits, '._-'), got {name!r}")
    rows = [flatten_record(r) for r in records]
    columns = table_columns(rows)
    rows = [{c: row.get(c) for c in columns} for row in rows]
    out = Path(out_dir)
    json_path = atomic_write(out / f"{name}.json", json.dumps(rows, indent=1, allow_nan=False) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = atomic_write(out / f"{name}.csv", buffer.getvalue())
    return json_path, csv_path


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a table written by ``write_table``; from CSV, empty cells become None and numbers/booleans are parsed."""
    path = Path(path)
    if path.suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: expected a JSON list of row objects")
        return rows
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    raise ValueError(f"{path}: a table is a .json or .csv file")


def _parse_cell(text: str) -> Any:
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def format_table(records: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """A markdown table of ``records`` (readable as plain text too); numbers to ``digits`` significant digits.

    ``columns`` picks and orders the columns (default: ``table_columns``); missing values show as "-".
    """
    rows = [flatten_record(r) for r in records]
    columns = list(columns) if columns is not None else table_columns(rows)
    if not columns:
        raise ValueError("format_table needs at least one column")
    cells = [[_format_cell(row.get(c), digits) for c in columns] for row in rows]
    numeric = [
        any(_is_number(row.get(c)) for row in rows)
        and all(row.get(c) is None or _is_number(row.get(c)) for row in rows)
        for c in columns
    ]
    widths = [max([len(c), 3] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line([c.replace("|", "\\|") for c in columns]), rule] + [line(c) for c in cells])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format_cell(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value).replace("|", "\\|")


# ---------------------------------------------------------------- figures


def plot_detection_roc(scores_by_defense: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """ROC curve per detection defense, AUROC in the legend; the defense's flags as a dot when given.

    Each value is ``(scores, mask)``, ``(scores, mask, flags)`` or ``(DetectionResult, mask)``. Samples with NaN
    scores are dropped; a defense whose mask has no poisoned or no clean sample is listed as skipped.
    """
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    skipped = []
    for name, value in scores_by_defense.items():
        scores, mask, flags = _detection_inputs(name, value)
        keep = np.isfinite(scores)
        scores, mask = scores[keep], mask[keep]
        flags = flags[keep] if flags is not None else None
        if not 0 < mask.sum() < mask.size:
            skipped.append(str(name))
            continue
        quality = detection_metrics(flags if flags is not None else np.zeros_like(mask), mask, scores)
        fpr, tpr, _ = roc_curve(mask, scores)
        (curve,) = ax.plot(fpr, tpr, label=f"{name} (AUROC {quality['auroc']:.3f})")
        if flags is not None:
            ax.plot([quality["fpr"]], [quality["tpr"]], "o", color=curve.get_color())
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (clean flagged)",
           ylabel="true positive rate (poison flagged)", title=title or "Poison detection ROC")
    _finish(ax, plotted=len(scores_by_defense) > len(skipped), skipped=skipped)
    return _save(fig, path)


def _detection_inputs(name: Any, value: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
        raise ValueError(f"detection {name!r}: expected (scores, mask) or (scores, mask, flags), got {type(value)}")
    first, mask = value[0], value[1]
    result = hasattr(first, "scores")  # a DetectionResult brings its own flags
    flags = value[2] if len(value) == 3 else (first.flags if result else None)
    scores = np.asarray(first.scores if result else first, dtype=np.float64)
    mask = np.asarray(mask)
    if scores.ndim != 1 or mask.shape != scores.shape:
        raise ValueError(f"detection {name!r}: scores {scores.shape} and mask {mask.shape} must both be (N,)")
    if mask.dtype != bool and not np.all(np.isin(mask, (0, 1))):
        raise ValueError(f"detection {name!r}: mask must be boolean (or 0/1)")
    if flags is not None:
        flags = np.asarray(flags, dtype=bool)
        if flags.shape != scores.shape:
            raise ValueError(f"detection {name!r}: flags {flags.shape} must match scores {scores.shape}")
    return scores, mask.astype(bool), flags


def plot_ca_asr_bars(records: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Grouped bars per defense: CA and ASR before and after (``ca``, ``ca_after``, ``asr``, ``asr_after``).

    Bars are labelled by the defense plus whichever of task/attack/trigger/percent_poison differ between records;
    records with the same label (seeds) are averaged with a standard-deviation error bar; records with none of the
    four values are left out.
    """
    series = (("ca", "CA before", "#9ecae1"), ("ca_after", "CA after", "#08519c"),
              ("asr", "ASR before", "#fcae91"), ("asr_after", "ASR after", "#a50f15"))  # fmt: skip
    records = [r for r in records if any(not math.isnan(_num(r.get(key))) for key, _, _ in series)]
    labels = _labels(records, ("task", "attack", "trigger", "percent_poison"), always=("defense",))
    groups = list(dict.fromkeys(labels))
    fig = Figure(figsize=(max(6.0, 1.3 * len(groups) + 2), 4.5))
    ax = fig.subplots()
    width = 0.8 / len(series)
    plotted = False
    for j, (key, legend, colour) in enumerate(series):
        stats = [_mean_std(r.get(key) for r, lab in zip(records, labels) if lab == g) for g in groups]
        xs = [i + (j - 1.5) * width for i, (m, _) in enumerate(stats) if not math.isnan(m)]
        if xs:
            kept = [s for s in stats if not math.isnan(s[0])]
            ax.bar(xs, [m for m, _ in kept], width, yerr=[s for _, s in kept], color=colour, label=legend, capsize=2)
            plotted = True
    crowded = len(groups) > 4
    ax.set_xticks(range(len(groups)), groups, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set(ylim=(0, 1.05), ylabel="rate", title=title or "Clean accuracy and attack success, before/after defense")
    _finish(ax, plotted)
    return _save(fig, path)


def plot_inverted_trigger(mask: Any, pattern: Any | None, path: str | Path, title: str | None = None) -> Path:
    """A trigger inverted from a model (DECREE): its mask (H, W) in [0, 1], its pattern (C, H, W) and the stamp
    ``mask * pattern`` side by side."""
    m = np.asarray(mask, dtype=np.float64)
    if m.ndim != 2 or not np.isfinite(m).all():
        raise ValueError(f"mask must be a finite (H, W) array, got shape {m.shape}")
    panels = [("mask", m)]
    if pattern is not None:
        p = np.asarray(pattern, dtype=np.float64)
        if p.ndim != 3 or p.shape[1:] != m.shape:
            raise ValueError(f"pattern must be (C, H, W) with the mask's (H, W) {m.shape}, got {p.shape}")
        p = p.mean(axis=0) if p.shape[0] != 3 else p.transpose(1, 2, 0)
        panels += [("pattern", p), ("mask × pattern", m[..., None] * p if p.ndim == 3 else m * p)]
    fig = Figure(figsize=(3.0 * len(panels), 3.2))
    for ax, (name, image) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        ax.imshow(np.clip(image, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0)
        ax.set(title=name, xticks=[], yticks=[])
    fig.suptitle(title or "Inverted trigger", fontsize=10)
    return _save(fig, path)


def plot_score_histograms(scores: Any, mask: Any, path: str | Path, title: str | None = None, bins: int = 40) -> Path:
    """Histograms of clean vs poisoned suspicion scores, one panel per defense.

    ``scores``: an (N,) array, or a dict name -> scores / ``(scores, mask)`` / DetectionResult (``mask`` is used
    where a value brings none). Densities are drawn so a rare poison class stays visible; NaN scores are dropped.
    """
    panels = scores if isinstance(scores, Mapping) else {"scores": scores}
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    cols = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (name, value) in zip(axes, panels.items()):
        values = value if isinstance(value, (tuple, list)) else (value, mask)
        s, m, _ = _detection_inputs(name, tuple(values[:2]))
        keep = np.isfinite(s)
        s, m = s[keep], m[keep]
        if s.size:
            edges = np.histogram_bin_edges(s, bins=bins)
            for part, legend, colour in ((~m, "clean", "#4292c6"), (m, "poisoned", "#cb181d")):
                if part.any():
                    label = f"{legend} (n={part.sum()})"
                    ax.hist(s[part], bins=edges, density=True, alpha=0.55, color=colour, label=label)
            if 0 < m.sum() <= 50:
                ax.plot(s[m], np.zeros(int(m.sum())), "|", color="#cb181d", markersize=12)
        ax.set(title=str(name), xlabel="suspicion score", ylabel="density")
        _finish(ax, plotted=bool(s.size))
    for ax in axes[max(1, len(panels)):]:
        ax.set_visible(False)
    if not panels:
        _finish(axes[0], plotted=False)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_feature_projection(
    features: Any, mask: Any, path: str | Path, seed: int = 0, max_points: int = 5000, title: str | None = None
) -> Path:
    """Clean vs poisoned training features on their first two principal components (numpy PCA).

    Rows with NaN/inf are dropped; above ``max_points`` rows per group, a seeded random subset is used (for the PCA
    fit too), so large sets stay fast.
    """
    x = np.asarray(features, dtype=np.float64)
    m = np.asarray(mask)
    if x.ndim < 2 or m.shape != (x.shape[0],):
        raise ValueError(f"features must be (N, D, ...) with a mask of shape (N,), got {x.shape} and {m.shape}")
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        raise ValueError(f"max_points must be a positive integer, got {max_points!r}")
    x = x.reshape(x.shape[0], -1)
    m = m.astype(bool)
    keep = np.isfinite(x).all(axis=1)
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([_subset(np.flatnonzero(keep & part), max_points, rng) for part in (~m, m)])
    x, m = x[chosen], m[chosen]
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    if x.shape[0] >= 2:
        points, ratio = _pca2(x)
        ax.scatter(points[~m, 0], points[~m, 1], s=6, alpha=0.4, color="#4292c6", label=f"clean (n={(~m).sum()})")
        if m.any():
            ax.scatter(points[m, 0], points[m, 1], s=22, marker="x", color="#cb181d", label=f"poisoned (n={m.sum()})")
        ax.set(xlabel=f"PC1 ({ratio[0]:.1%} of variance)", ylabel=f"PC2 ({ratio[1]:.1%} of variance)")
    ax.set_title(title or "Training features, first two principal components")
    _finish(ax, plotted=x.shape[0] >= 2)
    return _save(fig, path)


def _subset(indices: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(indices, size=limit, replace=False)) if indices.size > limit else indices


def _pca2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projection of ``x`` on its top two principal axes (signs fixed) and their explained-variance shares."""
    centred = x - x.mean(axis=0)
    if centred.shape[1] <= centred.shape[0]:
        variance, axes = np.linalg.eigh(centred.T @ centred)
        order = np.argsort(variance)[::-1]
        variance, axes = variance[order], axes[:, order]
    else:
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        variance, axes = singular**2, vt.T
    variance = np.clip(variance, 0.0, None)
    axes = np.pad(axes[:, :2], ((0, 0), (0, max(0, 2 - axes.shape[1]))))
    variance = np.pad(variance[:2], (0, max(0, 2 - variance.shape[0])))
    signs = np.sign(axes[np.argmax(np.abs(axes), axis=0), np.arange(2)])
    axes = axes * np.where(signs == 0, 1.0, signs)
    total = float(np.clip(np.sum(centred**2), 0.0, None))
    return centred @ axes, variance / total if total > 0 else np.zeros(2)


def plot_poison_rate_sweep(records: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """ASR and CA against the poison rate (log x), one line per attack × trigger: the attack study of the paper.

    Uses the records without a defense when there are any (else all); rates ≤ 0 cannot sit on a log axis and are
    skipped; seeds at the same rate are averaged with a standard-deviation error bar.
    """
    rows = [r for r in records if _num(r.get("percent_poison")) > 0]
    undefended = [r for r in rows if r.get("defense") in _NO_DEFENSE]
    rows = undefended or rows
    lines = _labels(rows, (), always=("attack", "trigger"))
    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2)
    for ax, key, name in zip(axes, ("asr", "ca"), ("attack success rate", "clean accuracy")):
        plotted = False
        for line in dict.fromkeys(lines):
            mine = [r for r, lab in zip(rows, lines) if lab == line]
            rates = sorted({_num(r["percent_poison"]) for r in mine})
            stats = [_mean_std(r.get(key) for r in mine if _num(r["percent_poison"]) == rate) for rate in rates]
            points = [(rate, m, s) for rate, (m, s) in zip(rates, stats) if not math.isnan(m)]
            if points:
                xs, ys, es = zip(*points)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=2, label=line)
                plotted = True
        ax.set(ylabel=f"{name} ({key.upper()})", xlabel="poison rate (share of training set)", ylim=(0, 1.05))
        if plotted:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(PercentFormatter(xmax=1))
        _finish(ax, plotted)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _num(value: Any) -> float:
    """A finite float, or NaN for None, booleans, strings, NaN and anything non-numeric."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _mean_std(values: Iterable[Any]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (``mean_interval``, as in the summary tables; a
    single value gets 0, no values NaN)."""
    stats = mean_interval(list(values))
    return stats["mean"], stats["std"] if stats["n"] > 1 else (0.0 if stats["n"] else math.nan)


def _labels(records: Sequence[Mapping[str, Any]], varying: Sequence[str], always: Sequence[str]) -> list[str]:
    """One label per record from the ``always`` keys and those ``varying`` keys whose values differ between records."""
    parts = [k for k in varying if len({_label_part(k, r.get(k)) for r in records}) > 1] + list(always)
    return [" · ".join(_label_part(k, r.get(k)) for k in parts) for r in records]


def _label_part(key: str, value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("name", json.dumps(to_jsonable(value), sort_keys=True))
    if key == "defense" and value in _NO_DEFENSE:
        return "no defense"
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return "-" if math.isnan(_num(value)) else f"{_num(value):.3g}"
    return "-" if value is None else str(value)


def _finish(ax: Any, plotted: bool, skipped: Sequence[str] = ()) -> None:
    """Legend when something was drawn, else a 'no data' note; list skipped series under the plot."""
    if plotted:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    if skipped:
        ax.text(0.99, 0.01, "skipped (one class only): " + ", ".join(skipped), ha="right", va="bottom",
                transform=ax.transAxes, fontsize=7, color="grey")


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=120, bbox_inches="tight")
    return atomic_write(path, buffer.getvalue())
