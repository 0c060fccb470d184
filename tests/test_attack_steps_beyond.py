"""The attacks beyond the seed paper as built-in steps: each runs by name in a study, Carlini-Terzis and BadCLIP plant
their own trigger (``Poisoned.trigger``) and the harness scores and defends with it, BadCLIP gets the model the victim
starts from (``AttackContext.estimator``), and bad parameters are named with their step and field."""

import numpy as np
import pytest

from artmed.attacks import registry
from artmed.attacks.pipeline import AttackSpec, poison_training_set, run_attack
from artmed.attacks.poisoning.badclip import MiddlePatch
from artmed.attacks.poisoning.carlini_terzis import RandomPositionPatch
from artmed.attacks.poisoning.steps_beyond import BadCLIPStep, BadEncoderStep, CarliniTerzisStep
from artmed.attacks.triggers import PatchTrigger
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations.config import StudyConfig
from artmed.validation import FieldError
from toy_task import PROMPTS, SIZE, TEXT_LABELS, TEXTS, images


@pytest.fixture(scope="module")
def tiny():
    x, y, _ = images(64, seed=0)
    return MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, device="cpu"), x, y


def test_the_three_steps_are_registered_built_ins():
    assert registry.get("badencoder") is BadEncoderStep and BadEncoderStep.kind == "supply_chain"
    assert registry.get("carlini_terzis") is CarliniTerzisStep and CarliniTerzisStep.kind == "data"
    assert registry.get("badclip") is BadCLIPStep and BadCLIPStep.kind == "data"


def test_a_planted_trigger_is_returned_cached_and_reported(tiny):
    base, x, y = tiny
    spec = AttackSpec(steps=[{"name": "carlini_terzis", "params": {"num_poison": 5, "size": 4}}], seed=3)
    cache = {}
    outcome = run_attack(
        spec, base, x, y, TEXTS, TEXT_LABELS, fit_params={"steps": 1, "batch_size": 16, "verbose": False}, cache=cache
    )
    assert isinstance(outcome.trigger, RandomPositionPatch) and outcome.trigger.seed == 3
    assert outcome.poison_mask.sum() == 5
    rows = np.flatnonzero(outcome.poison_mask)
    assert np.array_equal(outcome.x_train[rows], outcome.trigger(x[rows]))  # the planted trigger is the scored one
    again = poison_training_set(spec, x, y, spec.context(), cache)
    assert again.trigger is outcome.trigger  # cached with the step's output
    # a later step that plants nothing keeps the planted trigger
    both = AttackSpec(steps=[{"name": "carlini_terzis", "params": {"num_poison": 5, "size": 4}}, "badmatch"], seed=3)
    assert isinstance(poison_training_set(both, x, y).trigger, RandomPositionPatch)
    assert poison_training_set(AttackSpec("badmatch"), x, y).trigger is None


def test_badclip_gets_the_model_after_the_supply_chain_steps(tiny):
    base, x, y = tiny
    spec = AttackSpec(
        steps=[{"name": "badclip", "params": {"steps": 2, "batch_size": 8, "patch_size": 4, "verbose": False}}],
        percent_poison=0.05,
    )
    with pytest.raises(ValueError, match=r"attack step 'badclip' needs the model the victim starts from"):
        poison_training_set(spec, x, y)
    before = base.model.state_dict()["logit_scale"].clone() if "logit_scale" in base.model.state_dict() else None
    outcome = run_attack(
        spec, base, x, y, TEXTS, TEXT_LABELS, fit_params={"steps": 1, "batch_size": 16, "verbose": False}
    )
    assert isinstance(outcome.trigger, MiddlePatch) and outcome.trigger.patch.shape == (x.shape[1], 4, 4)
    assert outcome.poison_mask.sum() == round(0.05 * len(x))
    if before is not None:
        assert base.model.state_dict()["logit_scale"].equal(before)
    # its output depends on the model it attacks: a supply-chain step before it changes its cache key
    after_encoder = AttackSpec(steps=["badencoder", "badclip"])
    assert after_encoder.step_keys()[1] != AttackSpec(steps=["badclip"]).step_keys()[0]
    assert (
        AttackSpec(steps=["badencoder", "carlini_terzis"]).step_keys()[1]
        == AttackSpec(steps=["carlini_terzis"]).step_keys()[0]
    )


