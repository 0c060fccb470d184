"""``artmed bench --baseline``: the phase table from cell folders, the FLOP counts behind the GFLOP/s figures, the
option checks and how a failed step is reported (the two studies themselves are not run here: minutes)."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from artmed.attacks.poisoning.bad_dist import BadDist
from artmed.attacks.triggers import make_trigger
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations.bench import main, study
from artmed.evaluations.bench.study import (
    StudyRunError,
    _check_origin,
    _run,
    count_flops,
    phase_rows,
    phase_seconds,
    run_side,
    step_throughput,
)

PROMPTS = {"a": ["opacity"], "b": ["no finding"]}
SIZE = 32


def _cell(out, kind, key, record, mtime):
    path = out / "cells" / kind / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": 1, "kind": kind, "key": key, "record": record}))
    os.utime(path, (mtime, mtime))


def _study_folder(out, base_in_models):
    """One seed: base 10 s, clean 30 s and baddist 50 s of training (the first saved, clean, includes the base's
    10 s when `base_in_models`), two defenses on each model."""
    _cell(out, "model", "base-s0", {"cell": "base-s0", "seed": 0, "seconds": 10.0}, 1000)
    clean = 40.0 if base_in_models else 30.0
    _cell(out, "model", "clean-s0", {"seed": 0, "attack": "clean", "train_seconds": clean}, 1001)
    _cell(out, "model", "baddist-s0", {"seed": 0, "attack": "baddist", "train_seconds": 50.0}, 1002)
    for model, offset in (("clean", 0), ("baddist", 2)):
        _cell(out, "defense", f"{model}-s0+ss", {"seed": 0, "defense": "ss", "seconds": 1.0 + offset}, 1003)
        _cell(out, "defense", f"{model}-s0+strip", {"seed": 0, "defense": "strip", "seconds": 4.0}, 1003)
    _cell(out, "defense", "baddist-s0+scan", {"seed": 0, "defense": "scan", "status": "skipped"}, 1004)


def test_phase_table_from_two_cell_folders(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    _study_folder(old, base_in_models=False)
    _study_folder(new, base_in_models=True)
    baseline = phase_seconds(old, process_seconds=200.0, study_seconds=190.0, base_in_models=False)
    this = phase_seconds(new, process_seconds=150.0, study_seconds=145.0, base_in_models=True)
    assert baseline == {
        "startup + imports": 10.0,
        "base model": 10.0,
        "model: clean": 30.0,
        "model: baddist": 50.0,
        "defense: ss": 4.0,
        "defense: strip": 8.0,
        "rest": 200.0 - 10 - 10 - 30 - 50 - 4 - 8,
        "total": 200.0,
    }
    assert this["model: clean"] == 30.0  # the base model's 10 s taken out of the seed's first model
    assert this["startup + imports"] == 5.0
    assert this["rest"] == pytest.approx(150.0 - 5 - 10 - 30 - 50 - 4 - 8)
    rows = {row["phase"]: row for row in phase_rows(baseline, {**this, "defense: new": 2.0})}
    assert list(rows)[-2:] == ["rest", "total"]
    assert rows["total"]["ratio"] == pytest.approx(200.0 / 150.0)
    assert rows["model: baddist"] == {"phase": "model: baddist", "baseline_s": 50.0, "this_s": 50.0, "ratio": 1.0}
    assert rows["rest"]["ratio"] == pytest.approx(88.0 / 43.0)
    assert rows["defense: new"]["baseline_s"] is None and rows["defense: new"]["ratio"] is None


def test_parallel_phases_are_the_cells_seconds_without_a_rest(tmp_path):
    _study_folder(tmp_path, base_in_models=False)
    phases = phase_seconds(tmp_path, process_seconds=60.0, study_seconds=55.0, base_in_models=False, parallel=True)
    assert phases["model: baddist"] == 50.0 and phases["total"] == 60.0  # the cells overlapped: 104 s in 60 s
    assert phases["rest"] is None
    rows = {row["phase"]: row for row in phase_rows({"rest": 8.0, "total": 120.0}, phases)}
    assert rows["rest"]["ratio"] is None and rows["total"]["ratio"] == pytest.approx(2.0)


def _estimator(batch_size=8):
    return MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, device="cpu", batch_size=batch_size)


def _data(n=16):
    rng = np.random.default_rng(0)
    images = rng.random((n, 1, SIZE, SIZE), dtype=np.float32)
    labels = np.eye(14, dtype=np.float32)[rng.integers(0, 14, n)]
    return images, labels


def test_training_step_flops_are_positive_and_linear_in_the_batch():
    images, labels = _data()
    texts = ["small left pleural effusion"] * 8  # one length: the text side scales with the batch alone

    def flops(batch):
        estimator = _estimator()
        fit = {"texts": texts, "text_labels": labels[:8], "batch_size": batch, "steps": 1, "verbose": False}
        return count_flops(lambda: estimator.fit(images, labels, **fit))

    small, large = flops(4), flops(8)
    assert small > 0
    assert large / small == pytest.approx(2.0, rel=0.05)


def test_conv_flops_match_the_formula():
    x, w = torch.zeros(2, 3, 10, 10), torch.zeros(5, 3, 3, 3)
    assert count_flops(lambda: F.conv2d(x, w, padding=1)) == 2 * 2 * 5 * 3 * 9 * 10 * 10


def test_baddist_step_counts_the_student_forward_backward_and_at_most_a_teacher_forward():
    """A BadDist step trains the student on the clean + triggered batch (forward + backward) and takes the frozen
    teacher's embeddings of that batch: a forward per step, or none where they are computed once up front."""
    estimator = _estimator()
    images, _ = _data()
    student = estimator.clone().model.vision_model.train()
    pixels = torch.rand(16, 1, SIZE, SIZE)
    train = count_flops(lambda: student(pixels).sum().backward())
    with torch.no_grad():
        forward = count_flops(lambda: student(pixels))

    def distil(k):
        return BadDist(estimator, make_trigger("patch"), steps=k, batch_size=8, verbose=False).poison_estimator(images)

    row = step_throughput("BadDist", distil, 16, 3, estimator.device)
    assert train <= row["gflop_per_step"] * 1e9 <= train + forward
    assert row["gflop_once"] >= 0


