"""Attack steps: the four settings are compositions of registered steps, any composition runs, each step's output is
cached under its own key, plugins are found through the "artmed.attacks" entry-point group and listed by
``artmed attacks``, and the harness hands each cell its inputs (no state set after ``__init__``)."""

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from artmed.attacks import registry
from artmed.attacks.pipeline import AttackSpec, poison_training_set, run_attack, supply_chain_attack
from artmed.attacks.poisoning.steps import BadDistStep, BadMatchStep
from artmed.attacks.steps import AttackContext, DataStep, Poisoned, SupplyChainStep
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations.cli import main
from artmed.evaluations.config import StudyConfig
from artmed.evaluations.report import read_table
from artmed.validation import FieldError
from toy_task import PROMPTS, SIZE, TEXT_LABELS, TEXTS, images


class FakeEntryPoint:
    """Stands in for an installed entry point of a test-only step class."""

    def __init__(self, name, cls):
        self.name, self.value, self.dist, self._cls = name, f"{__name__}:{cls.__name__}", None, cls

    def load(self):
        return self._cls


class FlipLabels(DataStep):
    """Relabels the first ``n`` rows as the target, without a trigger (a test data step)."""

    name = "flip_labels"
    uses = ("target",)
    calls = 0

    def __init__(self, n: int = 3) -> None:
        self.n = n
        self._check_params()

    def _check_params(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n!r}")

    def apply(self, x, y, context):
        type(self).calls += 1
        y = np.array(y, copy=True)
        y[: self.n] = 0
        y[: self.n, 0] = 1
        mask = np.zeros(len(x), dtype=bool)
        mask[: self.n] = True
        return Poisoned(x, y, mask)


class Shrink(SupplyChainStep):
    """Scales the image projection by ``factor`` (a test supply-chain step)."""

    name = "shrink"
    uses = ()

    def __init__(self, factor: float = 0.5) -> None:
        self.factor = factor
        self._check_params()

    def _check_params(self) -> None:
        if not 0 < self.factor <= 1:
            raise ValueError(f"factor must be in (0, 1], got {self.factor!r}")

    def apply(self, estimator, context):
        out = estimator.clone()
        for p in out.model.parameters():
            p.data.mul_(self.factor)
        return out, {"shrink": {"factor": self.factor}}

    def summary(self, history):
        return {"shrink_factor": history["shrink"]["factor"]}


class BadMask(FlipLabels):
    """Breaks the data-step contract: its mask is too short."""

    name = "bad_mask"

    def apply(self, x, y, context):
        return Poisoned(x, y, np.zeros(len(x) - 1, dtype=bool))


@pytest.fixture
def plugins(monkeypatch):
    """``registry.available`` lists the installed steps plus the test steps above."""
    installed = registry.available
    extra = {"flip_labels": FlipLabels, "shrink": Shrink, "bad_mask": BadMask}
    monkeypatch.setattr(
        registry, "available", lambda: {**installed(), **{n: FakeEntryPoint(n, c) for n, c in extra.items()}}
    )
    FlipLabels.calls = 0


@pytest.fixture(scope="module")
def tiny():
    x, y, _ = images(64, seed=0)
    return MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, device="cpu"), x, y


def test_the_four_settings_are_compositions_of_the_registered_steps():
    names = {
        a: [type(s) for s in AttackSpec(a).composition] for a in ("clean", "badmatch", "baddist", "baddist_badmatch")
    }
    assert names == {
        "clean": [],
        "badmatch": [BadMatchStep],
        "baddist": [BadDistStep],
        "baddist_badmatch": [BadDistStep, BadMatchStep],
    }
    assert {n: registry.get(n) for n in ("badmatch", "baddist")} == {"badmatch": BadMatchStep, "baddist": BadDistStep}
    # the shorthands' cell keys are what they were before steps existed (old output folders resume)
    assert [
        AttackSpec(a, percent_poison=0.05, seed=1).key for a in ("clean", "badmatch", "baddist", "baddist_badmatch")
    ] == ["clean-s1", "badmatch-patch-p0.05-s1", "baddist-patch-s1", "baddist_badmatch-patch-p0.05-s1"]


def test_steps_spelling_a_shorthand_is_that_shorthand():
    spelled = AttackSpec(
        steps=[{"name": "baddist", "params": {"lr": 0.01}}, {"name": "badmatch", "params": {"candidates": "released"}}],
        percent_poison=0.05,
    )
    short = AttackSpec(
        "baddist_badmatch", percent_poison=0.05, baddist_params={"lr": 0.01}, badmatch_params={"candidates": "released"}
    )
    assert spelled == short and spelled.to_dict() == short.to_dict() and spelled.steps is None
    config = StudyConfig.from_dict({"attacks": [short.to_dict(), {"steps": ["baddist", "badmatch"]}]})
    assert [a.attack for a in config.attacks] == ["baddist_badmatch", "baddist_badmatch"]
    # the digest that tells apart attacks sharing a key is computed as before steps existed
    assert config.attack_key(config.attacks[0]) == "baddist_badmatch-patch-p0.05-s0"


