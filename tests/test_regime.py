"""The regime preset (rate at a fixed size against size at a fixed count): its points, its studies, and a small
regime run end to end into its table and figures."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from artmed.attacks.pipeline import AttackSpec
from artmed.evaluations import cli
from artmed.evaluations import regime as regime_module
from artmed.evaluations.config import DataConfig, DefenseSpec, TrainConfig
from artmed.evaluations.harness import Harness
from artmed.evaluations.regime import Regime, RegimeResult, load_regime, read_regime, regime_configs, run_regime


def test_builtin_regime_points_reach_the_papers_rate():
    regime = Regime()
    assert regime.points() == [(500, 1), (1000, 1), (1000, 5), (1000, 20), (2000, 1)]
    assert min(count / n for n, count in regime.points()) == pytest.approx(0.0005)  # the paper's 0.05 %
    assert regime.on_axis("a", 1000, 5) and not regime.on_axis("a", 2000, 1)
    assert regime.on_axis("b", 2000, 1) and not regime.on_axis("b", 1000, 20)


def test_regime_studies_poison_the_counts_with_both_triggers_and_scale_the_schedule():
    configs = regime_configs("out", seed=3, n_seeds=3)
    assert [c.output_dir for c in configs] == [str(Path("out") / f"n{n}") for n in (500, 1000, 2000)]
    points = set()
    for config in configs:
        n = config.data.n_train
        assert config.seeds == [3, 4, 5]
        assert config.train.steps == round(300 * n / 2000)  # the default study's 9.6 passes at every size
        assert config.attacks[0].attack == "clean"
        for spec in config.attacks[1:]:
            count = round(spec.percent_poison * n)
            assert count == pytest.approx(spec.percent_poison * n)  # BadMatch's round() gives the count exactly
            points.add((n, count, spec.attack, spec.trigger))
            assert spec.trigger_params == ({"unnormalized": True} if spec.trigger == "fourier" else {})
        names = [d.name for d in config.defenses]
        assert {"spectre", "scan", "strip", "fine_pruning", "cleanclip"} <= set(names)
        assert all(not d.runs_on("clean") and d.runs_on("badmatch") for d in config.defenses)
    expected = {
        (n, c, a, t)
        for n, c in Regime().points()
        for a in ("badmatch", "baddist_badmatch")
        for t in ("patch", "fourier")
    }
    assert points == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"counts": (0, 5)}, "counts"),
        ({"sizes": ()}, "sizes"),
        ({"count": 600, "sizes": (500,)}, "more poisoned images"),
        ({"triggers": ("blended",)}, "triggers"),
        ({"attacks": ()}, "attacks"),
    ],
)
def test_bad_regime_is_refused_naming_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Regime(**kwargs)


def _small(regime: Regime, out: Path) -> list:
    """The regime's studies shrunk to seconds: tiny data and schedules, one cheap detector and one mitigation."""
    configs = []
    for config in regime.configs(str(out), seeds=[0]):
        config.data = DataConfig(n_train=config.data.n_train, n_test=40, n_shadow=32, image_size=32)
        config.model.image_size = None
        config.pretrain = TrainConfig(steps=4, batch_size=16)
        config.train = TrainConfig(steps=4, batch_size=16)
        for spec in config.attacks:
            if "baddist" in spec.attack:
                spec.baddist_params = {"lr": 1e-2, "steps": 3, "batch_size": 16}
        config.defenses = [
            DefenseSpec("spectral_signatures", attacks=list(regime.attacks)),
            DefenseSpec("fine_pruning", {"finetune_steps": 2, "batch_size": 16}, attacks=list(regime.attacks)),
        ]
        configs.append(replace(config))
    return configs


