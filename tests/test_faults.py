"""No silent wrong results from the harness: diverged or NaN models fail their cell, defenses cannot corrupt what the
next one sees, malformed plugin results and sys.exit()/Ctrl-C in a plugin are recorded, never ignored."""

from dataclasses import fields

import numpy as np
import pytest
import torch

from artmed.attacks.pipeline import AttackSpec
from artmed.defenses import registry
from artmed.defenses.activation_clustering import ActivationClustering
from artmed.defenses.base import DetectionResult, EvaluationContext, MitigationResult
from artmed.defenses.spectral import SpectralSignatures
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations.cli import main
from artmed.evaluations.config import DataConfig, DefenseSpec, StudyConfig, TrainConfig
from artmed.evaluations.harness import Harness
from artmed.evaluations.scoring import score_estimator
from artmed.evaluations.study import run_study, summary
from artmed.training import NonFiniteLossError, check_loss
from fake_plugins import plugin, register

pytestmark = pytest.mark.filterwarnings("ignore:.*label group:UserWarning")
REFERENCE = ["spectral_signatures", "activation_clustering"]


def config(out, defenses=REFERENCE, train_lr=1e-3, pretrain_lr=1e-3) -> StudyConfig:
    return StudyConfig(
        seed=0,
        output_dir=str(out),
        data=DataConfig(n_train=120, n_test=20, n_shadow=16, image_size=32),
        pretrain=TrainConfig(steps=5, batch_size=16, lr=pretrain_lr),
        train=TrainConfig(steps=5, batch_size=16, lr=train_lr),
        attacks=[AttackSpec("badmatch", percent_poison=0.05)],
        defenses=[DefenseSpec(name) for name in defenses],
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """SS and AC on the BadMatch model with no plugin before them."""
    result = Harness(config(tmp_path_factory.mktemp("ref") / "study"), verbose=False).run()
    return {d["defense"]: d for d in result.defenses}


def rows(result):
    return {d["defense"]: d for d in result.defenses}


def assert_same_as_reference(result, reference):
    for name in REFERENCE:
        got = rows(result)[name]
        assert got["status"] == "ok"
        for key in ("auroc", "tpr", "fpr", "removed"):
            assert got[key] == pytest.approx(reference[name][key], nan_ok=True), (name, key)


# ---------------------------------------------------------------------------------------------- non-finite models
def test_check_loss_names_the_step():
    check_loss(torch.tensor(1.5), 0, "x")
    with pytest.raises(NonFiniteLossError, match=r"BadDist: the loss is nan at step 4"):
        check_loss(torch.tensor(float("nan")), 3, "BadDist")
    with pytest.raises(NonFiniteLossError, match="inf"):
        check_loss(torch.tensor(float("inf")), 0, "x")


@pytest.mark.parametrize("stage", ["train", "pretrain"])
def test_diverged_training_fails_its_cells_instead_of_scoring_a_backdoor(tmp_path, stage):
    lrs = {f"{stage}_lr": 1e6}
    result = Harness(config(tmp_path / "study", **lrs), verbose=False).run()
    model = result.models[0]
    assert model["status"] == "failed" and "asr" not in model
    assert "NonFiniteLossError" in model["error"] and "at step" in model["error"]
    assert [d["status"] for d in result.defenses] == ["skipped", "skipped"]
    text = summary(result)
    assert "3 cell(s) did not finish" in text and "NonFiniteLossError" in text


def test_cli_exits_nonzero_when_a_cell_failed(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'out'}\n"
        "data: {n_train: 120, n_test: 20, n_shadow: 16, image_size: 32}\n"
        "pretrain: {steps: 3, batch_size: 16}\ntrain: {steps: 5, batch_size: 16, lr: 1000000.0}\n"
        "attacks: [{attack: badmatch, percent_poison: 0.05}]\n"
    )
    assert main(["run", "--config", str(path), "--quiet"]) == 1
    assert "did not finish" in capsys.readouterr().out


def test_nan_weights_cannot_be_scored():
    from artmed.data.default import make_default_dataset

    data = make_default_dataset(n_train=8, n_test=10, image_size=32, seed=0)
    task = data.tasks["rsna_like"]
    estimator = MedCLIPEstimator.tiny(task.prompts, image_size=32, seed=0)
    x = task.images.to_array()
    assert 0.0 <= score_estimator(estimator, x, task.targets, x, 0)["ca"] <= 1.0
    with torch.no_grad():
        next(estimator.model.vision_model.parameters()).fill_(float("nan"))
    estimator.clear_cache()
    with pytest.raises(ValueError, match=r"NaN or infinite on 10 of 10 clean test images"):
        score_estimator(estimator, x, task.targets, x, 0)


# ---------------------------------------------------------------------------------------------- shared state
def _write_labels(context):
    context.y_train[:] = 0


def _scale_features(context):
    context.features(SpectralSignatures().layer)[:] *= 10.0


def _reassign(context):
    context.y_train = np.zeros_like(context.y_train)
    context.feature_cache = {}
    n = context.n_train
    return DetectionResult(np.zeros(n), np.zeros(n, dtype=bool))


def _change_model(context):
    with torch.no_grad():
        for p in context.estimator.model.vision_model.parameters():
            p.mul_(0.0)
    n = context.n_train
    return DetectionResult(np.zeros(n), np.zeros(n, dtype=bool))


