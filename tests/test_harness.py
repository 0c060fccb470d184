"""The evaluation harness end to end: outputs and provenance, resume, failing plugins, config checks, the CLI."""

import fcntl
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from artmed.attacks import pipeline
from artmed.attacks.pipeline import AttackSpec
from artmed.defenses.activation_clustering import ActivationClustering
from artmed.defenses.base import Defense
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations import harness as harness_module
from artmed.evaluations.cli import main
from artmed.evaluations.config import DataConfig, DefenseSpec, StudyConfig, TrainConfig
from artmed.evaluations.harness import Harness
from artmed.evaluations.report import read_table
from artmed.evaluations.store import ResultStore
from artmed.evaluations.study import quick_config, run_study, summary, write_outputs
from fake_plugins import register

REPO = Path(__file__).resolve().parents[1]
QUICK_DEFENSES = ["spectral_signatures", "activation_clustering"]
POISONED = "baddist_badmatch-patch-p0.05-s0"

pytestmark = pytest.mark.filterwarnings("ignore:.*label group:UserWarning")


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    """One finished quick study (the other tests copy its folder instead of training again)."""
    out = tmp_path_factory.mktemp("quick") / "study"
    result, paths = run_study(quick_config(str(out)), verbose=False)
    return result, paths, out


@pytest.fixture
def quick_copy(quick_study, tmp_path):
    """A private copy of the quick study's folder (cells, models, tables)."""
    return Path(shutil.copytree(quick_study[2], tmp_path / "study"))


@pytest.fixture
def spies(monkeypatch):
    """Record every training, attack run and defense cell the harness computes (the originals still run)."""
    calls = {"fit": 0, "attacks": [], "defenses": []}
    fit, run_attack, run_defense = MedCLIPEstimator.fit, harness_module.run_attack, Harness._run_defense

    def spy_fit(self, *args, **kwargs):
        calls["fit"] += 1
        return fit(self, *args, **kwargs)

    def spy_attack(spec, *args, **kwargs):
        calls["attacks"].append(spec.key)
        return run_attack(spec, *args, **kwargs)

    def spy_defense(self, run, dspec, spec, *args, **kwargs):
        calls["defenses"].append(f"{spec.key}+{dspec.name}")
        return run_defense(self, run, dspec, spec, *args, **kwargs)

    monkeypatch.setattr(MedCLIPEstimator, "fit", spy_fit)
    monkeypatch.setattr(harness_module, "run_attack", spy_attack)
    monkeypatch.setattr(Harness, "_run_defense", spy_defense)
    return calls


def tiny_config(out, defenses=QUICK_DEFENSES) -> StudyConfig:
    """Smaller than the quick preset: 120 training images, 5 training steps, clean and BadMatch."""
    return StudyConfig(
        seed=0,
        output_dir=str(out),
        data=DataConfig(n_train=120, n_test=20, n_shadow=16, image_size=32),
        pretrain=TrainConfig(steps=5, batch_size=16),
        train=TrainConfig(steps=5, batch_size=16),
        attacks=[AttackSpec("clean"), AttackSpec("badmatch", percent_poison=0.05)],
        defenses=[DefenseSpec(name) for name in defenses],
    )


class ExplodingDefense(Defense):
    """A plugin whose run() always raises."""

    name = "exploding"
    kind = "detection"

    def _check_params(self) -> None:
        pass

    def run(self, context):
        raise RuntimeError("plugin exploded on purpose")


