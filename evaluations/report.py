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

A figure is drawn only from something to compare: with no data, or with a single point where the figure is a curve
(a poison-rate sweep with one rate), a plot function writes no file (it removes a stale one of that name), warns
``NoFigureWarning`` saying why, and returns None instead of the path.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from sklearn.metrics import roc_curve

from artmed.attacks.triggers import BlendedTrigger, FourierTrigger, PatchTrigger
from artmed.data.phantom import PhantomGenerator
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
    "NoFigureWarning",
    "mean_roc",
    "plot_detection_roc",
    "plot_mean_roc",
    "plot_ca_asr_bars",
    "plot_heatmap",
    "plot_tradeoff",
    "plot_score_histograms",
    "plot_feature_projection",
    "plot_poison_rate_sweep",
    "plot_baddist_separation",
    "plot_trigger_examples",
    "save_figure",
    "setting_label",
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


def plot_detection_roc(scores_by_defense: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path | None:
    """ROC curve per detection defense (one model), AUROC in the legend; the defense's flags as a dot when given.

    Each value is ``(scores, mask)``, ``(scores, mask, flags)`` or ``(DetectionResult, mask)``. Samples with NaN
    scores are dropped; a defense whose mask has no poisoned or no clean sample is listed as skipped (no figure when
    that leaves none). Over seeds, ``plot_mean_roc`` averages the curves.
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
    return _save_roc(fig, ax, path, title or "Poison detection ROC", len(scores_by_defense), skipped)


def mean_roc(curves: Iterable[tuple[Any, Any]], grid: int = 101) -> dict[str, Any]:
    """ROC curves of several seeds on one false-positive-rate grid: mean TPR and its standard deviation.

    Each curve is ``(scores, mask)``; seeds whose mask has one class only are left out (``n`` counts the others),
    NaN scores are dropped. Each seed's TPR is its ROC step function read at ``grid`` evenly spaced FPRs (the highest
    TPR reached at that FPR), so seeds of different sizes average point by point. Returns ``fpr``, ``tpr``,
    ``tpr_std`` (ddof 1; 0 for one seed), ``n`` and the seeds' ``auroc`` values.
    """
    fpr_grid = np.linspace(0.0, 1.0, grid)
    tprs, aurocs = [], []
    for scores, mask in curves:
        scores, mask = np.asarray(scores, dtype=np.float64), np.asarray(mask, dtype=bool)
        keep = np.isfinite(scores)
        scores, mask = scores[keep], mask[keep]
        if not 0 < mask.sum() < mask.size:
            continue
        fpr, tpr, _ = roc_curve(mask, scores)
        tprs.append(tpr[np.searchsorted(fpr, fpr_grid, side="right") - 1])
        aurocs.append(float(np.trapezoid(tpr, fpr)))
    if not tprs:
        return {"fpr": fpr_grid, "tpr": np.full(grid, np.nan), "tpr_std": np.full(grid, np.nan), "n": 0, "auroc": []}
    stacked = np.stack(tprs)
    std = stacked.std(axis=0, ddof=1) if len(tprs) > 1 else np.zeros(grid)
    return {"fpr": fpr_grid, "tpr": stacked.mean(axis=0), "tpr_std": std, "n": len(tprs), "auroc": aurocs}


def plot_mean_roc(
    curves_by_defense: Mapping[str, Sequence[tuple[Any, Any]]], path: str | Path, title: str | None = None
) -> Path | None:
    """ROC per detection defense averaged over seeds (``mean_roc``): the mean TPR with a ± one-standard-deviation
    band, mean ± std AUROC and the number of seeds in the legend. Each value lists ``(scores, mask)`` per seed."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    skipped = []
    for name, curves in curves_by_defense.items():
        curve = mean_roc(curves)
        if not curve["n"]:
            skipped.append(str(name))
            continue
        auroc, spread = _mean_std(curve["auroc"])
        (line,) = ax.plot(
            curve["fpr"],
            curve["tpr"],
            drawstyle="steps-post",
            label=f"{name}: AUROC {auroc:.2f} ± {spread:.2f} (n={curve['n']})",
        )
        if curve["n"] > 1:
            ax.fill_between(
                curve["fpr"],
                np.clip(curve["tpr"] - curve["tpr_std"], 0, 1),
                np.clip(curve["tpr"] + curve["tpr_std"], 0, 1),
                step="post",
                alpha=0.2,
                color=line.get_color(),
                linewidth=0,
            )
    return _save_roc(fig, ax, path, title or "Poison detection ROC, mean over seeds", len(curves_by_defense), skipped)