def test_bad_parameters_name_the_step_and_field():
    cases = [
        (
            {"steps": [{"name": "badclip", "params": {"stepz": 2}}]},
            r"^steps\[0\]\.params: unknown parameter 'stepz' for BadCLIP \(attack step 'badclip'\)",
        ),
        ({"steps": [{"name": "badclip", "params": {"lr": -1.0}}]}, r"^steps\[0\]\.params: BadCLIP lr must be"),
        (
            {"steps": [{"name": "badclip", "params": {"seed": 1}}]},
            r"^steps\[0\]\.params: unknown parameter 'seed' for BadCLIP",
        ),
        (
            {"steps": [{"name": "badencoder", "params": {"settings": "huge"}}]},
            r"^steps\[0\]\.params: settings: unknown BadEncoder settings 'huge'",
        ),
        (
            {"steps": ["badmatch", {"name": "badencoder", "params": {"lambda1": -1}}]},
            r"^steps\[1\]\.params: BadEncoder lambda1 must be",
        ),
        (
            {"steps": [{"name": "carlini_terzis", "params": {"num_poison": 0}}]},
            r"^steps\[0\]\.params: CarliniTerzisStep num_poison must be",
        ),
        (
            {"steps": [{"name": "carlini_terzis", "params": {"trigger": "patch"}}]},
            r"^steps\[0\]\.params: unknown parameter 'trigger'",
        ),
    ]
    for kwargs, match in cases:
        with pytest.raises(FieldError, match=match):
            AttackSpec(**kwargs)


def test_each_step_runs_by_name_in_a_study_scored_and_defended_with_its_trigger(tmp_path, monkeypatch):
    """Every new step in a tiny study with an input screen (STRIP) and a model verdict (DECREE); every triggered test
    set the harness builds for Carlini-Terzis and BadCLIP (scoring and the defenses' truth) uses the planted trigger,
    so this fails if the spec's patch were used."""
    from artmed.evaluations.harness import Harness

    seen: list[tuple[str, str, bool]] = []
    triggered = Harness._triggered

    def spy(self, run, task, spec, trigger, x, planted=False):
        seen.append((spec.attack, type(trigger).__name__, planted))
        return triggered(self, run, task, spec, trigger, x, planted)

    monkeypatch.setattr(Harness, "_triggered", spy)
    config = StudyConfig.from_dict(
        {
            "output_dir": str(tmp_path / "out"),
            "seeds": [0],
            "data": {"n_train": 96, "n_test": 20, "n_shadow": 48, "image_size": 32},
            "pretrain": {"steps": 2, "batch_size": 16},
            "train": {"steps": 2, "batch_size": 16},
            "attacks": [
                {"steps": [{"name": "badencoder", "params": {"settings": "tiny", "steps": 2, "batch_size": 8}}]},
                {"steps": [{"name": "carlini_terzis", "params": {"num_poison": 4, "size": 4}}]},
                {
                    "steps": [{"name": "badclip", "params": {"steps": 2, "batch_size": 8, "patch_size": 4}}],
                    "percent_poison": 0.05,
                },
            ],
            "defenses": [
                {"name": "strip", "params": {"n_superimpose": 2}},
                {"name": "decree", "params": {"epochs": 2, "batch_size": 8}},
            ],
        }
    )
    result = Harness(config, verbose=False).run()
    assert [(m["attack"], m["status"]) for m in result.models] == [
        ("badencoder", "ok"),
        ("carlini_terzis", "ok"),
        ("badclip", "ok"),
    ], result.failed
    assert [m["n_poison"] for m in result.models] == [0, 4, round(0.05 * 96)]
    assert "badencoder_cos_trigger_reference" in result.models[0]
    assert all(d["status"] == "ok" for d in result.defenses), result.failed
    planted = {"carlini_terzis": "RandomPositionPatch", "badclip": "MiddlePatch"}
    for attack, name in planted.items():
        calls = [(t, p) for a, t, p in seen if a == attack]
        assert len(calls) >= 2 and set(calls) == {(name, True)}  # scoring and the defenses' triggered test images
    assert {t for a, t, _ in seen if a == "badencoder"} == {PatchTrigger.__name__}
    decree = next(d for d in result.defenses if d["attack"] == "badclip" and d["defense"] == "decree")
    assert 0.0 <= decree["mask_overlap"] <= 1.0