# ---------------------------------------------------------------------------------------------- end to end
def test_quick_study_writes_tables_figures_and_provenance(quick_study):
    result, paths, out = quick_study
    assert [m["attack_key"] for m in result.models] == ["clean-s0", POISONED]
    assert [(d["attack_key"], d["defense"]) for d in result.defenses] == [
        (key, name) for key in ("clean-s0", POISONED) for name in QUICK_DEFENSES
    ]
    assert all(d["status"] == "ok" for d in result.defenses)

    models = read_table(out / "models.csv")
    defenses = read_table(out / "defenses.csv")
    assert [row["attack"] for row in models] == ["clean", "baddist_badmatch"]
    assert {row["defense"] for row in defenses} == set(QUICK_DEFENSES)
    poisoned = [row for row in defenses if row["attack"] == "baddist_badmatch"]
    assert all(0.0 <= row["auroc"] <= 1.0 for row in poisoned)
    assert models[1]["n_poison"] == 8 and 0.0 <= models[1]["asr"] <= 1.0
    setting = "baddist_badmatch-patch-p0.05"
    for name in (
        f"roc_{setting}",
        f"scores_{setting}",
        f"features_{POISONED}",
        "baddist_separation",
        "triggers",
        "phantoms",
    ):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    for name in ("poison_rate_sweep", "ca_asr_before_after", "mitigation_tradeoff"):  # one rate, no mitigation
        assert not (out / "figures" / f"{name}.png").exists()
    assert set(paths.values()) <= set(out.rglob("*"))

    config = json.loads(json.dumps(quick_config(str(out)).to_dict()))
    cells = [json.loads(p.read_text()) for p in (out / "cells").rglob("*.json")]
    assert len(cells) == 1 + 2 + 4
    head = _git_head()
    for record in result.models + result.defenses + [c["record"] for c in cells]:
        assert record["config"] == config and record["seed"] == 0
        versions = record["provenance"]["versions"]
        assert versions["artmed"] and versions["torch"] and versions["art"] and versions["numpy"]
        if head is not None:
            assert record["provenance"]["git"]["commit"] == head
    assert all(c["provenance"]["versions"] == versions for c in cells)
    for row in read_table(out / "models.json") + read_table(out / "defenses.json"):
        assert row["seed"] == 0 and row["config.train.steps"] == 10 and row["provenance.versions.torch"]
    store = ResultStore(out / "cells")
    scores = store.load("defense", f"{POISONED}+spectral_signatures")["arrays"]
    assert scores["scores"].shape == (160,) and scores["poison_mask"].sum() == 8


def _git_head():
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        return None
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


# ---------------------------------------------------------------------------------------------- resume
def test_resume_after_interrupt_computes_only_missing_cells(tmp_path, monkeypatch, spies):
    original = ActivationClustering.run
    calls = []

    def interrupted(self, context):
        calls.append(1)
        if len(calls) == 2:  # on the second model, the poisoned one
            raise KeyboardInterrupt
        return original(self, context)

    monkeypatch.setattr(ActivationClustering, "run", interrupted)
    config = tiny_config(tmp_path / "study")
    assert Harness(config, verbose=False).run().interrupted
    poisoned = config.attacks[1].key
    assert spies["fit"] == 3 and spies["attacks"] == ["clean-s0", poisoned]
    store = ResultStore(tmp_path / "study" / "cells")
    status = {key: store.load("defense", key)["status"] for key in store.keys("defense")}
    assert status == {
        "clean-s0+spectral_signatures": "ok",
        "clean-s0+activation_clustering": "ok",
        f"{poisoned}+spectral_signatures": "ok",
        f"{poisoned}+activation_clustering": "failed",
    }

    monkeypatch.setattr(ActivationClustering, "run", original)
    spies.update(fit=0, attacks=[], defenses=[])
    result = Harness(tiny_config(tmp_path / "study"), verbose=False).run()
    assert spies == {"fit": 0, "attacks": [], "defenses": [f"{poisoned}+activation_clustering"]}
    assert [d["status"] for d in result.defenses] == ["ok"] * 4
    assert result.models[1]["n_poison"] == 6 and len(result.projections[poisoned][1]) > 0


def test_deleted_cell_is_the_only_one_recomputed(quick_study, quick_copy, spies):
    key = f"{POISONED}+spectral_signatures"
    before = ResultStore(quick_copy / "cells").load("defense", key)
    for path in (quick_copy / "cells" / "defense").glob(f"{key}*"):
        path.unlink()
    result = Harness(quick_config(str(quick_copy)), verbose=False).run()
    assert spies == {"fit": 0, "attacks": [], "defenses": [key]}
    after = next(d for d in result.defenses if d["cell"] == f"defense/{key}")
    np.testing.assert_allclose(result.arrays[after["cell"]]["scores"], before["arrays"]["scores"], rtol=1e-5)
    assert after["auroc"] == pytest.approx(before["auroc"])
    assert [m["ca"] for m in result.models] == [m["ca"] for m in quick_study[0].models]


