"""The study config is checked once, up front, with field names: numbers written as strings are converted, bad values
and parameters are refused before any training (``artmed run`` and ``artmed bench`` included)."""

import math
import re
from dataclasses import replace

import pytest

from artmed.attacks.pipeline import AttackSpec
from artmed.defenses import registry
from artmed.evaluations import bench
from artmed.evaluations import harness as harness_module
from artmed.evaluations.cli import main
from artmed.evaluations.config import DataConfig, StudyConfig, TrainConfig
from artmed.evaluations.harness import Harness


def load(tmp_path, text: str) -> StudyConfig:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return StudyConfig.from_yaml(path)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the harness builds data (the first step of every study)."""
    monkeypatch.setattr(harness_module, "load_study_data", lambda *a, **kw: pytest.fail("the study started"))


class _NotADefense:
    """An installed plugin that is no ``artmed.defenses.Defense``."""


class _EntryPoint:
    name, value, dist = "not_a_defense", "tests:_NotADefense", None

    def load(self):
        return _NotADefense


@pytest.fixture
def not_a_defense(monkeypatch):
    installed = registry.available
    monkeypatch.setattr(registry, "available", lambda: {**installed(), "not_a_defense": _EntryPoint()})


# ---------------------------------------------------------------------------------------------- values converted
@pytest.mark.parametrize(
    "text, get, expected",
    [
        ("train: {lr: 1e-3}\n", lambda c: c.train.lr, 0.001),  # PyYAML alone reads 1e-3 as a string
        ("train: {lr: '1e-3'}\n", lambda c: c.train.lr, 0.001),
        ("pretrain: {weight_decay: '0'}\n", lambda c: c.pretrain.weight_decay, 0.0),
        ("data: {n_train: '160'}\n", lambda c: c.data.n_train, 160),
        ("data: {n_texts: '50'}\n", lambda c: c.data.n_texts, 50),
        ("train: {steps: 2.0}\n", lambda c: c.train.steps, 2),
        ("train: {steps: '2'}\n", lambda c: c.train.steps, 2),
        ("train: {batch_size: 1e2}\n", lambda c: c.train.batch_size, 100),
        ("seed: '3'\n", lambda c: c.seed, 3),
        ("seeds: ['1', 2]\n", lambda c: c.seeds, [1, 2]),
        (
            "attacks: [{attack: badmatch, percent_poison: '0.05', seed: '1'}]\n",
            lambda c: (c.attacks[0].percent_poison, c.attacks[0].seed),
            (0.05, 1),
        ),
        (
            "attacks: [{attack: baddist, baddist_params: {lr: 1e-2, steps: 10}}]\n",
            lambda c: c.attacks[0].baddist_params,
            {"lr": 0.01, "steps": 10},
        ),
        ("defenses: [{name: cleanclip, params: {lr: 2e-5}}]\n", lambda c: c.defenses[0].params, {"lr": 2e-5}),
    ],
)
def test_numbers_are_converted_to_the_declared_type(tmp_path, text, get, expected):
    value = get(load(tmp_path, text))
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(value, (tuple, list)):
        assert [type(v) for v in value] == [type(v) for v in expected]
    if isinstance(value, dict):
        assert {k: type(v) for k, v in value.items()} == {k: type(v) for k, v in expected.items()}


def test_converted_values_reach_training():
    config = StudyConfig(train=TrainConfig(steps="7", lr="1e-3"), data=DataConfig(n_train="160"))
    assert config.train.fit_params() == {
        "steps": 7,
        "batch_size": 64,
        "lr": 0.001,
        "weight_decay": 1e-4,
        "warmup": 0.1,
        "schedule_epochs": None,
        "eda": False,
    }
    assert config.data.n_train == 160
    spec = AttackSpec("badmatch", percent_poison="0.05")
    assert spec.percent_poison == 0.05 and spec.key == "badmatch-patch-p0.05-s0"


# ---------------------------------------------------------------------------------------------- values refused
@pytest.mark.parametrize(
    "text, message",
    [
        ("train: {lr: abc}\n", r"^config\.train\.lr must be a number, got 'abc'$"),
        ("data: {n_train: abc}\n", r"^config\.data\.n_train must be an integer, got 'abc'$"),
        ("seed: zero\n", r"^config\.seed must be an integer, got 'zero'$"),
        ("seeds: [0, 1.5]\n", r"^config\.seeds\[1\] must be an integer, got 1\.5$"),
        (
            "attacks: [{attack: badmatch, percent_poison: abc}]\n",
            r"^config\.attacks\[0\]\.percent_poison must be a number, got 'abc'$",
        ),
        (
            "attacks: [{attack: badmatch, percent_poison: .nan}]\n",
            r"^config\.attacks\[0\]\.percent_poison must be finite",
        ),
        ("attacks: [{attack: clean, seed: -1}]\n", r"^config\.attacks\[0\]\.seed must be a non-negative integer"),
        ("pretrain: {lr: .nan}\n", r"^config\.pretrain\.lr must be finite, got nan$"),
        ("train: {lr: .inf}\n", r"^config\.train\.lr must be finite, got inf$"),
        ("train: {warmup: -.inf}\n", r"^config\.train\.warmup must be finite"),
        ("data: {n_test: .inf}\n", r"^config\.data\.n_test must be finite"),
        ("train: {steps: 2.7}\n", r"^config\.train\.steps must be an integer, got 2\.7$"),
        ("pretrain: {batch_size: '16.5'}\n", r"^config\.pretrain\.batch_size must be an integer, got '16\.5'$"),
        ("train: {steps: true}\n", r"^config\.train\.steps must be an integer, got True$"),
        ("train: {lr: true}\n", r"^config\.train\.lr must be a number, got True$"),
        ("attacks: [{attack: clean, seed: false}]\n", r"^config\.attacks\[0\]\.seed must be an integer, got False$"),
        ("pretrain: {lr: 0}\n", r"^config\.pretrain\.lr must be positive"),
        ("train: {warmup: 1.5}\n", r"^config\.train\.warmup must be a share in \[0, 1\)"),
        ("train: {weight_decay: -1}\n", r"^config\.train\.weight_decay must be >= 0"),
        ("data: {n_texts: 0}\n", r"^config\.data\.n_texts must be a positive integer"),
        ("output_dir: 5\n", r"^config\.output_dir must be a string, got 5$"),
        (
            "defenses: [{name: spectral_signatures, retrain: 'no'}]\n",
            r"^config\.defenses\[0\]\.retrain must be true or false, got 'no'$",
        ),
        (
            "defenses: [{name: spectral_signatures, params: [eps]}]\n",
            r"^config\.defenses\[0\]\.params must be a mapping",
        ),
        (
            "attacks: [{attack: badmatch, trigger_params: {sise: 3}}]\n",
            r"^config\.attacks\[0\]\.trigger_params: unknown parameter 'sise' for trigger 'patch'; valid: \[.*'size'",
        ),
        (
            "attacks: [{attack: badmatch, trigger: fourier, trigger_params: {alpha: 2}}]\n",
            r"^config\.attacks\[0\]\.trigger_params: FourierTrigger alpha must be in",
        ),
        (
            "attacks: [{attack: baddist, baddist_params: {lrr: 0.1}}]\n",
            r"^config\.attacks\[0\]\.baddist_params: unknown parameter 'lrr' for BadDist; valid: \[.*'lr'",
        ),
        (
            "attacks: [{attack: baddist, baddist_params: {seed: 3}}]\n",
            r"^config\.attacks\[0\]\.baddist_params: unknown parameter 'seed'",
        ),
        (
            "attacks: [{attack: baddist, baddist_params: {settings: tiny, optimizer: adamw}}]\n",
            r"^config\.attacks\[0\]\.baddist_params: optimizer must be 'sgd' or 'adam', got 'adamw'$",
        ),
        (
            "attacks: [{attack: baddist, baddist_params: {steps: 2.5}}]\n",
            r"^config\.attacks\[0\]\.baddist_params: steps must be a positive integer",
        ),
        (
            "attacks: [{attack: baddist_badmatch, baddist_params: {settings: huge}}]\n",
            r"^config\.attacks\[0\]\.baddist_params: unknown BadDist settings 'huge'",
        ),
        ("", r"^study config .*study\.yaml is empty$"),
        ("# every setting commented out\n", r"^study config .*study\.yaml is empty$"),
    ],
)
def test_bad_values_name_the_field(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load(tmp_path, text)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: TrainConfig(lr=math.nan), r"^lr must be finite"),
        (lambda: TrainConfig(steps=2.7), r"^steps must be an integer"),
        (lambda: DataConfig(n_train="abc"), r"^n_train must be an integer"),
        (lambda: AttackSpec("baddist", baddist_params={"lrr": 0.1}), r"^baddist_params: unknown parameter 'lrr'"),
        (lambda: AttackSpec("badmatch", percent_poison=True), r"^percent_poison must be a number, got True"),
    ],
)
def test_direct_construction_is_checked_the_same_way(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# ---------------------------------------------------------------------------------------------- before any work
@pytest.mark.parametrize(
    "text, message",
    [
        (
            "defenses: [activation_clustering, {name: spectral_signatures, params: {bogus: 1}}]\n",
            r"^config\.defenses\[1\]\.params: unknown parameter 'bogus' for spectral_signatures; valid: \[.*'eps'",
        ),
        ("defenses: [{name: spectral_signatures, params: {eps: 7}}]\n", r"^config\.defenses\[0\]\.params: eps must be"),
        (
            "defenses: [{name: spectral_signatures, params: {x_train: [1, 2]}}]\n",
            r"^config\.defenses\[0\]\.params: unknown parameter 'x_train' for spectral_signatures",
        ),
        ("defenses: [{name: cleanclip, params: {lr: 'fast'}}]\n", r"^config\.defenses\[0\]\.params: lr must be"),
        ("defenses: [not_a_defense]\n", r"^config\.defenses\[0\]: defense plugin 'not_a_defense' .*not a subclass"),
        (
            "defenses: [spectral_signatures, no_such_defense]\n",
            r"^config\.defenses\[1\]: unknown defense 'no_such_defense'",
        ),
        ("output_dir: {tmp}/a_file\n", r"^config\.output_dir .*a_file is a file; it must be a folder$"),
        ("output_dir: {tmp}/a_file/study\n", r"^cannot create config\.output_dir .*a_file/study: .*a_file is a file$"),
    ],
)
def test_plugins_params_and_output_are_checked_before_any_work(tmp_path, no_work, not_a_defense, text, message):
    (tmp_path / "a_file").write_text("not a folder")
    config = load(tmp_path, text.replace("{tmp}", str(tmp_path)))
    with pytest.raises(ValueError, match=message):
        Harness(config, verbose=False)


@pytest.mark.parametrize(
    "argv, text, message",
    [
        (["--config", "{tmp}/study.yaml"], "", r"study config .* is empty"),
        (["--config", "{tmp}/study.yaml"], "train: {lr: abc}\n", r"config\.train\.lr must be a number, got 'abc'"),
        (["--config", "{tmp}/study.yaml"], "data: {n_train: 2.5}\n", r"config\.data\.n_train must be an integer"),
        (["--config", "{tmp}/study.yaml", "--output", "{tmp}/a_file"], "seed: 1\n", r"config\.output_dir .* is a file"),
        (["--preset", "quick", "--output", "{tmp}/a_file"], None, r"config\.output_dir .* is a file"),
        (
            ["--config", "{tmp}/study.yaml", "--output", "{tmp}/out", "--seed", "-1"],
            "seed: 1\n",
            r"seed must be a non-negative integer, got -1",
        ),
    ],
)
def test_cli_run_reports_config_errors_before_any_work(tmp_path, capsys, no_work, argv, text, message):
    (tmp_path / "a_file").write_text("not a folder")
    if text is not None:
        (tmp_path / "study.yaml").write_text(text)
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert main(["run", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("artmed run: error: ") and "Traceback" not in err
    assert re.search(message, err), err


@pytest.mark.parametrize(
    "out, message",
    [
        ("folder", r"--out .*folder is a folder; it must be a file"),
        ("a_file/bench.json", r"cannot create --out .*a_file is a file"),
    ],
)
def test_bench_checks_its_output_before_running(tmp_path, monkeypatch, capsys, out, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setattr(bench.cli, "run_benchmarks", lambda *a, **k: pytest.fail("the benchmark ran"))
    with pytest.raises(ValueError, match=message):
        bench.main(["--out", str(tmp_path / out)])
    assert main(["bench", "--out", str(tmp_path / out)]) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, message",
    [
        ("seed: 1\ntrain: {steps: 5}\nseed: 2\n", r"key 'seed' given twice \(lines 1 and 3\)"),
        ("train:\n  lr: 0.1\n  steps: 3\n  lr: 0.2\n", r"key 'lr' given twice \(lines 2 and 4\)"),
    ],
)
def test_duplicate_yaml_keys_are_an_error(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load(tmp_path, text)


def test_cuda_without_cuda_is_refused_before_any_work(tmp_path, capsys, no_work, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["run", "--preset", "quick", "--output", str(tmp_path / "out"), "--device", "cuda", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"config\.device: device 'cuda' requested but CUDA is not available", err), err
    assert not (tmp_path / "out" / "cells").exists()


def test_attacks_differing_only_in_target_or_params_get_their_own_cells():
    from artmed.evaluations.study import default_config, sweep_config

    specs = [
        AttackSpec("badmatch"),
        AttackSpec("badmatch", target="Pneumonia"),
        AttackSpec("badmatch", trigger_params={"size": 6}),
    ]
    config = StudyConfig(attacks=specs)
    keys = [config.attack_key(s) for s in specs]
    assert len(set(keys)) == 3 and all(k.startswith("badmatch-patch-p0.01-s0-") for k in keys)
    assert config.attack_key(replace(specs[1], seed=3)).startswith("badmatch-patch-p0.01-s3-")
    with pytest.raises(ValueError, match=r"attacks listed twice .*: attacks\[0\] = attacks\[1\]"):
        StudyConfig(attacks=[AttackSpec("badmatch"), AttackSpec("badmatch", seed=1)])  # the study's seeds replace it
    for preset in (default_config, sweep_config):  # no collision: the existing cell and model names stay
        config = preset("out")
        assert [config.attack_key(s) for s in config.attacks] == [s.key for s in config.attacks]