def test_step_throughput_reports_gflop_per_step_and_rate():
    estimator = _estimator(batch_size=4)
    images, labels = _data()
    texts = ["no effusion"] * 4

    def fit(k):
        return estimator.fit(images, labels, texts=texts, text_labels=labels[:4], steps=k, verbose=False)

    row = step_throughput("training", fit, 4, 3, estimator.device)
    assert row["step"] == "training" and row["steps"] == 3 and row["batch"] == 4
    assert row["gflop_per_step"] > 0 and row["seconds"] > 0
    assert row["gflop_once"] == pytest.approx(0.0, abs=1e-9)  # training does nothing besides its steps
    total = row["gflop_once"] + 3 * row["gflop_per_step"]
    assert row["gflop_s"] == pytest.approx(total / row["seconds"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--study", "none", "--baseline", "HEAD"], "--baseline compares the study"),
        (["--study", "quick", "--seeds", "2"], "--seeds and --workers set the study compared with --baseline"),
        (["--study", "quick", "--workers", "2"], "--seeds and --workers set the study compared with --baseline"),
        (["--study", "quick", "--baseline", "HEAD", "--workers", "0"], "--workers must be a positive integer"),
        (["--study", "quick", "--baseline", "HEAD", "--seeds", "0"], "--seeds must be >= 1"),
        (["--study", "quick", "--baseline", "no-such-rev-x1"], "'no-such-rev-x1' is not a commit.*fatal"),
    ],
)
def test_baseline_options_are_checked_before_any_work(tmp_path, args, message):
    with pytest.raises(ValueError, match=message):
        main([*args, "--sizes", "--extract", "none", "--out", str(tmp_path / "b.json")])


def test_a_failed_step_names_it_with_the_tail_of_its_output():
    script = "import sys; print('x' * 5000); print('the real cause'); sys.exit(3)"
    with pytest.raises(StudyRunError, match=r"(?s)installing the baseline failed \(exit status 3\):.*the real cause"):
        _run([sys.executable, "-c", script], "installing the baseline")


def test_failed_cells_and_a_foreign_artmed_are_errors(tmp_path, monkeypatch):
    result = {"failed": ["model/clean-s0: failed: boom"], "study_seconds": 1.0}
    monkeypatch.setattr(study, "RUNNER", f"print(MARK + {json.dumps(json.dumps(result))})")
    (tmp_path / "out").mkdir()
    with pytest.raises(StudyRunError, match="the baseline study has 1 failed cell.*boom"):
        run_side("baseline", tmp_path / "out", "quick", 1, 0, "cpu", 1, tmp_path / "site")
    side = {"artmed_file": "/repo/artmed/__init__.py", "defense_file": "/site/artmed/defenses/spectral.py"}
    with pytest.raises(StudyRunError, match="imported /repo/artmed/__init__.py, which is not in /site/artmed"):
        _check_origin("baseline", side, Path("/site/artmed"), Path("/site/artmed"))