def test_a_damaged_base_model_is_not_read_when_every_cell_is_finished(quick_study, quick_copy, spies):
    """Nothing needs the base model of a finished seed: truncating its weights changes no cell (it once failed every
    finished attacked model of the seed)."""
    weights = next((quick_copy / "models" / "base-s0").glob("model.*"))
    weights.write_bytes(weights.read_bytes()[:100])
    result = Harness(quick_config(str(quick_copy)), verbose=False).run()
    assert spies == {"fit": 0, "attacks": [], "defenses": []}
    assert [(m["status"], m["ca"]) for m in result.models] == [("ok", m["ca"]) for m in quick_study[0].models]


def test_a_damaged_base_model_fails_only_the_cells_that_need_it(quick_study, quick_copy, spies):
    weights = next((quick_copy / "models" / "base-s0").glob("model.*"))
    weights.write_bytes(weights.read_bytes()[:100])
    for path in (quick_copy / "cells" / "model").glob(f"{POISONED}*"):
        path.unlink()
    result = Harness(quick_config(str(quick_copy)), verbose=False).run()
    status = {m["attack_key"]: (m["status"], m.get("error", "")) for m in result.models}
    assert status[POISONED][0] == "failed" and status[POISONED][1].startswith("base model: ")
    assert all(s == "ok" for key, (s, _) in status.items() if key != POISONED)  # finished cells kept
    assert all(d["status"] == "skipped" for d in result.defenses if d["attack_key"] == POISONED)


def test_changed_settings_are_not_reused(quick_copy, spies):
    config = quick_config(str(quick_copy))
    config.train.steps = 11
    with pytest.raises(ValueError, match=r"computed with other settings \(train\.steps\)"):
        Harness(config, verbose=False).run()
    config = quick_config(str(quick_copy))
    config.defenses[0].params = {"eps": 0.2}
    with pytest.raises(ValueError, match=r"spectral_signatures.json was computed with other settings \(defense"):
        Harness(config, verbose=False).run()
    assert spies == {"fit": 0, "attacks": [], "defenses": []}
    settings = Harness(quick_config(str(quick_copy)), verbose=False)._settings(0)
    assert {"model", "tasks", "data", "pretrain"} <= set(settings)  # a changed checkpoint or task set is not reused


def test_detection_with_retrain_scores_the_filtered_model(tmp_path, spies, monkeypatch):
    kept = []
    run_attack = harness_module.run_attack

    def spy_keep(spec, *args, keep=None, **kwargs):
        kept.append(None if keep is None else int(keep.sum()))
        return run_attack(spec, *args, keep=keep, **kwargs)

    monkeypatch.setattr(harness_module, "run_attack", spy_keep)
    built = []
    poison = pipeline.poison_training_set

    def spy_poison(spec, x, y, context=None, cache=None):  # the data steps run, not those read from the cache
        built.extend(
            k
            for step, k in zip(spec.composition, spec.step_keys())
            if step.kind == "data" and (cache is None or k not in cache)
        )
        return poison(spec, x, y, context, cache)

    monkeypatch.setattr(pipeline, "poison_training_set", spy_poison)
    monkeypatch.setattr(harness_module, "poison_training_set", spy_poison)
    config = quick_config(str(tmp_path / "retrain"))
    config.attacks = config.attacks[1:]
    config.defenses = [DefenseSpec("spectral_signatures", retrain=True)]
    result = Harness(config, verbose=False).run()
    record = result.defenses[0]
    assert record["status"] == "ok"
    flagged = int(np.asarray(result.arrays[record["cell"]]["flags"]).sum())
    assert kept == [None, config.data.n_train - flagged] and flagged > 0
    assert spies["fit"] == 3  # base, attacked model, retrained model
    assert built == config.attacks[0].step_keys()[1:]  # BadMatch runs once: model, defense and retrain share it
    for key in ("ca_after", "asr_after", "der"):
        assert record[key] is not None and np.isfinite(record[key])