def test_small_regime_runs_into_its_table_and_figures_and_resumes(tmp_path):
    regime = Regime(size=80, counts=(2, 8), count=2, sizes=(80, 160), triggers=("patch",))
    configs = _small(regime, tmp_path)
    result = run_regime(str(tmp_path), configs, regime, verbose=False)
    assert not result.failed and not result.interrupted
    attacked = [r for r in result.models if r["attack"] != "clean"]
    cells = {(r["n_train"], r["seed"]): r for r in result.models if r["attack"] == "clean" and r["trigger"] is None}
    alone = [r for r in result.models if r["attack"] == "clean" and r["trigger"] is not None]
    assert len(alone) == len(cells)  # one trigger: each clean model scored under it
    for record in alone:  # the trigger alone on the clean model, scored as its study scored it
        assert record["asr"] == cells[(record["n_train"], record["seed"])]["asr"]
        assert record["ca"] == cells[(record["n_train"], record["seed"])]["ca"]
    assert sorted({(r["n_train"], r["n_poison"]) for r in attacked}) == [(80, 2), (80, 8), (160, 2)]
    assert len(result.defenses) == len(attacked) * 2
    assert all(r["n_poison"] in (2, 8) for r in result.defenses)
    text = result.paths["summary"].read_text()
    assert text.count("| badmatch | patch |") == 3 + 3 * 2  # three model rows, then two defenses per point
    assert re.search(r"\| spectral_signatures \| `[YN?]{3}` \| `[YN?]{3}` \|", text)  # the map: 3 points
    for name in ("rate", "count", "size"):
        assert result.paths[f"figure_{name}"].stat().st_size > 0
    rows = json.loads(result.paths["models_json"].read_text())
    assert len(rows) == len(result.models)
    files = sorted(tmp_path.glob("n*/cells/*/*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    again = run_regime(str(tmp_path), configs, regime, verbose=False)
    assert {p: p.stat().st_mtime_ns for p in files} == stamps  # resumed: no cell recomputed
    assert again.paths["summary"].read_text() == text
    harness = Harness(configs[0], verbose=False)
    with pytest.raises(ValueError, match="no finished, saved model 'badmatch-patch-p0.5-s0'"):
        harness.score_saved(harness.load_data(0), AttackSpec("badmatch", percent_poison=0.5), configs[0].attacks[0])
    models, defenses = read_regime([Path(c.output_dir) for c in configs] + [tmp_path / "n999"])  # missing: skipped
    assert len(models) == len(result.models) - len(alone) and len(defenses) == len(result.defenses)


def test_cli_regime_preset_runs_every_size_with_the_options(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_run(output, configs, regime=None, **options):
        seen.update(output=output, configs=configs, options=options)
        summary = tmp_path / "regime_summary.md"
        summary.write_text("the table\n")
        return RegimeResult([], [], [], False, {"summary": summary})

    monkeypatch.setattr(regime_module, "run_regime", fake_run)
    status = cli.main(
        ["run", "--preset", "regime", "--output", str(tmp_path), "--seeds", "2", "--protocol", "released", "--quiet"]
    )
    assert status == 0
    assert seen["output"] == str(tmp_path)
    assert [c.data.n_train for c in seen["configs"]] == [500, 1000, 2000]
    assert all(c.seeds == [0, 1] and c.protocol == "released" for c in seen["configs"])
    assert (
        seen["options"]["workers"] is None and seen["options"]["threads"] == 1 and seen["options"]["verbose"] is False
    )
    assert "the table" in capsys.readouterr().out
    path = tmp_path / "regime.yaml"
    path.write_text("regime: {size: 100, counts: [1, 2], count: 1, sizes: [100, 200]}\ndata: {n_train: 200}\n")
    assert cli.main(["run", "--preset", "regime", "--config", str(path), "--seed", "4", "--quiet"]) == 0
    assert [(c.data.n_train, c.train.steps, c.seeds) for c in seen["configs"]] == [(100, 75, [4]), (200, 150, [4])]


def test_regime_file_is_a_study_config_with_axes(tmp_path):
    path = tmp_path / "regime.yaml"
    path.write_text(
        "regime: {size: 400, counts: [2, 4], count: 2, sizes: [200, 400], triggers: [patch]}\n"
        "seeds: [5, 6]\n"
        "data: {n_train: 800, n_test: 50, image_size: 32}\n"
        "train: {steps: 100, batch_size: 16}\n"
        "attacks:\n"
        "  - {attack: baddist_badmatch, percent_poison: 0.01, baddist_params: {steps: 7}}\n"
        "defenses:\n"
        "  - {name: spectral_signatures}\n"
        "  - {name: fine_pruning, attacks: [badmatch]}\n"
    )
    regime, template = load_regime(path)
    assert regime.points() == [(200, 2), (400, 2), (400, 4)] and regime.triggers == ("patch",)
    configs = regime.configs(str(tmp_path / "out"), template)
    assert [(c.data.n_train, c.train.steps, c.data.n_test, c.seeds) for c in configs] == [
        (200, 25, 50, [5, 6]),  # 100 steps at 800 images, scaled
        (400, 50, 50, [5, 6]),
    ]
    assert all(c.train.batch_size == 16 for c in configs)
    attacks = configs[1].attacks
    assert [(a.attack, round(a.percent_poison * 400) if a.attack != "clean" else 0) for a in attacks] == [
        ("clean", 0),
        ("badmatch", 2),
        ("baddist_badmatch", 2),
        ("badmatch", 4),
        ("baddist_badmatch", 4),
    ]
    assert all(a.baddist_params == {"steps": 7} for a in attacks if a.attack == "baddist_badmatch")
    assert [(d.name, d.attacks) for d in configs[0].defenses] == [
        ("spectral_signatures", ["badmatch", "baddist_badmatch"]),
        ("fine_pruning", ["badmatch"]),
    ]
    assert regime.configs("o", template, seeds=[9])[0].seeds == [9]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("regime: {sizes: [100], colour: red}\ndata: {n_train: 100}\n", "unknown regime field"),
        ("regime: [1, 2]\ndata: {n_train: 100}\n", "regime must be a mapping"),
        ("regime: {counts: [0]}\ndata: {n_train: 100}\n", "counts"),
    ],
)
def test_bad_regime_file_is_refused_naming_the_field(tmp_path, text, message):
    path = tmp_path / "regime.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_regime(path)


def test_real_data_regime_needs_the_size_its_steps_are_for(tmp_path):
    path = tmp_path / "regime.yaml"
    path.write_text("regime: {size: 100, counts: [1], count: 1, sizes: [100]}\ndata: {n_test: 20}\n")
    regime, template = load_regime(path)
    template.data.n_train = None
    with pytest.raises(ValueError, match="data.n_train"):
        regime.configs("out", template)
