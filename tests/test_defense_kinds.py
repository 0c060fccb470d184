"""The four defense kinds through the harness: input screens are scored on clean vs triggered test inputs, model
verdicts against the truth (every attacked model is backdoored), with the inverted mask's overlap with the trigger."""

import numpy as np
import pytest

from artmed.attacks.pipeline import AttackSpec
from artmed.defenses.base import InputScreen, ModelVerdict
from artmed.evaluations.config import DataConfig, DefenseSpec, StudyConfig, TrainConfig
from artmed.evaluations.harness import Harness
from artmed.evaluations.metrics import input_screen_metrics
from artmed.evaluations.study import summary
from fake_plugins import plugin, register

pytestmark = pytest.mark.filterwarnings("ignore:.*label group:UserWarning")
SIZE = 32


@pytest.fixture
def study(tmp_path, monkeypatch):
    def run(**plugins):
        register(monkeypatch, **plugins)
        config = StudyConfig(
            seed=0,
            output_dir=str(tmp_path / "study"),
            data=DataConfig(n_train=120, n_test=20, n_shadow=16, image_size=SIZE),
            pretrain=TrainConfig(steps=3, batch_size=16),
            train=TrainConfig(steps=3, batch_size=16),
            attacks=[AttackSpec("clean"), AttackSpec("badmatch", percent_poison=0.05)],
            defenses=[DefenseSpec(name) for name in plugins],
        )
        return Harness(config, verbose=False).run()

    return run


def corner_darkness(x):
    """Suspicion = how dark the bottom-right corner is: the patch trigger is a black square there."""
    return -np.asarray(x)[..., -3:, -3:].mean(axis=(1, 2, 3))


def test_input_screen_metrics():
    clean, triggered = np.arange(100.0), np.array([50.0, 98.5, 200.0, 300.0])
    m = input_screen_metrics(clean, triggered, threshold=97.0)
    assert m["far_frr1"] == 0.5  # the cut rejecting 1 % of clean inputs is 99: 50 and 98.5 pass it
    assert m["far_frr5"] == 0.25  # cut 95: only 50 passes
    assert m["frr"] == 0.02 and m["far"] == 0.25
    assert m["auroc"] == pytest.approx(1 - (49.5 + 1) / 400)  # 49 clean above 50 (+ a tie), 1 above 98.5
    with pytest.raises(ValueError, match="triggered_scores contain NaN"):
        input_screen_metrics(clean, [np.nan])


def test_input_screen_is_scored_by_the_harness_on_inputs_it_never_saw(study):
    seen = {}

    def screen(context):
        seen["n_test"] = len(context.x_test)
        return InputScreen(corner_darkness, threshold=-0.05)

    result = study(corner=plugin(screen, "input"))
    poisoned = next(d for d in result.defenses if d["attack"] == "badmatch")
    assert poisoned["status"] == "ok" and poisoned["kind"] == "input"
    arrays = {k: np.asarray(v) for k, v in result.arrays[poisoned["cell"]].items()}
    assert arrays["clean_scores"].shape == arrays["triggered_scores"].shape == (seen["n_test"],)
    assert poisoned["auroc"] >= 0.9  # measured 0.975: some phantoms have a dark corner of their own
    expected = input_screen_metrics(arrays["clean_scores"], arrays["triggered_scores"], threshold=-0.05)
    assert {k: poisoned[k] for k in expected} == expected
    assert (arrays["triggered_scores"] == 0.0).all()  # every triggered input: a black corner
    assert "Input screens" in summary(result)


def test_model_verdict_against_the_truth_and_mask_overlap(study):
    def verdict(context):
        mask = np.zeros((SIZE, SIZE))
        mask[-4:, -4:] = 1.0  # the corner: inside the patch
        mask[:2, :2] = 1.0  # and a decoy outside it
        return ModelVerdict(score=0.7, backdoored=True, threshold=0.5, extra={"mask": mask})

    result = study(decree_like=plugin(verdict, "model"))
    clean, poisoned = result.defenses
    assert clean["status"] == poisoned["status"] == "ok"
    assert clean["backdoored"] is False and clean["verdict_correct"] is False and "mask_overlap" not in clean
    assert poisoned["backdoored"] is True and poisoned["verdict_correct"] is True
    assert poisoned["model_score"] == 0.7 and poisoned["model_flagged"] == 1.0
    assert poisoned["mask_overlap"] == pytest.approx(16 / 20)  # the 4x4 corner lies inside the 4-5 px patch
    assert "Model verdicts" in summary(result)


@pytest.mark.parametrize(
    "kind, run, error",
    [
        ("input", lambda c: InputScreen(lambda x: np.zeros(3)), "score() gave shape (3,)"),
        ("input", lambda c: InputScreen(lambda x: np.full(len(x), np.nan)), "NaN"),
        ("model", lambda c: InputScreen(corner_darkness), "returned InputScreen, not a ModelVerdict"),
        ("bogus", lambda c: None, "declares kind 'bogus'"),
    ],
)
def test_malformed_results_of_the_new_kinds_fail_their_cell(study, kind, run, error):
    result = study(bad=plugin(run, kind))
    assert all(d["status"] == "failed" and error in d["error"] for d in result.defenses)


def test_result_types_check_their_fields():
    with pytest.raises(ValueError, match="score must be callable"):
        InputScreen(score=3)
    with pytest.raises(ValueError, match="finite number"):
        ModelVerdict(score=float("nan"), backdoored=True)
    with pytest.raises(ValueError, match="must be a bool"):
        ModelVerdict(score=0.5, backdoored=0.9)