# ---------------------------------------------------------------------------------------------- plugins
def test_failing_plugin_is_recorded_and_the_study_goes_on(quick_copy, monkeypatch):
    register(monkeypatch, exploding=ExplodingDefense)
    for path in (quick_copy / "cells" / "defense").glob("*+spectral_signatures*"):
        path.unlink()
    config = quick_config(str(quick_copy))
    config.defenses.insert(0, DefenseSpec("exploding"))
    result = Harness(config, verbose=False).run()

    failed = [d for d in result.defenses if d["defense"] == "exploding"]
    assert len(failed) == 2 and all(d["status"] == "failed" for d in failed)
    assert all(d["error"] == "RuntimeError: plugin exploded on purpose" for d in failed)
    assert "plugin exploded on purpose" in failed[0]["traceback"]
    others = [d for d in result.defenses if d["defense"] != "exploding"]
    assert len(others) == 4 and all(d["status"] == "ok" for d in others)
    assert all(0.0 <= d["auroc"] <= 1.0 for d in others if d["attack_key"] == POISONED)

    write_outputs(result)
    rows = read_table(quick_copy / "defenses.csv")
    assert [r["status"] for r in rows if r["defense"] == "exploding"] == ["failed", "failed"]
    assert "RuntimeError: plugin exploded on purpose" in {r["error"] for r in rows}
    assert re.search(r"exploding\s*\|\s*failed", summary(result))

    class Repaired(ExplodingDefense):
        def run(self, context):
            return ActivationClustering().run(context)

    register(monkeypatch, exploding=Repaired)
    retried = Harness(config, verbose=False).run()
    assert [d["status"] for d in retried.defenses if d["defense"] == "exploding"] == ["ok", "ok"]


def test_unknown_defense_fails_before_any_work(tmp_path, monkeypatch, spies):
    monkeypatch.setattr(harness_module, "load_study_data", lambda *a, **kw: pytest.fail("data was built"))
    config = tiny_config(tmp_path / "study", defenses=["spectral_signatures", "no_such_defense"])
    installed = r"unknown defense 'no_such_defense'; installed defenses: .*spectral_signatures"
    with pytest.raises(ValueError, match=installed):
        Harness(config)
    assert spies["fit"] == 0 and not (tmp_path / "study").exists()


# ---------------------------------------------------------------------------------------------- config
def test_config_yaml_round_trip(tmp_path):
    config = quick_config(str(tmp_path / "out"), seed=3)
    config.defenses[0].params = {"eps": 0.1}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert StudyConfig.from_yaml(path) == config

    path.write_text(
        "seed: 1\ndefenses: [spectral_signatures, {name: fine_pruning, retrain: true}]\n"
        "attacks: [{attack: badmatch, percent_poison: 0.02}]\ntrain: {steps: 7}\n"
    )
    loaded = StudyConfig.from_yaml(path)
    assert loaded.defenses == [DefenseSpec("spectral_signatures"), DefenseSpec("fine_pruning", retrain=True)]
    assert loaded.attacks[0].key == "badmatch-patch-p0.02-s0" and loaded.train.steps == 7
    assert loaded.train.lr == TrainConfig().lr and loaded.data == DataConfig()


@pytest.mark.parametrize(
    "text, message",
    [
        ("sed: 1\n", r"config: unknown key\(s\) \['sed'\]"),
        ("data: {n_trian: 10}\n", r"config\.data: unknown key\(s\) \['n_trian'\]"),
        ("attacks: [{attack: badmatch, rate: 0.1}]\n", r"config\.attacks\[0\]: unknown key\(s\) \['rate'\]"),
        (
            "defenses: [{name: spectral_signatures, param: {}}]\n",
            r"config\.defenses\[0\]: unknown key\(s\) \['param'\]",
        ),
        ("data: {n_train: 0}\n", r"data\.n_train must be a positive integer"),
        ("attacks: [{attack: badnets}]\n", r"unknown attack 'badnets'"),
        ("attacks: clean\n", r"config\.attacks must be a list"),
        ("- 1\n- 2\n", r"must be a mapping"),
        ("seed: [1\n", r"cannot read study config"),
    ],
)
def test_config_errors_name_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        StudyConfig.from_yaml(path)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_lists_builtin_defenses(capsys):
    assert main(["defenses"]) == 0
    out = capsys.readouterr().out
    for name, kind in [
        ("spectral_signatures", "detection"),
        ("activation_clustering", "detection"),
        ("art_spectral_signatures", "detection"),
        ("art_activation_clustering", "detection"),
        ("fine_pruning", "mitigation"),
        ("cleanclip", "mitigation"),
    ]:
        assert re.search(rf"^{name}\s+{kind}\s", out, flags=re.MULTILINE), name