def _save_roc(
    fig: Figure, ax: Any, path: str | Path, title: str, n_defenses: int, skipped: Sequence[str]
) -> Path | None:
    """Finish a ROC figure (chance line, unit axes, legend) and save it; skipped when no defense drew a curve."""
    if n_defenses == len(skipped):
        _skip(path, "no defense has scores for both poisoned and clean samples")
        return None
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate (clean flagged)",
        ylabel="true positive rate (poison flagged)",
        title=title,
    )
    _finish(ax, skipped=skipped)
    return save_figure(fig, path)


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


def plot_ca_asr_bars(records: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path | None:
    """CA and ASR before and after each defense that changed the model: two panels of horizontal bar pairs.

    Only records with an "after" value (``ca_after`` or ``asr_after``: mitigations, detections with ``retrain``)
    are drawn; "before" is ``ca_before``/``asr_before`` (the harness's defense rows), else ``ca``/``asr``. Bars are
    labelled by the attacked setting (``setting_label``; the task too where it varies) and the defense; records with
    the same label (seeds) are averaged with a standard-deviation error bar.
    """
    records = [r for r in records if any(not math.isnan(_num(r.get(k))) for k in ("ca_after", "asr_after"))]
    if not records:
        _skip(path, "no record has CA or ASR after a defense (no mitigation, no retrain)")
        return None
    tasks = len({r.get("task") for r in records}) > 1
    labels = [f"{r.get('task')}: {setting_label(r)}" if tasks else setting_label(r) for r in records]
    labels = [f"{label} · {_label_part('defense', r.get('defense'))}" for label, r in zip(labels, records)]
    groups = list(dict.fromkeys(labels))
    fig = Figure(figsize=(9.0, 1.6 + 0.45 * len(groups)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    ys = np.arange(len(groups))
    for ax, metric, name in zip(axes, ("ca", "asr"), ("clean accuracy (CA)", "attack success (ASR)")):
        for shift, when, colour in (
            (-0.2, "before", "#bdbdbd"),
            (0.2, "after", "#08519c" if metric == "ca" else "#a50f15"),
        ):
            keys = (f"{metric}_{when}",) if when == "after" else (f"{metric}_before", metric)
            stats = [
                _mean_std(
                    next((r.get(k) for k in keys if not math.isnan(_num(r.get(k)))), None)
                    for r, lab in zip(records, labels)
                    if lab == g
                )
                for g in groups
            ]
            means = np.array([m for m, _ in stats])
            ax.barh(
                ys + shift,
                np.nan_to_num(means),
                0.4,
                xerr=[0.0 if math.isnan(e) else e for _, e in stats],
                color=colour,
                label=when,
                capsize=2,
            )
        ax.set(xlim=(0, 1.05), xlabel=name)
        ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=2, frameon=False)
    axes[0].set_yticks(ys, groups, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(title or "CA and ASR before and after each defense", fontsize=10)
    return save_figure(fig, path)


def plot_heatmap(
    cells: Mapping[tuple[str, str], tuple[float, float]],
    path: str | Path,
    title: str,
    value_range: tuple[float, float] = (0.0, 1.0),
    cmap: str = "viridis",
) -> Path | None:
    """A grid of ``(row, column) -> (mean, std)`` (e.g. defense × attack setting -> AUROC over seeds), each cell
    annotated "mean ± std" (mean only when the std is NaN); missing or NaN cells stay blank."""
    cells = {k: v for k, v in cells.items() if not math.isnan(_num(v[0]))}
    if not cells:
        _skip(path, "no cell has a finite value")
        return None
    rows = list(dict.fromkeys(r for r, _ in cells))
    cols = list(dict.fromkeys(c for _, c in cells))
    grid = np.full((len(rows), len(cols)), np.nan)
    for (r, c), (mean, _) in cells.items():
        grid[rows.index(r), cols.index(c)] = mean
    fig = Figure(figsize=(2.0 + 1.5 * len(cols), 1.4 + 0.5 * len(rows)))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=value_range[0], vmax=value_range[1], aspect="auto")
    for (r, c), (mean, std) in cells.items():
        text = f"{mean:.2f}" if math.isnan(_num(std)) else f"{mean:.2f}\n± {std:.2f}"
        shade = (mean - value_range[0]) / ((value_range[1] - value_range[0]) or 1.0)
        ax.text(
            cols.index(c),
            rows.index(r),
            text,
            ha="center",
            va="center",
            fontsize=8,
            color="black" if shade > 0.6 else "white",
        )
    ax.set_xticks(range(len(cols)), cols, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04)
    return save_figure(fig, path)


def plot_tradeoff(steps: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path | None:
    """Each mitigation's path in the CA–ASR plane: one panel per attacked setting, one colour per defense, one line
    per seed through the models it reported (fine-pruning: each pruning step, then fine-tuning), from a circle
    (first) to a star (last). ``steps`` are rows with ``setting``, ``defense``, ``seed``, ``step``, ``ca``, ``asr``
    (``artmed.evaluations.compare.trajectories``); paths of one point are left out."""
    paths: dict[tuple[str, str, Any], list[tuple[int, float, float]]] = {}
    for row in steps:
        ca, asr = _num(row.get("ca")), _num(row.get("asr"))
        if not math.isnan(ca) and not math.isnan(asr):
            key = (str(row.get("setting")), str(row.get("defense")), row.get("seed"))
            paths.setdefault(key, []).append((int(row.get("step", 0)), ca, asr))
    paths = {k: sorted(v) for k, v in paths.items() if len(v) > 1}
    if not paths:
        _skip(path, "no mitigation reported more than one model")
        return None
    settings = list(dict.fromkeys(k[0] for k in paths))
    defenses = list(dict.fromkeys(k[1] for k in paths))
    colours = {d: f"C{i % 10}" for i, d in enumerate(defenses)}
    fig = Figure(figsize=(4.2 * len(settings), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(settings), sharey=True))
    for ax, setting in zip(axes, settings):
        for (where, defense, _), points in paths.items():
            if where != setting:
                continue
            _, cas, asrs = zip(*points)
            ax.plot(cas, asrs, "-", color=colours[defense], alpha=0.7, linewidth=1)
            ax.plot(cas[0], asrs[0], "o", color=colours[defense], markersize=5)
            ax.plot(cas[-1], asrs[-1], "*", color=colours[defense], markersize=10)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="clean accuracy (CA)", title=setting)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("attack success (ASR)")
    handles = [axes[0].plot([], [], "-", color=colours[d], label=d)[0] for d in defenses]
    handles += [
        axes[0].plot([], [], "o", color="grey", label="first")[0],
        axes[0].plot([], [], "*", color="grey", markersize=10, label="last")[0],
    ]
    axes[-1].legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle(
        title or "Mitigations: CA and ASR of the models each one passed through (one line per seed)", fontsize=10
    )
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def plot_score_histograms(
    scores: Any, mask: Any, path: str | Path, title: str | None = None, bins: int = 40
) -> Path | None:
    """Histograms of clean vs poisoned suspicion scores, one panel per defense.

    ``scores``: an (N,) array, or a dict name -> scores / ``(scores, mask)`` / DetectionResult (``mask`` is used
    where a value brings none). Densities are drawn so a rare poison class stays visible; NaN scores are dropped, and
    a defense with no finite score gets no panel (no figure when none has one).
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    panels = {}
    for name, value in (scores if isinstance(scores, Mapping) else {"scores": scores}).items():
        values = value if isinstance(value, (tuple, list)) else (value, mask)
        s, m, _ = _detection_inputs(name, tuple(values[:2]))
        keep = np.isfinite(s)
        if keep.any():
            panels[name] = (s[keep], m[keep])
    if not panels:
        _skip(path, "no finite scores")
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (name, (s, m)) in zip(axes, panels.items()):
        edges = np.histogram_bin_edges(s, bins=bins)
        for part, legend, colour in ((~m, "clean", "#4292c6"), (m, "poisoned", "#cb181d")):
            if part.any():
                ax.hist(s[part], bins=edges, density=True, alpha=0.55, color=colour, label=f"{legend} (n={part.sum()})")
        if 0 < m.sum() <= 50:
            ax.plot(s[m], np.zeros(int(m.sum())), "|", color="#cb181d", markersize=12)
        ax.set(title=str(name), xlabel="suspicion score", ylabel="density")
        _finish(ax)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_feature_projection(
    features: Any, mask: Any, path: str | Path, seed: int = 0, max_points: int = 5000, title: str | None = None
) -> Path | None:
    """Clean vs poisoned training features on their first two principal components (numpy PCA).

    Rows with NaN/inf are dropped (no figure when fewer than two are left); above ``max_points`` rows per group, a
    seeded random subset is used (for the PCA fit too), so large sets stay fast.
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
    if x.shape[0] < 2:
        _skip(path, f"{x.shape[0]} row(s) of finite features")
        return None
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    points, ratio = _pca2(x)
    ax.scatter(points[~m, 0], points[~m, 1], s=6, alpha=0.4, color="#4292c6", label=f"clean (n={(~m).sum()})")
    if m.any():
        ax.scatter(points[m, 0], points[m, 1], s=22, marker="x", color="#cb181d", label=f"poisoned (n={m.sum()})")
    ax.set(xlabel=f"PC1 ({ratio[0]:.1%} of variance)", ylabel=f"PC2 ({ratio[1]:.1%} of variance)")
    ax.set_title(title or "Training features, first two principal components")
    _finish(ax)
    return save_figure(fig, path)


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


def plot_poison_rate_sweep(
    records: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None
) -> Path | None:
    """ASR and CA against the poison rate (log x), one line per attack × trigger: the attack study of the paper.

    Uses the records without a defense when there are any (else all); rates ≤ 0 cannot sit on a log axis and are
    skipped; seeds at the same rate are averaged with a standard-deviation error bar. A line needs two or more rates
    (no figure when none has them: a single rate is a table entry, not a sweep).
    """
    rows = [r for r in records if _num(r.get("percent_poison")) > 0]
    undefended = [r for r in rows if r.get("defense") in _NO_DEFENSE]
    rows = undefended or rows
    labels = _labels(rows, (), always=("attack", "trigger"))
    lines = {}
    for line in dict.fromkeys(labels):
        mine = [r for r, lab in zip(rows, labels) if lab == line]
        rates = sorted({_num(r["percent_poison"]) for r in mine})
        if len(rates) > 1:
            lines[line] = (mine, rates)
    if not lines:
        _skip(path, "no attack × trigger was run at two or more poison rates")
        return None
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, name in zip(axes, ("asr", "ca"), ("attack success rate", "clean accuracy")):
        for line, (mine, rates) in lines.items():
            stats = [_mean_std(r.get(key) for r in mine if _num(r["percent_poison"]) == rate) for rate in rates]
            points = [(rate, m, s) for rate, (m, s) in zip(rates, stats) if not math.isnan(m)]
            if points:
                xs, ys, es = zip(*points)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=2, label=line)
        ax.set(ylabel=f"{name} ({key.upper()})", xlabel="poison rate (share of training set)", ylim=(0, 1.05))
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1))
        ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_baddist_separation(
    records: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None
) -> Path | None:
    """BadDist's separation on held-out images: the backdoored encoder's mean cosine to the clean encoder on clean
    images (``heldout_cos_clean``, near 1 = stealthy) and on triggered ones (``heldout_cos_trigger``, low = the
    trigger moves the embedding), one dot per seed and the mean ± std per setting.

    The harness keeps these means per model, not per image, so the spread drawn is between seeds. Settings are
    labelled by ``setting_label``; records without the two cosines are left out.
    """
    series = (("heldout_cos_clean", "clean images", "#2171b5"), ("heldout_cos_trigger", "triggered images", "#cb181d"))
    records = [r for r in records if all(not math.isnan(_num(r.get(k))) for k, _, _ in series)]
    if not records:
        _skip(path, "no model has held-out BadDist cosines (no BadDist attack)")
        return None
    labels = [setting_label(r) for r in records]
    groups = list(dict.fromkeys(labels))
    fig = Figure(figsize=(7.5, 1.8 + 0.6 * len(groups)))
    ax = fig.subplots()
    for j, (key, legend, colour) in enumerate(series):
        for i, group in enumerate(groups):
            values = [_num(r[key]) for r, lab in zip(records, labels) if lab == group]
            y = i + (j - 0.5) * 0.3
            ax.plot(
                values,
                np.full(len(values), y),
                "o",
                color=colour,
                alpha=0.5,
                markersize=5,
                label=legend if i == 0 else None,
            )
            mean, std = _mean_std(values)
            ax.errorbar([mean], [y], xerr=[std], fmt="|", color=colour, markersize=14, capsize=4)
    ax.axvline(0.0, color="grey", linestyle=":")
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ax.invert_yaxis()
    ax.set(
        xlim=(-1.05, 1.05),
        title=title or "BadDist: clean vs triggered embeddings",
        xlabel="cosine to the clean encoder (held-out test images; dots: seeds, bar: mean ± std)",
    )
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def plot_trigger_examples(path: str | Path, image_size: int = 96, seed: int = 0) -> Path:
    """One phantom chest radiograph ("No Finding") clean and with each built-in trigger at its defaults (patch,
    Fourier, blended; drawn from ``seed``), above the absolute change each trigger makes (stretched to its own
    maximum, printed in the title: the Fourier and blended triggers are hard to see by eye)."""
    labels = np.zeros((1, 14), dtype=np.float32)
    labels[0, 0] = 1.0
    clean = PhantomGenerator(image_size, seed).generate(labels)[0].astype(np.float64)
    triggers = {"patch": PatchTrigger(), "fourier": FourierTrigger(seed=seed), "blended": BlendedTrigger(seed=seed)}
    images = {"clean": clean, **{name: trigger(clean) for name, trigger in triggers.items()}}
    fig = Figure(figsize=(1.6 * len(images), 3.8), layout="constrained")
    axes = fig.subplots(2, len(images))
    for col, (name, image) in enumerate(images.items()):
        axes[0, col].imshow(image[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[0, col].set_title(name, fontsize=9)
        change = np.abs(image[0] - clean[0])
        peak = float(change.max())
        axes[1, col].imshow(
            change / peak if peak > 0 else change, cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest"
        )
        axes[1, col].set_title(f"|change|, max {peak:.3f}", fontsize=8)
    for ax in axes.ravel():
        ax.set(xticks=[], yticks=[])
    axes[1, 0].set_visible(False)  # the clean image changes nothing
    fig.suptitle(f"Triggers on a phantom radiograph ({image_size} px)", fontsize=10)
    return save_figure(fig, path)


def setting_label(record: Mapping[str, Any]) -> str:
    """A short name of an attacked model's setting, seed left out: ``clean``, ``badmatch/patch 5%``,
    ``baddist/fourier`` (a target other than No Finding is appended)."""
    attack = str(record.get("attack") or "?")
    if attack == "clean":
        return attack
    label = f"{attack}/{_label_part('trigger', record.get('trigger'))}"
    rate = _num(record.get("percent_poison"))
    if rate > 0:
        label += f" {100 * rate:g}%"
    target = record.get("target")
    return label if target in (None, "No Finding") else f"{label} →{target}"


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


def _finish(ax: Any, skipped: Sequence[str] = ()) -> None:
    """The legend; series left out for having one class only are listed under the plot."""
    ax.legend(fontsize=8, loc="best")
    if skipped:
        ax.text(
            0.99,
            0.01,
            "skipped (one class only): " + ", ".join(skipped),
            ha="right",
            va="bottom",
            transform=ax.transAxes,
            fontsize=7,
            color="grey",
        )


class NoFigureWarning(UserWarning):
    """A figure was not drawn: nothing to compare (no data, or one point where the figure is a curve)."""


def _skip(path: str | Path, reason: str) -> None:
    """Draw nothing: remove a figure of that name left by an earlier run, and warn why."""
    path = Path(path)
    path.unlink(missing_ok=True)
    warnings.warn(f"{path.name} not drawn: {reason}", NoFigureWarning, stacklevel=3)


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=120, bbox_inches="tight")
    return atomic_write(path, buffer.getvalue())