def test_bad_steps_name_the_field(plugins):
    cases = [
        ({"steps": ["nope"]}, r"^steps\[0\]\.name: unknown attack step 'nope'"),
        ({"steps": [{"name": "flip_labels", "params": {"n": 0}}]}, r"^steps\[0\]\.params: n must be"),
        ({"steps": [{"name": "flip_labels", "params": {"m": 1}}]}, r"^steps\[0\]\.params: unknown parameter 'm'"),
        ({"steps": [{"name": "flip_labels", "extra": 1}]}, r"^steps\[0\] must be a step name or"),
        ({"steps": ["flip_labels"], "badmatch_params": {"candidates": "released"}}, r"^badmatch_params: with steps"),
        ({"attack": "badmatch", "steps": ["flip_labels"]}, r"^attack: 'badmatch' is the shorthand of steps"),
        ({"attack": "a/b", "steps": ["flip_labels"]}, r"^attack: the label 'a/b' must be"),
        ({"attack": "badnets"}, r"^attack: unknown attack 'badnets'"),
    ]
    for kwargs, match in cases:
        with pytest.raises(FieldError, match=match):
            AttackSpec(**kwargs)


def test_a_composition_of_plugin_steps_runs_and_each_step_output_is_cached(plugins, tiny):
    base, x, y = tiny
    spec = AttackSpec(steps=["shrink", {"name": "flip_labels", "params": {"n": 4}}, "badmatch"], percent_poison=0.1)
    assert spec.attack == "shrink_flip_labels_badmatch" and spec.key == "shrink_flip_labels_badmatch-patch-p0.1-s0"
    cache = {}
    outcome = run_attack(
        spec, base, x, y, TEXTS, TEXT_LABELS, fit_params={"steps": 1, "batch_size": 16, "verbose": False}, cache=cache
    )
    assert outcome.history["shrink"] == {"factor": 0.5} and "fit" in outcome.history
    assert outcome.poison_mask[:4].all() and outcome.poison_mask.sum() >= 4 + round(0.1 * 64) - 4
    assert np.all(outcome.y_train[:4, 0] == 1)
    keys = spec.step_keys()
    assert len(set(keys)) == 3 and set(keys) == set(cache)
    # the data chain's first step depends on the target only: another rate shares it, not the BadMatch step after it
    other = replace(spec, percent_poison=0.2)
    assert other.step_keys()[:2] == keys[:2] and other.step_keys()[2] != keys[2]
    poisoned = poison_training_set(other, x, y, other.context(), cache)
    assert FlipLabels.calls == 1 and poisoned.mask.sum() > outcome.poison_mask.sum()
    assert supply_chain_attack(other, base, other.context(), cache)[0] is cache[keys[0]][0]


def test_a_step_breaking_its_contract_is_named(plugins, tiny):
    _, x, y = tiny
    spec = AttackSpec(steps=["bad_mask"])
    with pytest.raises(ValueError, match=r"attack step 'bad_mask': returned 64 images, 64 labels and a bool mask"):
        poison_training_set(spec, x, y)
    context = AttackContext(trigger=spec.build_trigger(), target="No Finding", percent_poison=0.01, seed=0)
    assert poison_training_set(AttackSpec("clean"), x, y, context).mask.sum() == 0


def test_broken_and_wrong_plugins_are_refused_with_their_origin(monkeypatch):
    class Broken(FakeEntryPoint):
        def load(self):
            raise SystemExit(3)

    installed = registry.available
    monkeypatch.setattr(
        registry,
        "available",
        lambda: {**installed(), "broken": Broken("broken", int), "wrong": FakeEntryPoint("wrong", int)},
    )
    with pytest.raises(ImportError, match=r"attack plugin 'broken' .* failed to load: SystemExit\(3\)"):
        registry.get("broken")
    with pytest.raises(TypeError, match="not a subclass of artmed.attacks.steps.AttackStep"):
        registry.get("wrong")
    infos, errors = registry.describe_all()
    assert {"baddist", "badmatch"} <= {i.name for i in infos} and set(errors) == {"broken", "wrong"}


def test_artmed_attacks_lists_the_steps_with_their_parameters(plugins, capsys):
    assert main(["attacks"]) == 0
    out = capsys.readouterr().out
    assert "badmatch                     data         artmed.attacks.poisoning.steps.BadMatchStep" in out
    assert "baddist                      supply_chain artmed.attacks.poisoning.steps.BadDistStep" in out
    assert "parameters: candidates='not_target'" in out and "parameters: n=3" in out
    assert "baddist_badmatch = [baddist, badmatch]" in out


