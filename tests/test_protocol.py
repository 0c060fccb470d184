"""The released-protocol preset: what it selects, that given values win in a config file, the schedule horizon."""

import math

import numpy as np
import pytest
import yaml

from artmed import MedCLIPEstimator
from artmed.evaluations.cli import main
from artmed.evaluations.config import StudyConfig, TrainConfig
from artmed.evaluations.protocol import RELEASED_TRAIN, apply_protocol
from artmed.evaluations.study import default_config

PROMPTS = {"a": ["left lung opacity"], "b": ["right lung opacity"]}
TEXTS = ["opacity in the left lung", "left lung opacity", "opacity in the right lung", "right lung opacity"]


def test_released_preset_replaces_a_built_in_study_settings():
    released = default_config().with_protocol("released")
    assert released.protocol == "released"
    assert (released.train.batch_size, released.train.warmup, released.train.schedule_epochs) == (32, 0.1, 10)
    assert released.train.eda and not default_config().train.eda
    assert released.train.text_sampling == "own_report" and default_config().train.text_sampling == "pool"
    assert released.pretrain.text_sampling == "pool"  # the base model's pre-training is artmed's
    data = released.data  # the phantom has no image files: no file options
    assert (data.interpolation, data.pad, data.native_trigger) == ("bicubic", "square", False)
    assert released.train.steps == default_config().train.steps  # the budget is the study's
    for spec in released.attacks:
        assert spec.trigger_params == {"size": 32, "inset": [1, 1], "native_size": 1024}
        assert spec.baddist_params == ({"settings": "paper"} if spec.uses_kind("supply_chain") else {})
    assert released.defenses == default_config().defenses


def test_artmed_protocol_changes_nothing():
    config = default_config()
    assert config.with_protocol("artmed").to_dict() == config.to_dict()


def test_a_config_file_keeps_its_own_values_under_the_preset():
    raw = {
        "protocol": "released",
        "train": {"batch_size": 16},
        "attacks": [
            {"attack": "baddist", "trigger": "fourier", "baddist_params": {"settings": "tiny"}},
            {"attack": "badmatch", "trigger": "patch", "trigger_params": {"inset": [100, 1]}},
        ],
    }
    config = StudyConfig.from_dict(raw)
    assert config.train.batch_size == 16 and config.train.schedule_epochs == RELEASED_TRAIN["schedule_epochs"]
    fourier, patch = config.attacks
    assert fourier.trigger_params == {"unnormalized": True} and fourier.baddist_params == {"settings": "tiny"}
    assert patch.trigger_params == {"inset": [100, 1], "size": 32, "native_size": 1024}  # filled in, key by key
    assert raw["train"] == {"batch_size": 16}  # the caller's dict is not changed


def test_unknown_protocol_is_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown protocol 'paper'.*released"):
        StudyConfig.from_dict({"protocol": "paper"})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"protocol": "paper"}))
    assert main(["run", "--config", str(path), "--output", str(tmp_path / "out")]) == 2
    assert "unknown protocol 'paper'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_protocol_option_reaches_the_config(tmp_path):
    from artmed.evaluations.cli import _study_config, build_parser

    args = build_parser().parse_args(
        ["run", "--preset", "quick", "--protocol", "released", "--output", str(tmp_path / "o")]
    )
    config = _study_config(args)
    assert config.protocol == "released" and config.train.schedule_epochs == 10
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"train": {"warmup": 0.2}}))
    args = build_parser().parse_args(["run", "--config", str(path), "--protocol", "released"])
    config = _study_config(args)
    assert config.train.warmup == 0.2 and config.train.batch_size == 32


def test_apply_protocol_refuses_nothing_it_cannot_merge():
    raw = {"protocol": "released", "attacks": ["clean"], "train": None}
    out = apply_protocol(raw)
    assert out["attacks"] == ["clean"]  # left for the config's own check to report
    assert out["train"] == RELEASED_TRAIN


def test_schedule_epochs_is_checked():
    with pytest.raises(ValueError, match="schedule_epochs must be a positive integer"):
        TrainConfig(schedule_epochs=0)


@pytest.mark.parametrize("schedule_epochs", [None, 5])
def test_schedule_spans_the_given_epochs(schedule_epochs):
    """16 images at batch 4: an epoch is 4 steps; 12 steps run. Without ``schedule_epochs`` the cosine ends at the
    last step; with 5 epochs (20 steps) the warm-up is 2 steps and the run stops at 12/20 of the schedule."""
    rng = np.random.default_rng(0)
    x = rng.random((16, 1, 32, 32), dtype=np.float32)
    y = np.zeros((16, 14), np.float32)
    y[:8, 2], y[8:, 10] = 1, 1
    text_labels = np.zeros((4, 14), np.float32)
    text_labels[:2, 2], text_labels[2:, 10] = 1, 1
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=32, seed=0)
    history = est.fit(
        x,
        y,
        texts=TEXTS,
        text_labels=text_labels,
        batch_size=4,
        steps=12,
        lr=1e-3,
        warmup=0.1,
        schedule_epochs=schedule_epochs,
        verbose=False,
    )
    horizon = 12 if schedule_epochs is None else 20
    warm = round(0.1 * horizon)
    expected = [
        (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (horizon - warm))) for s in range(12)
    ]
    assert history["lr"] == pytest.approx([1e-3 * f for f in expected], rel=1e-9)


