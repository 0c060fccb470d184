"""STRIP on tiny MedCLIPs: it separates triggered from clean inputs on a BadMatch-backdoored model and not on a clean
one; its threshold rejects about `frr` of clean inputs; seeded; the model is untouched; parameter checks; through
the harness; next to ART's own STRIP."""

import numpy as np
import pytest
import torch
from art.defences.transformer.poisoning import STRIP as ARTSTRIP
from art.estimators.poison_mitigation.strip.strip import combine_images

from artmed.attacks.pipeline import AttackSpec
from artmed.attacks.poisoning import BadMatch
from artmed.data.dataset import ArrayImageSet
from artmed.defenses import registry
from artmed.defenses.base import EvaluationContext, InputScreen
from artmed.defenses.strip import STRIP
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations.config import DataConfig, DefenseSpec, StudyConfig, TrainConfig
from artmed.evaluations.harness import Harness
from artmed.evaluations.metrics import input_screen_metrics
from toy_task import PROMPTS, SIZE, TEXT_LABELS, TEXTS, TRIGGER, images

pytestmark = pytest.mark.filterwarnings("ignore:.*label group:UserWarning")
FAST = dict(verbose=False)
BLEND = dict(superimpose="blend", overlays="distinct", **FAST)
"""artmed's former superimposition, which the measured numbers below are for. The released sum, clipped to the
pixel range, brightens the patch's dark squares and the backdoor no longer fires: on this toy, AUROC 0.54 at
N = 20 and 100 (seeds 0-2), against 0.80-0.83 blended (``test_released_sum_does_not_separate_a_pasted_patch``)."""


def model(poisoned):
    """A tiny model trained 60 steps on the toy task, BadMatch-poisoned (30 % triggered, relabelled "No Finding")
    or clean."""
    x, y, _ = images(128, seed=0)
    if poisoned:
        x, y = BadMatch(TRIGGER, target="No Finding", percent_poison=0.3, seed=0).poison(x, y)
    estimator = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, device="cpu")
    estimator.fit(x, y, texts=TEXTS, text_labels=TEXT_LABELS, steps=60, batch_size=16, lr=1e-3, verbose=False)
    return estimator


@pytest.fixture(scope="module")
def data():
    x_test, _, targets = images(64, seed=1)
    x_clean, y_clean, _ = images(64, seed=2)
    return x_test, targets, TRIGGER(x_test), x_clean, y_clean


def context_of(estimator, data):
    x_test, targets, _, x_clean, y_clean = data
    return EvaluationContext(estimator=estimator, x_test=x_test, test_targets=targets, x_clean=x_clean, y_clean=y_clean)


@pytest.fixture(scope="module")
def backdoored(data):
    return model(poisoned=True)


def screened(defense, estimator, data):
    """The screen of ``defense`` on ``estimator``, with its metrics on the clean test images and their triggered
    copies."""
    x_test, _, triggered, _, _ = data
    screen = defense.run(context_of(estimator, data))
    return screen, input_screen_metrics(screen.score(x_test), screen.score(triggered), screen.threshold)


def test_separates_triggered_inputs_on_a_backdoored_model(backdoored, data):
    _, targets, triggered, _, _ = data
    asr = (backdoored.predict(triggered).argmax(1)[targets != 0] == 0).mean()
    assert asr >= 0.8  # measured 0.94: the backdoor works
    before = {k: v.clone() for k, v in backdoored.model.state_dict().items()}
    screen, m = screened(STRIP(n_superimpose=20, **BLEND), backdoored, data)
    assert isinstance(screen, InputScreen)
    assert m["auroc"] >= 0.7  # measured 0.815 (STRIP seeds 1-3: 0.84, 0.82, 0.81; n_superimpose 10, 100: 0.80, 0.815)
    assert m["far_frr5"] <= 0.7  # measured 0.44 (far_frr1 0.53)
    assert m["frr"] <= 0.1  # its own threshold rejects 0 of the 64 clean test images (frr=0.01)
    after = backdoored.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "STRIP changed the model"
    extra = screen.extra
    assert extra["n_threshold"] == extra["n_pool"] == 32 and extra["clean_entropies"].shape == (32,)
    assert screen.threshold == pytest.approx(-extra["entropy_threshold"])
    assert extra["entropy_threshold"] < extra["clean_entropy_mean"]  # Phi^-1(0.01) < 0
    assert np.all((extra["clean_entropies"] >= 0) & (extra["clean_entropies"] <= 1))  # bits, 2 classes