@pytest.mark.parametrize(
    "run, status, error",
    [
        (_write_labels, "failed", "read-only"),
        (_scale_features, "failed", "read-only"),
        (_reassign, "ok", None),
        (_change_model, "failed", "changed the shared model in place"),
    ],
)
def test_a_plugin_cannot_change_what_later_defenses_see(tmp_path, monkeypatch, reference, run, status, error):
    register(monkeypatch, first=plugin(run))
    result = Harness(config(tmp_path / "study", defenses=["first", *REFERENCE]), verbose=False).run()
    first = rows(result)["first"]
    assert first["status"] == status
    if error:
        assert error in first["error"]
    else:  # scored against the harness's own truth
        assert first["tpr"] == 0.0 and first["fpr"] == 0.0
    assert_same_as_reference(result, reference)


def _n(context):
    return context.n_train


@pytest.mark.parametrize(
    "run, kind, error",
    [
        (lambda c: DetectionResult(np.zeros(_n(c)), np.full(_n(c), 0.2)), "detection", "flags must be boolean"),
        (
            lambda c: DetectionResult(np.full(_n(c), np.nan), np.zeros(_n(c), bool)),
            "detection",
            "NaN or infinite score",
        ),
        (lambda c: DetectionResult(np.zeros(3), np.zeros(3, bool)), "detection", "returned 3 scores for 120"),
        (lambda c: MitigationResult(estimator=None), "mitigation", "estimator with predict()"),
        (lambda c: DetectionResult(np.zeros(_n(c)), np.zeros(_n(c), bool)), "mitigation", "returned DetectionResult"),
    ],
)
def test_malformed_results_are_failures(tmp_path, monkeypatch, run, kind, error):
    register(monkeypatch, bad=plugin(run, kind))
    result = Harness(config(tmp_path / "study", defenses=["bad"]), verbose=False).run()
    record = result.defenses[0]
    assert record["status"] == "failed" and error in record["error"]


def test_sys_exit_in_a_plugin_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch, reference):
    def leave(context):
        raise SystemExit(3)

    register(monkeypatch, quitter=plugin(leave))
    result = Harness(config(tmp_path / "study", defenses=["quitter", *REFERENCE]), verbose=False).run()
    assert rows(result)["quitter"]["status"] == "failed"
    assert rows(result)["quitter"]["error"].startswith("SystemExit(3)")
    assert_same_as_reference(result, reference)


def test_sys_exit_at_plugin_import_breaks_only_that_plugin(monkeypatch):
    class Exiting:
        name, value, dist = "exiting", "x:y", None

        def load(self):
            raise SystemExit(3)

    installed = registry.available
    monkeypatch.setattr(registry, "available", lambda: {**installed(), "exiting": Exiting()})
    classes, errors = registry.load_all()
    assert "spectral_signatures" in classes and "SystemExit(3)" in errors["exiting"]


def test_ctrl_c_in_a_defense_keeps_the_tables_and_says_so(tmp_path, monkeypatch):
    def interrupt(self, context):
        raise KeyboardInterrupt

    monkeypatch.setattr(ActivationClustering, "run", interrupt)
    result, paths = run_study(config(tmp_path / "study"), verbose=False)
    assert result.interrupted
    assert [(d["defense"], d["status"]) for d in result.defenses] == [
        ("spectral_signatures", "ok"),
        ("activation_clustering", "failed"),
    ]
    assert paths["models_csv"].exists() and paths["defenses_csv"].exists()
    assert "interrupted" in summary(result)
    cell = tmp_path / "study" / "cells" / "defense"
    assert any("activation_clustering" in p.name for p in cell.glob("*.json"))


def test_a_defense_cannot_reach_the_ground_truth(tmp_path, monkeypatch):
    """Nothing a defense is handed holds the poison mask, the triggered test images or the target class."""
    seen = {}

    def look(context):
        seen.update(vars(context))
        return DetectionResult(np.zeros(context.n_train), np.zeros(context.n_train, bool))

    register(monkeypatch, peek=plugin(look))
    truths = []
    context = Harness._context

    def spy(self, *args):
        pair = context(self, *args)
        truths.append(pair[1])
        return pair

    monkeypatch.setattr(Harness, "_context", spy)
    Harness(config(tmp_path / "study", defenses=["peek"]), verbose=False).run()
    names = {f.name for f in fields(EvaluationContext)}
    assert not names & {"poison_mask", "x_test_triggered", "target_class", "trigger"}
    (truth,) = truths  # the harness's own copy, handed to the defense's cell beside the context
    arrays = [v for v in seen.values() if isinstance(v, np.ndarray)]
    assert arrays and not any(a.shape == truth.poison_mask.shape and a.dtype == bool for a in arrays)
    assert not any(
        a.shape == truth.x_test_triggered.shape and np.array_equal(a, truth.x_test_triggered) for a in arrays
    )


def test_reported_models_are_scored_by_the_harness(tmp_path, monkeypatch):
    def repair(context):
        model = context.estimator.clone()
        context.report("step 1", model)
        return MitigationResult(model)

    register(monkeypatch, repair=plugin(repair, "mitigation"))
    result = Harness(config(tmp_path / "study", defenses=["repair"]), verbose=False).run()
    record = result.defenses[0]
    assert record["status"] == "ok" and [m["label"] for m in record["monitor"]] == ["step 1"]
    assert record["monitor"][0]["asr"] == pytest.approx(record["asr_after"])
    assert record["monitor"][0]["ca"] == pytest.approx(record["ca_after"]) == pytest.approx(record["ca_before"])