def test_schedule_epochs_refused_by_fit():
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=32, seed=0)
    x = np.zeros((4, 1, 32, 32), np.float32)
    y = np.zeros((4, 14), np.float32)
    with pytest.raises(ValueError, match="schedule_epochs"):
        est.fit(
            x, y, texts=TEXTS, text_labels=np.zeros((4, 14), np.float32), batch_size=2, steps=2, schedule_epochs=1.5
        )


def test_released_preset_scores_over_medclip_prompt_draws():
    evaluation = default_config().with_protocol("released").evaluation
    assert (evaluation.prompts, evaluation.prompt_draws, evaluation.n_prompts, evaluation.ensemble) == (
        "medclip",
        5,
        10,
        "mean",
    )


@pytest.mark.parametrize(
    "evaluation, error",
    [
        ({"prompts": "chexzero"}, "evaluation.prompts: unknown prompt source 'chexzero'"),
        ({"prompt_draws": 5}, "evaluation.prompt_draws: the built-in prompts are fixed"),
        ({"prompts": "medclip", "n_prompts": 0}, "evaluation.n_prompts must be a positive integer"),
        ({"ensemble": "median"}, "evaluation.ensemble: ensemble must be one of"),
    ],
)
def test_evaluation_errors_name_the_field(evaluation, error):
    with pytest.raises(ValueError, match=error):
        StudyConfig.from_dict({"evaluation": evaluation})


def test_medclip_prompt_draws_through_the_harness(tmp_path):
    """Every task is scored over the draws (mean and spread); the model and the defenses get the first draw, whose
    normal class comes from the text pool's No-Finding-only sentences."""
    from artmed.attacks.pipeline import AttackSpec
    from artmed.data.medclip_prompts import medclip_prompt_draws, no_finding_sentences
    from artmed.evaluations.config import DataConfig, EvaluationConfig
    from artmed.evaluations.harness import Harness
    from artmed.evaluations.sources import load_study_data

    config = StudyConfig(
        output_dir=str(tmp_path / "study"),
        data=DataConfig(n_train=160, n_test=40, n_shadow=16, image_size=32),
        pretrain=TrainConfig(steps=3, batch_size=16),
        train=TrainConfig(steps=3, batch_size=16),
        attacks=[AttackSpec("badmatch", percent_poison=0.05)],
        evaluation=EvaluationConfig(prompts="medclip", prompt_draws=2, n_prompts=3, ensemble="max"),
    )
    harness = Harness(config, verbose=False)
    (record,) = harness.run().models
    assert record["status"] == "ok" and record["draws"] == 2
    for scores in record["tasks"].values():
        assert scores["draws"] == 2 and 0 <= scores["ca_draw_std"] <= 0.5 and 0 <= scores["ca"] <= 1
    data = load_study_data(config, 0)
    normal = no_finding_sentences(data.texts.sentences, data.texts.labels)
    expected = medclip_prompt_draws(["Normal", "Pneumonia"], draws=2, n=3, seed=42, normal_sentences=normal)
    assert set(expected[0]["Normal"]) <= set(normal)
    estimator = MedCLIPEstimator.load(tmp_path / "study" / "models" / "badmatch-patch-p0.05-s0")
    assert estimator.ensemble == "max" and estimator.prompts == expected[0]


def test_released_preset_puts_step_params_into_an_attack_given_by_steps():
    """Under ``protocol: released`` an attack given by ``steps`` gets the released BadDist / BadMatch parameters in
    the matching steps' params (not baddist_params / badmatch_params, which a steps-spec refuses)."""
    from artmed.attacks.pipeline import AttackSpec

    raw = {
        "protocol": "released",
        "attacks": [
            {
                "attack": "baddist_then_badmatch",
                "steps": ["baddist", {"name": "badmatch", "params": {}}, "carlini_terzis"],
            },
            {"attack": "mine", "steps": [{"name": "badmatch", "params": {"candidates": "any"}}]},
            {"attack": "baddist_badmatch"},
        ],
    }
    out = apply_protocol(raw)
    steps = out["attacks"][0]["steps"]
    assert steps == [
        {"name": "baddist", "params": {"settings": "paper"}},
        {"name": "badmatch", "params": {"candidates": "released"}},
        "carlini_terzis",
    ]
    assert "baddist_params" not in out["attacks"][0] and "badmatch_params" not in out["attacks"][0]
    assert out["attacks"][1]["steps"][0]["params"] == {"candidates": "any"}  # the config's own value wins
    assert out["attacks"][2]["badmatch_params"] == {"candidates": "released"}  # a shorthand as before
    forced = apply_protocol(raw, force=True)
    assert forced["attacks"][1]["steps"][0]["params"] == {"candidates": "released"}
    spec = AttackSpec(**{k: v for k, v in out["attacks"][0].items() if k != "trigger_params"})
    assert [type(s).__name__ for s in spec.composition] == ["BadDistStep", "BadMatchStep", "CarliniTerzisStep"]
    assert spec.composition[1].candidates == "released"