def test_no_separation_on_a_clean_model(data):
    """Without a backdoor, the trigger patch does not make predictions consistent under superimposition: triggered
    inputs score no lower entropy than clean ones (measured AUROC 0.40: the patch even adds uncertainty), and the
    threshold passes nearly all of them."""
    _, m = screened(STRIP(n_superimpose=20, **BLEND), model(poisoned=False), data)
    assert m["auroc"] <= 0.65  # measured 0.395
    assert m["far"] >= 0.8 and m["frr"] <= 0.1  # measured 1.0 and 0.0


def test_entropy_and_superimposition_match_the_paper(backdoored, data):
    """Eqs. 1-3 by hand on the blends ART's ``combine_images`` makes (the ``superimpose="blend"`` option), with the
    distinct overlays the screen drew."""
    x_test, _, _, x_clean, _ = data
    defense = STRIP(n_superimpose=4, batch_size=8, seed=3, superimpose="blend", overlays="distinct", **FAST)
    pool = x_clean[:10]
    entropy = defense.entropy(backdoored, x_test[:5], pool, stream=2)
    rng = np.random.default_rng(np.random.SeedSequence([3, 2]))
    for i in range(5):
        overlays = rng.choice(10, size=4, replace=False)
        blends = np.stack([combine_images(x_test[i], pool[j], alpha=0.5) for j in overlays])
        p = backdoored.predict(blends).astype(np.float64)
        assert entropy[i] == pytest.approx(np.mean(-np.sum(p * np.log2(p), axis=1)), rel=1e-5)
    assert np.array_equal(entropy, defense.entropy(backdoored, x_test[:5], pool, stream=2))


def test_released_sum_does_not_separate_a_pasted_patch(backdoored, data):
    """The defaults (the release's superimposition, min(x + x_n, 1), N = 100) on the same backdoored model: the
    overlays brighten the patch's dark squares to the clean image's level, so triggered copies lose the trigger and
    their entropy is no lower than clean inputs' (measured AUROC 0.544, FAR 1.0; blended 0.796)."""
    _, m = screened(STRIP(**FAST), backdoored, data)
    assert m["auroc"] <= 0.65 and m["far"] >= 0.8


def test_seeded_and_paired(backdoored, data):
    x_test, _, triggered, _, _ = data
    first, again, other = (STRIP(n_superimpose=5, seed=s, **FAST).run(context_of(backdoored, data)) for s in (5, 5, 6))
    assert first.threshold == again.threshold != other.threshold
    assert np.array_equal(first.score(x_test[:8]), again.score(x_test[:8]))
    assert np.array_equal(first.score(x_test[:8]), first.score(x_test)[:8])  # the i-th input: the same overlays
    assert not np.array_equal(first.score(x_test[:8]), other.score(x_test[:8]))


def test_image_sets_score_as_arrays(backdoored, data):
    x_test, _, _, x_clean, y_clean = data
    defense = STRIP(n_superimpose=3, **FAST)
    arrays = defense.run(EvaluationContext(estimator=backdoored, x_clean=x_clean[:12]))
    lazy = defense.run(EvaluationContext(estimator=backdoored, x_clean=ArrayImageSet(x_clean[:12], y_clean[:12])))
    assert lazy.threshold == arrays.threshold
    assert np.array_equal(lazy.score(ArrayImageSet(x_test[:6], y_clean[:6])), arrays.score(x_test[:6]))