def test_the_harness_passes_each_cell_its_inputs(plugins, tmp_path):
    from artmed.evaluations.harness import Harness

    config = StudyConfig.from_dict(
        {
            "output_dir": str(tmp_path / "out"),
            "seeds": [0],
            "data": {"n_train": 64, "n_test": 20, "n_shadow": 16, "image_size": 32},
            "pretrain": {"steps": 2, "batch_size": 16},
            "train": {"steps": 2, "batch_size": 16},
            "attacks": [
                {"steps": [{"name": "flip_labels", "params": {"n": 5}}]},
                {"attack": "flip_more", "steps": [{"name": "flip_labels", "params": {"n": 5}}, "shrink"]},
            ],
            "defenses": [{"name": "spectral_signatures", "attacks": ["flip_labels"]}],
        }
    )
    harness = Harness(config, verbose=False)
    state = dict(vars(harness))
    result = harness.run()
    assert set(vars(harness)) == set(state)  # nothing set on the harness by a cell
    assert [(m["attack"], m["status"], m["n_poison"]) for m in result.models] == [
        ("flip_labels", "ok", 5),
        ("flip_more", "ok", 5),
    ]
    assert result.models[1]["shrink_factor"] == 0.5 and "shrink_factor" not in result.models[0]
    (defense,) = result.defenses
    assert defense["attack"] == "flip_labels" and defense["status"] == "ok" and defense["tp"] >= 0
    settings = json.loads(json.dumps(result.models[0]["settings"]["attack"]))
    assert settings["steps"] == [{"name": "flip_labels", "params": {"n": 5}}]


TEMPLATES = Path(__file__).resolve().parents[1] / "examples" / "plugins"
TEMPLATE_STUDY = """\
seed: 0
data: {n_train: 120, n_test: 20, n_shadow: 16, image_size: 32}
pretrain: {steps: 5, batch_size: 16}
train: {steps: 5, batch_size: 16}
attacks:
  - {steps: [clean_label], percent_poison: 0.05}
  - {attack: noisy, steps: [{name: weight_noise, params: {sigma: 0.05}}, clean_label, badmatch], percent_poison: 0.05}
defenses:
  - {name: feature_norm, params: {share: 0.1}, attacks: [clean_label]}
"""
CLI = """\
import sys
from artmed.evaluations.cli import main
print("=== attacks")
code = main(["attacks"])
print("=== run")
sys.exit(code or main(["run", "--config", "study.yaml", "--output", "out", "--quiet"]))
"""


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def templates(tmp_path):
    """The example attack and defense plugin packages installed into this environment for the test's duration."""
    if _pip("--version").returncode != 0:
        pytest.skip("pip is not available in this environment")
    names = {"attack_template": "artmed-attack-template", "defense_template": "artmed-defense-template"}
    try:
        for folder in names:
            source = shutil.copytree(TEMPLATES / folder, tmp_path / folder)  # built in a copy: no build/ left behind
            done = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(source))
            assert done.returncode == 0, f"installing {folder} failed:\n{done.stdout}\n{done.stderr}"
        yield
    finally:
        _pip("uninstall", "-y", "-q", *names.values())


def test_template_plugins_are_listed_and_run_by_name(templates, tmp_path):
    (tmp_path / "study.yaml").write_text(TEMPLATE_STUDY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, "-c", CLI], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    listing = done.stdout.split("=== run")[0]
    assert re.search(r"^clean_label\s+data\s+artmed_attack_template\.CleanLabel$", listing, flags=re.MULTILINE)
    assert (
        re.search(r"^weight_noise\s+supply_chain\s+artmed_attack_template\.WeightNoise$", listing, flags=re.MULTILINE)
        and "parameters: sigma=0.01" in listing
    )

    models = {row["attack"]: row for row in read_table(tmp_path / "out" / "models.json")}
    assert set(models) == {"clean_label", "noisy"} and all(m["status"] == "ok" for m in models.values())
    assert models["clean_label"]["attack_key"] == "clean_label-patch-p0.05-s0"
    assert models["clean_label"]["n_poison"] == 6 and models["noisy"]["n_poison"] > 6  # BadMatch's rows on top
    assert models["noisy"]["weight_noise_sigma"] == 0.05
    (defense,) = read_table(tmp_path / "out" / "defenses.json")
    assert (defense["defense"], defense["attack"], defense["status"]) == ("feature_norm", "clean_label", "ok")
    assert defense["removed"] == pytest.approx(0.1)


def test_template_plugins_are_uninstalled_afterwards():
    assert not {"clean_label", "weight_noise"} & set(registry.available())
