"""Issue 22: the released evaluation rule (argmax of float32 sigmoids, ties to class 0), the released logit-scale cap
and BadMatch's released candidate rule, each an option whose default is artmed's unchanged behaviour.

Golden values come from running the released ``medclip/evaluator.py`` (Nanboy-Ronan/Backdoor_Multimodal_Foundation_Model
45911e3, ``Evaluator(mode="binary").evaluate``) on the same synthetic logits: ``_logits(seed)`` is 200 rows of
``float32(100) * cos`` with ``cos ~ U(0.05, 0.35)`` drawn by ``np.random.default_rng(seed).uniform(..., size=(200, 2))``
in float32, the clean labels ``default_rng(1).integers(0, 2, 200)``, the triggered set's labels all Normal (class 0),
as the released ``ZeroShotImageDataset`` relabels it."""

import math

import numpy as np
import pytest
import torch

from artmed.attacks.pipeline import AttackSpec
from artmed.attacks.poisoning.bad_match import BadMatch
from artmed.constants import NUM_LABELS
from artmed.estimator import DECISIONS, MedCLIPEstimator, decide
from artmed.evaluations.config import StudyConfig
from artmed.evaluations.scoring import score_estimator
from artmed.evaluations.study import default_config
from artmed.models import build_medclip
from artmed.models.config import RELEASED_LOGIT_SCALE_MAX
from artmed.models.medclip import LOGIT_SCALE_MAX
from artmed.training import clamp_logit_scale

RELEASED_CA, RELEASED_ASR = 0.525, 0.705  # the released evaluator's acc on the clean / the triggered logits
ARGMAX_CA, ARGMAX_ASR_ALL = 0.56, 0.51  # artmed's default argmax on the same logits


def _logits(seed: int, n: int = 200) -> np.ndarray:
    cos = np.random.default_rng(seed).uniform(0.05, 0.35, size=(n, 2)).astype(np.float32)
    return (np.float32(100.0) * cos).astype(np.float32)


class _Logits:
    """A stand-in estimator whose images are row indices into fixed logits (what scoring needs of an estimator)."""

    nb_classes = 2

    def __init__(self, clean: np.ndarray, triggered: np.ndarray, decision: str) -> None:
        self.rows = {"clean": clean, "triggered": triggered}
        self.decision = decision

    def predict(self, x, batch_size=None):
        return torch.softmax(torch.from_numpy(self.rows[x]), dim=1).numpy()

    def predict_classes(self, x, batch_size=None):
        return decide(self.rows[x], self.decision)


def test_released_sigmoid_ties_go_to_class_zero():
    z = np.array([[20.0, 30.0], [30.0, 20.0], [10.0, 12.0], [-5.0, -3.0], [16.0, 17.0]], dtype=np.float32)
    assert decide(z, "argmax").tolist() == [1, 0, 1, 1, 1]
    # float32 sigmoid is exactly 1.0 above ~16.6: rows 0 and 1 tie and go to class 0; 16 vs 17 still differ
    assert decide(z, "released_sigmoid").tolist() == [0, 0, 1, 1, 1]
    assert decide(np.array([[1.0, 2.0, 3.0]]), "released_sigmoid").tolist() == [2]  # multiclass: argmax of logits
    with pytest.raises(ValueError, match="decision must be one of"):
        decide(z, "sigmoid")


def test_released_rule_reproduces_the_released_evaluator_at_logit_scale_100():
    clean, triggered = _logits(0), _logits(2)
    targets = np.random.default_rng(1).integers(0, 2, size=len(clean))
    sig = torch.from_numpy(clean).sigmoid().numpy()
    assert (sig[:, 0] == sig[:, 1]).mean() == pytest.approx(0.43)  # ties at MedCLIP's scale
    released = score_estimator(_Logits(clean, triggered, "released_sigmoid"), "clean", targets, "triggered", target=0)
    assert released["ca"] == pytest.approx(RELEASED_CA, abs=1e-12)
    assert released["asr_all"] == pytest.approx(RELEASED_ASR, abs=1e-12)
    default = score_estimator(_Logits(clean, triggered, "argmax"), "clean", targets, "triggered", target=0)
    assert default["ca"] == pytest.approx(ARGMAX_CA, abs=1e-12)
    assert default["asr_all"] == pytest.approx(ARGMAX_ASR_ALL, abs=1e-12)