@pytest.mark.parametrize(
    "params, error",
    [
        ({"n_superimpose": 0}, "n_superimpose must be an integer >= 1"),
        ({"n_superimpose": 2.5}, "n_superimpose must be an integer"),
        ({"superimpose": "sum"}, "superimpose must be one of"),
        ({"overlays": None}, "overlays must be one of"),
        ({"alpha": 1.0}, r"alpha must be a number in \(0, 1\)"),
        ({"alpha": True}, "alpha must be"),
        ({"frr": 0}, r"frr must be a number in \(0, 1\)"),
        ({"frr": float("nan")}, "frr must be"),
        ({"threshold_share": 1}, "threshold_share must be"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"verbose": "yes"}, "verbose must be a bool"),
    ],
)
def test_parameter_checks_name_the_parameter(params, error):
    with pytest.raises(ValueError, match=error):
        STRIP(**params)


def test_context_checks(backdoored, data):
    x_test, targets, _, x_clean, _ = data
    with pytest.raises(ValueError, match="needs context.estimator"):
        STRIP(**FAST).run(EvaluationContext(x_clean=x_clean))
    with pytest.raises(ValueError, match="needs context.x_clean"):
        STRIP(**FAST).run(EvaluationContext(estimator=backdoored, x_test=x_test, test_targets=targets))
    with pytest.raises(ValueError, match="2 clean images split by threshold_share=0.5 leave 1 for the threshold"):
        STRIP(threshold_share=0.5, **FAST).run(EvaluationContext(estimator=backdoored, x_clean=x_clean[:2]))
    screen = STRIP(n_superimpose=2, **FAST).run(EvaluationContext(estimator=backdoored, x_clean=x_clean[:8]))
    with pytest.raises(ValueError, match="cannot be superimposed"):
        screen.score(np.repeat(x_test[:2], 3, axis=1))


def test_registered_and_scored_by_the_harness(tmp_path):
    assert registry.get("strip") is STRIP and STRIP.kind == "input"
    config = StudyConfig(
        seed=0,
        output_dir=str(tmp_path / "study"),
        data=DataConfig(n_train=120, n_test=20, n_shadow=16, image_size=SIZE),
        pretrain=TrainConfig(steps=3, batch_size=16),
        train=TrainConfig(steps=3, batch_size=16),
        attacks=[AttackSpec("badmatch", percent_poison=0.05)],
        defenses=[DefenseSpec("strip", {"n_superimpose": 4, "verbose": False})],
    )
    (record,) = Harness(config, verbose=False).run().defenses
    assert record["status"] == "ok" and record["kind"] == "input", record.get("error")
    for key in ("auroc", "far_frr1", "far_frr5", "frr", "far"):
        assert 0.0 <= record[key] <= 1.0, key


def test_against_arts_strip(backdoored, data):
    """ART's STRIP wraps the same estimator (a clone: it swaps the object's class in place); at the same number of
    superimpositions and the same normal-fit threshold (the 5 % quantile of clean entropies), ours accepts no more
    triggered inputs than ART's, up to a margin for 32 test images. Measured (ART 1.20.1): ART's STRIP does not
    separate here; it abstains on 9 % of clean and none of the triggered inputs, since it takes scipy's entropy
    along axis 0 (per class, across the copies) instead of per copy (Eq. 1), which ranks consistent predictions
    (a trigger's) as high-entropy."""
    x_test, _, triggered, x_clean, _ = data
    try:
        wrapped = ARTSTRIP(backdoored.clone())(num_samples=10, false_acceptance_rate=0.05)
    except TypeError as err:
        if "object layout differs" not in str(err):
            raise
        pytest.skip(f"ART's STRIP(estimator)() cannot swap MedCLIPEstimator's class: TypeError: {err}")
    np.random.seed(0)  # ART draws its overlays from NumPy's global generator
    wrapped.mitigate(x_clean[:32])
    art_far = float(np.mean(wrapped.predict(triggered[:32]).sum(axis=1) > 0))  # abstention = an all-zero row
    _, ours = screened(STRIP(n_superimpose=10, frr=0.05, **BLEND), backdoored, data)
    assert ours["far"] <= art_far + 0.2  # measured: ours 0.44 (frr 0.09), ART's 1.0 (frr 0.09)
