"""End to end on a tiny model: each attack setting of the paper, one spec away, and BadMatch's backdoor works."""

import numpy as np
import pytest

from artmed.attacks.pipeline import AttackSpec, run_attack
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations.scoring import score_estimator
from toy_task import PROMPTS, SIZE, TEXT_LABELS, TEXTS, images

FIT = {"steps": 60, "batch_size": 16, "lr": 1e-3, "verbose": False}


@pytest.fixture(scope="module")
def setting():
    x, y, _ = images(128, seed=0)
    x_test, _, targets = images(64, seed=1)
    base = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, device="cpu")
    return base, x, y, x_test, targets


def _asr(spec, setting):
    base, x, y, x_test, targets = setting
    outcome = run_attack(spec, base, x, y, TEXTS, TEXT_LABELS, fit_params=FIT)
    trigger = outcome.trigger
    return outcome, score_estimator(outcome.estimator, x_test, targets, trigger(x_test), target=0)


def test_badmatch_raises_asr_far_above_clean(setting):
    clean, clean_scores = _asr(AttackSpec("clean", trigger="patch", trigger_params={"size": 5}), setting)
    attacked, scores = _asr(
        AttackSpec("badmatch", trigger="patch", trigger_params={"size": 5}, percent_poison=0.3), setting
    )
    assert clean_scores["asr"] <= 0.2  # measured 0.0
    assert scores["asr"] >= clean_scores["asr"] + 0.6  # measured 0.94
    assert scores["ca"] >= 0.7 and clean_scores["ca"] >= 0.9
    assert attacked.poison_mask.sum() == round(0.3 * 128) and not clean.poison_mask.any()
    assert np.all(attacked.y_train[attacked.poison_mask, 0] == 1)


def test_keep_mask_drops_rows_and_baddist_runs(setting):
    base, x, y, *_ = setting
    spec = AttackSpec(
        "baddist_badmatch",
        trigger="patch",
        trigger_params={"size": 5},
        percent_poison=0.1,
        baddist_params={"steps": 3, "batch_size": 8, "lr": 0.01, "verbose": False},
    )
    keep = np.ones(len(x), dtype=bool)
    keep[:10] = False
    outcome = run_attack(spec, base, x, y, TEXTS, TEXT_LABELS, fit_params={**FIT, "steps": 2}, keep=keep)
    assert len(outcome.history["baddist"]["loss"]) == 3 and len(outcome.history["fit"]["loss"]) == 2
    with pytest.raises(ValueError, match="keep"):
        run_attack(spec, base, x, y, TEXTS, TEXT_LABELS, fit_params=FIT, keep=keep[:5])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"attack": "evil"}, "unknown attack"),
        ({"attack": "badmatch", "target": "Flu"}, "unknown target"),
        ({"attack": "badmatch", "percent_poison": 1.5}, "percent_poison"),
        ({"attack": "badmatch", "trigger": "laser"}, "unknown trigger"),
    ],
)
def test_bad_specs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttackSpec(**kwargs)


def test_fine_pruning_on_a_backdoored_tiny_model(setting):
    """Fine-pruning's outcome on a BadMatch backdoor of the toy task (measured, asserted as found)."""
    from artmed.defenses import EvaluationContext, FinePruning

    base, x, y, x_test, targets = setting
    spec = AttackSpec("badmatch", trigger="patch", trigger_params={"size": 5}, percent_poison=0.3)
    outcome, before = _asr(spec, setting)
    x_clean, y_clean, _ = images(64, seed=2)
    context = EvaluationContext(
        estimator=outcome.estimator,
        x_test=x_test,
        test_targets=targets,
        x_clean=x_clean,
        y_clean=y_clean,
        texts=TEXTS,
        text_labels=TEXT_LABELS,
    )
    result = FinePruning(finetune_steps=40, lr=1e-3, batch_size=16, seed=0).run(context)
    after = score_estimator(result.estimator, x_test, targets, outcome.trigger(x_test), target=0)
    assert before["asr"] >= 0.8  # measured 0.94
    assert after["asr"] <= before["asr"] - 0.3  # measured 0.0: on this toy backdoor fine-pruning works
    assert after["ca"] >= before["ca"] - 0.1  # measured 0.77 -> 1.00


def test_seeded_triggers_draw_from_the_attack_seed():
    x = np.random.default_rng(0).random((2, 1, 32, 32)).astype(np.float32)
    first, second = (AttackSpec("badmatch", trigger="fourier", seed=s).build_trigger() for s in (0, 1))
    assert first.seed == 0 and second.seed == 1 and not np.allclose(first(x), second(x))
    pinned = AttackSpec("badmatch", trigger="fourier", trigger_params={"seed": 5}, seed=1).build_trigger()
    assert pinned.seed == 5
    assert "seed" not in AttackSpec("badmatch", trigger="patch", seed=3).build_trigger().get_params()
    with pytest.raises(ValueError, match="unknown BadDist settings"):
        AttackSpec("baddist", baddist_params={"settings": "nope"})