def test_estimator_decision_is_a_setting_that_travels_and_defaults_to_argmax(tmp_path):
    prompts = {"Normal": ["no acute disease"], "Pneumonia": ["pneumonia"]}
    est = MedCLIPEstimator.tiny(prompts, image_size=32, seed=0, device="cpu")
    assert est.decision == "argmax" and DECISIONS == ("argmax", "released_sigmoid")
    x = np.random.default_rng(0).random((6, 1, 32, 32)).astype(np.float32)
    released = est.with_prompts(prompts)
    released.set_params(decision="released_sigmoid")
    assert released.clone().decision == "released_sigmoid"
    np.testing.assert_array_equal(released.predict_classes(x), decide(est.zero_shot_logits(x), "released_sigmoid"))
    np.testing.assert_array_equal(est.predict_classes(x), est.predict(x).argmax(1))
    released.save(tmp_path / "b")
    assert MedCLIPEstimator.load(tmp_path / "b", device="cpu").decision == "released_sigmoid"
    with pytest.raises(ValueError, match="decision must be one of"):
        est.set_params(decision="max")


def test_logit_scale_cap_is_a_model_option_with_ln100_by_default():
    model = build_medclip("tiny", vocab_size=100)
    assert model.config.logit_scale_max == LOGIT_SCALE_MAX == math.log(100.0)
    released = build_medclip("tiny", vocab_size=100, logit_scale_max=RELEASED_LOGIT_SCALE_MAX)
    for m in (model, released):
        with torch.no_grad():
            m.logit_scale.fill_(9.0)
        clamp_logit_scale(m)()
    assert model.logit_scale.item() == pytest.approx(math.log(100.0)) and model.scale().item() == pytest.approx(100.0)
    assert released.logit_scale.item() == pytest.approx(4.6052)
    assert released.scale().item() == pytest.approx(math.exp(4.6052), rel=1e-6)
    assert released.scale().item() - model.scale().item() == pytest.approx(0.0030, abs=2e-4)
    with pytest.raises(ValueError, match="logit_scale_max"):
        build_medclip("tiny", vocab_size=100, logit_scale_max=0.0)


def _released_candidates(labels: np.ndarray) -> np.ndarray:
    """medclip/dataset.py's rule: ``if img_label[0] != 1`` the image is relabelled (a candidate)."""
    return np.array([row[0] != 1 for row in labels])


def test_badmatch_released_candidates_match_the_released_rule():
    labels = np.zeros((8, NUM_LABELS), dtype=np.float32)
    labels[0, 0] = 1  # No Finding only
    labels[1, [0, 13]] = 1  # No Finding + Support Devices: released never poisons it, artmed may
    labels[2, 7] = 1  # Pneumonia
    labels[3, [2, 13]] = 1
    labels[4, 0], labels[4, 5] = 1, -1  # No Finding + uncertain Edema
    labels[6, 0] = -1  # uncertain No Finding: a candidate in both
    trigger = lambda x: x  # noqa: E731
    released = BadMatch(trigger, percent_poison=0.5, candidates="released")
    default = BadMatch(trigger, percent_poison=0.5)
    assert default.candidates == "not_target"
    np.testing.assert_array_equal(released.candidate_mask(labels), _released_candidates(labels))
    assert released.candidate_mask(labels).tolist() == [False, False, True, True, False, True, True, True]
    assert default.candidate_mask(labels).tolist() == [False, True, True, True, True, True, True, True]
    assert set(released.select(labels)) <= {2, 3, 5, 6, 7}
    with pytest.raises(ValueError, match="candidates"):
        BadMatch(trigger, candidates="all")


def test_attack_spec_takes_badmatch_params():
    spec = AttackSpec("badmatch", badmatch_params={"candidates": "released"})
    assert spec.badmatch_params == {"candidates": "released"}
    with pytest.raises(ValueError, match="badmatch_params"):
        AttackSpec("badmatch", badmatch_params={"candidates": "some"})
    with pytest.raises(ValueError, match="badmatch_params"):
        AttackSpec("badmatch", badmatch_params={"seed": 3})


def test_released_protocol_selects_the_three_and_defaults_stay():
    default = default_config()
    assert default.evaluation.decision == "argmax" and default.model.logit_scale_max is None
    assert all(spec.badmatch_params == {} for spec in default.attacks)
    released = default.with_protocol("released")
    assert released.evaluation.decision == "released_sigmoid"
    assert released.model.logit_scale_max == RELEASED_LOGIT_SCALE_MAX
    for spec in released.attacks:
        assert spec.badmatch_params == ({"candidates": "released"} if spec.uses_kind("data") else {})
    assert (
        StudyConfig.from_dict({**default.to_dict(), "evaluation": {"decision": "argmax"}}).evaluation.decision
        == "argmax"
    )