def test_cli_run_quick_resumes_from_cells(quick_copy, spies, capsys):
    for name in ("models.csv", "defenses.csv"):
        (quick_copy / name).unlink()
    assert main(["run", "--preset", "quick", "--output", str(quick_copy), "--quiet"]) == 0
    assert spies == {"fit": 0, "attacks": [], "defenses": []}
    out = capsys.readouterr().out
    assert "Defenses" in out and "activation_clustering" in out and str(quick_copy) in out
    assert len(read_table(quick_copy / "defenses.csv")) == 4


def test_cli_reports_config_errors(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("defenses: [no_such_defense]\n")
    assert main(["run", "--config", str(path), "--output", str(tmp_path / "out"), "--quiet"]) == 2
    assert "unknown defense 'no_such_defense'" in capsys.readouterr().err
    path.write_text("trian: {steps: 3}\n")
    assert main(["run", "--config", str(path), "--quiet"]) == 2
    assert "unknown key(s) ['trian']" in capsys.readouterr().err


def test_a_second_run_on_a_locked_folder_is_refused_before_any_cell(quick_copy, spies, capsys):
    (quick_copy / ".lock").write_text("pid 4242 on elsewhere since 2026-01-01T00:00:00+00:00\n")
    fd = os.open(quick_copy / ".lock", os.O_RDWR)  # another run holds the folder
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    staging = quick_copy / "models" / ".base-s0.tmp-k3j2h1"
    staging.mkdir()
    cells = {p: p.read_bytes() for p in (quick_copy / "cells").rglob("*.json")}
    try:
        assert main(["run", "--preset", "quick", "--output", str(quick_copy), "--seed", "1", "--quiet"]) == 2
    finally:
        os.close(fd)
    err = capsys.readouterr().err
    assert "in use by another artmed run (pid 4242 on elsewhere" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in (quick_copy / "cells").rglob("*.json")} == cells
    assert staging.is_dir() and spies == {"fit": 0, "attacks": [], "defenses": []}
    with pytest.warns(UserWarning, match=r"removed .*\.base-s0\.tmp-k3j2h1, left half-written"):
        Harness(quick_config(str(quick_copy)), verbose=False).run()  # the holder is gone: it runs, and cleans up
    assert not staging.exists() and spies == {"fit": 0, "attacks": [], "defenses": []}


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda record: record.update(ca="0.9"), "ca"),
        (lambda record: [record.pop("ca"), record.pop("asr")], "ca"),
        (lambda record: record.update(n_poison=2.5), "n_poison"),
    ],
)
def test_a_malformed_cell_is_recomputed_not_reused(quick_study, quick_copy, spies, edit, field):
    path = quick_copy / "cells" / "model" / f"{POISONED}.json"
    cell = json.loads(path.read_text())
    edit(cell["record"])
    path.write_text(json.dumps(cell))
    with pytest.warns(UserWarning, match=rf"ignoring result cell .*{POISONED}\.json: field '{field}' must be"):
        result = Harness(quick_config(str(quick_copy)), verbose=False).run()
    assert spies["attacks"] == [POISONED] and spies["defenses"] == []
    model = next(m for m in result.models if m["attack_key"] == POISONED)
    assert isinstance(model["ca"], float) and model["ca"] == pytest.approx(
        next(m for m in quick_study[0].models if m["attack_key"] == POISONED)["ca"]
    )
