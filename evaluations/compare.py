"""A finished study folder read back for comparing defenses: tidy rows per defense kind, per-seed arrays and curves.

``open_study`` takes what the user named (``ARTMED_RESULTS`` in the notebook): a folder ``artmed run`` wrote, or
the explicit opt-in ``"quick"``, which runs the seconds-long quick study into a new temporary folder. Anything else
that is not a study folder is an error naming it: a mistyped path never turns into other results shown under the
same headings. ``Study`` holds the tables (``models.json``, ``defenses.json``) and reads a defense cell's arrays
(scores, poison mask, STRIP entropies) and intermediate models (``monitor``) from ``cells/`` when asked.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from artmed.evaluations.metrics import detection_metrics
from artmed.evaluations.report import read_table, setting_label
from artmed.evaluations.store import ResultStore

__all__ = [
    "QUICK",
    "Study",
    "StudyFolderError",
    "open_study",
    "load_study",
    "setting_label",
    "curves_by_setting",
    "trajectories",
]

QUICK = "quick"
"""The value of ``ARTMED_RESULTS`` (``open_study``'s ``source``) that runs the quick study into a temporary folder."""
SETTING_KEYS = ("attack", "trigger", "percent_poison", "target")


class StudyFolderError(ValueError):
    """The named results folder does not exist or is not a folder ``artmed run`` wrote."""


@dataclass
class Study:
    """One study folder: its model and defense rows (every status) and a reader for the cells behind them."""

    folder: Path
    models: list[dict[str, Any]]
    defenses: list[dict[str, Any]]
    note: str = ""
    _cells: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def ok_models(self) -> list[dict[str, Any]]:
        """The attacked models that finished."""
        return [r for r in self.models if r.get("status", "ok") == "ok"]

    def rows(self, kind: str) -> list[dict[str, Any]]:
        """Finished defense rows of one kind ("detection", "mitigation", "input", "model"); detection rows get
        ``tpr_at_fpr5`` from their stored scores when the table predates that column."""
        rows = [dict(r) for r in self.defenses if r.get("kind") == kind and r.get("status", "ok") == "ok"]
        if kind == "detection":
            for row in rows:
                if not _finite(row.get("tpr_at_fpr5")):
                    arrays = self.arrays(row)
                    if "scores" in arrays and "poison_mask" in arrays:
                        row["tpr_at_fpr5"] = detection_metrics(
                            arrays.get("flags", np.zeros_like(arrays["scores"])),
                            arrays["poison_mask"],
                            arrays["scores"],
                        )["tpr_at_fpr5"]
        return rows

    def cell(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The stored cell record behind a defense row (arrays loaded), read once; {} when it is missing."""
        name = row.get("cell")
        if not isinstance(name, str) or "/" not in name:
            return {}
        if name not in self._cells:
            kind, key = name.split("/", 1)
            try:
                self._cells[name] = ResultStore(self.folder / "cells").load(kind, key)
            except KeyError:
                self._cells[name] = {}
        return self._cells[name]

    def arrays(self, row: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The per-sample arrays of a defense row's cell (``scores``, ``flags``, ``poison_mask``, ...)."""
        arrays = self.cell(row).get("arrays") or {}
        return {k: np.asarray(v) for k, v in arrays.items()}


def open_study(source: str | Path | None, default: str = "artmed-output") -> Study:
    """The study ``source`` names: a folder with ``models.json`` (``default`` when None or empty), or ``QUICK``.

    A path that does not exist, or a folder without ``models.json``, raises ``StudyFolderError`` naming it; only
    ``QUICK`` runs a study (the quick preset, into a new temporary folder, said in ``Study.note``).
    """
    text = str(source).strip() if source is not None else ""
    if text == QUICK:
        from artmed.evaluations.study import quick_config, run_study

        folder = Path(tempfile.mkdtemp(prefix="artmed-quick-"))
        run_study(quick_config(str(folder)), verbose=False)
        return load_study(folder, note=f"ran the quick study (ARTMED_RESULTS={QUICK}) into {folder}")
    return load_study(Path(text or default).expanduser())


def load_study(folder: str | Path, note: str = "") -> Study:
    """Read a study folder's ``models.json`` and (when the study ran defenses) ``defenses.json``."""
    folder = Path(folder)
    if not folder.exists():
        raise StudyFolderError(
            f"results folder {str(folder)!r} does not exist (set ARTMED_RESULTS to a folder "
            f"`artmed run` wrote, or to {QUICK!r} to run the quick study)"
        )
    if not (folder / "models.json").is_file():
        raise StudyFolderError(
            f"{str(folder)!r} is not a study folder: it has no models.json (the table `artmed run` "
            "writes beside cells/ and figures/)"
        )
    defenses = folder / "defenses.json"
    return Study(
        folder,
        read_table(folder / "models.json"),
        read_table(defenses) if defenses.is_file() else [],
        note=note or f"results from {folder}",
    )


def curves_by_setting(study: Study, rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[tuple]]]:
    """Detection rows' stored ``(scores, poison_mask)`` per attacked setting, then per defense, one pair per seed;
    settings with no poisoned row (the clean model) are left out."""
    out: dict[str, dict[str, list[tuple]]] = {}
    for row in rows:
        arrays = study.arrays(row)
        if "scores" in arrays and "poison_mask" in arrays and arrays["poison_mask"].any():
            out.setdefault(setting_label(row), {}).setdefault(str(row["defense"]), []).append(
                (arrays["scores"], arrays["poison_mask"].astype(bool))
            )
    return out


def trajectories(rows: Sequence[Mapping[str, Any]], study: Study | None = None) -> list[dict[str, Any]]:
    """The models each mitigation row handed to ``context.report`` on its way (fine-pruning: after each pruning
    step, then after fine-tuning), as the harness scored them: one row per (mitigation row, step) with ``defense``,
    ``setting``, ``seed``, ``step`` (its order), ``label``, ``ca`` and ``asr``.

    The steps are the row's ``monitor`` (the harness's in-memory records carry it), else its cell's in ``study``
    (the tables on disk leave lists out); a mitigation that reported nothing gets "before" and "after" from its row.
    """
    out = []
    for row in rows:
        monitor = row.get("monitor") or (study.cell(row).get("monitor") if study is not None else None) or []
        steps = [dict(m) for m in monitor if isinstance(m, Mapping)] or [
            {"label": "before", "ca": row.get("ca_before"), "asr": row.get("asr_before")},
            {"label": "after", "ca": row.get("ca_after"), "asr": row.get("asr_after")},
        ]
        base = {"defense": row.get("defense"), "setting": setting_label(row), "seed": row.get("seed")}
        out += [
            {**base, "step": i, "label": str(s.get("label")), "ca": s.get("ca"), "asr": s.get("asr")}
            for i, s in enumerate(steps)
            if _finite(s.get("ca")) and _finite(s.get("asr"))
        ]
    return out


def _finite(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.number))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(float(value))
    )
