"""Reading a study folder back for the comparison: errors naming a wrong folder, the explicit quick opt-in, rows per
defense kind (TPR at 5 % FPR recomputed from stored scores), ROC inputs per setting, mitigation trajectories."""

import numpy as np
import pytest

from artmed.evaluations import compare
from artmed.evaluations.compare import (
    QUICK,
    StudyFolderError,
    curves_by_setting,
    load_study,
    open_study,
    setting_label,
    trajectories,
)
from artmed.evaluations.metrics import detection_metrics
from artmed.evaluations.report import write_table
from artmed.evaluations.store import ResultStore

POISONED = {"attack": "badmatch", "trigger": "patch", "percent_poison": 0.05, "target": "No Finding"}


def _study_folder(root):
    """A study folder as the harness leaves it: tables, and cells holding scores and a mitigation's monitor."""
    rng = np.random.default_rng(0)
    store = ResultStore(root / "cells")
    models, defenses = [], []
    for seed in (0, 1):
        key = f"badmatch-patch-p0.05-s{seed}"
        models.append({"cell": f"model/{key}", **POISONED, "seed": seed, "status": "ok", "ca": 0.8, "asr": 0.9})
        mask = np.zeros(100, dtype=bool)
        mask[:5] = True
        scores = rng.normal(size=100) + 2 * mask
        detection = {
            "cell": f"defense/{key}+spectral",
            **POISONED,
            "seed": seed,
            "defense": "spectral",
            "kind": "detection",
            "status": "ok",
            "auroc": 0.9,
        }  # a table from before tpr_at_fpr5
        store.save(
            "defense",
            f"{key}+spectral",
            {**detection, "arrays": {"scores": scores, "flags": scores > 1.5, "poison_mask": mask}},
        )
        monitor = [{"label": f"prune {n}", "ca": 0.8 - 0.05 * n, "asr": 0.9 - 0.2 * n} for n in range(3)]
        pruning = {
            "cell": f"defense/{key}+fine_pruning",
            **POISONED,
            "seed": seed,
            "defense": "fine_pruning",
            "kind": "mitigation",
            "status": "ok",
            "ca_before": 0.8,
            "asr_before": 0.9,
            "ca_after": 0.7,
            "asr_after": 0.5,
        }
        store.save("defense", f"{key}+fine_pruning", {**pruning, "monitor": monitor})
        defenses += [detection, pruning]
    defenses.append(
        {
            "cell": "defense/clean-s0+spectral",
            "attack": "clean",
            "seed": 0,
            "defense": "spectral",
            "kind": "detection",
            "status": "failed",
            "error": "boom",
        }
    )
    write_table(models, root, name="models")
    write_table(defenses, root, name="defenses")
    return root


def test_a_wrong_folder_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # CI runs `artmed run` first, so the repository's own artmed-output/ exists
    with pytest.raises(StudyFolderError, match=f"{tmp_path / 'artmed-outptu'}.* does not exist"):
        open_study(str(tmp_path / "artmed-outptu"))
    (tmp_path / "figures").mkdir()
    with pytest.raises(StudyFolderError, match=f"{tmp_path}.* is not a study folder: it has no models.json"):
        open_study(tmp_path)
    with pytest.raises(StudyFolderError, match="'artmed-output' does not exist"):
        open_study(None)  # the default folder of `artmed run`, here absent: no fallback either


def test_quick_runs_the_quick_study_only_when_asked(tmp_path, monkeypatch):
    ran = []

    def fake_run(config, verbose):
        ran.append(config.output_dir)
        write_table([{"attack": "clean", "seed": 0, "status": "ok"}], config.output_dir, name="models")

    monkeypatch.setattr("artmed.evaluations.study.run_study", fake_run)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(compare.tempfile, "tempdir", None)
    study = open_study(f" {QUICK} ")
    assert ran == [str(study.folder)] and study.folder.name.startswith("artmed-quick-")
    assert study.note == f"ran the quick study (ARTMED_RESULTS={QUICK}) into {study.folder}"
    assert study.models == [{"attack": "clean", "seed": 0, "status": "ok"}] and study.defenses == []


def test_rows_by_kind_and_tpr_at_fpr5_from_stored_scores(tmp_path):
    study = load_study(_study_folder(tmp_path))
    assert study.note == f"results from {tmp_path}" and len(study.ok_models()) == 2
    detections = study.rows("detection")
    assert [(r["defense"], r["seed"]) for r in detections] == [("spectral", 0), ("spectral", 1)]  # failed left out
    arrays = study.arrays(detections[0])
    expected = detection_metrics(arrays["flags"], arrays["poison_mask"], arrays["scores"])["tpr_at_fpr5"]
    assert detections[0]["tpr_at_fpr5"] == expected and 0 < expected <= 1
    assert [r["defense"] for r in study.rows("mitigation")] == ["fine_pruning"] * 2 and study.rows("input") == []
    curves = curves_by_setting(study, detections)
    assert list(curves) == ["badmatch/patch 5%"] and len(curves["badmatch/patch 5%"]["spectral"]) == 2


def test_trajectories_from_the_monitor_or_before_and_after(tmp_path):
    study = load_study(_study_folder(tmp_path))
    rows = study.rows("mitigation")
    steps = trajectories(rows, study)
    assert [(s["seed"], s["step"], s["label"]) for s in steps[:3]] == [
        (0, 0, "prune 0"),
        (0, 1, "prune 1"),
        (0, 2, "prune 2"),
    ]
    assert steps[2]["asr"] == pytest.approx(0.5) and len(steps) == 6
    plain = trajectories(rows)  # the table's rows alone carry no monitor: the row's before and after
    assert [(s["label"], s["ca"], s["asr"]) for s in plain[:2]] == [("before", 0.8, 0.9), ("after", 0.7, 0.5)]


def test_setting_label():
    assert setting_label({"attack": "clean", "percent_poison": 0.0}) == "clean"
    assert setting_label(POISONED) == "badmatch/patch 5%"
    assert setting_label({"attack": "baddist", "trigger": "fourier", "percent_poison": 0.0}) == "baddist/fourier"
    assert (
        setting_label({**POISONED, "percent_poison": 0.0005, "target": "Pneumonia"})
        == "badmatch/patch 0.05% →Pneumonia"
    )
