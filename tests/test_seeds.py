"""Multi-seed studies: seed statistics, independent replicates, stale-code cells, the README's generated tables."""

import json
import math
import shutil
from pathlib import Path

import pytest

from artmed.attacks.pipeline import AttackSpec
from artmed.attacks.poisoning.steps import BadDistStep
from artmed.evaluations import harness as harness_module
from artmed.evaluations import readme, store
from artmed.evaluations.aggregate import format_summary, mean_interval, summarize
from artmed.evaluations.cli import main
from artmed.evaluations.config import StudyConfig
from artmed.evaluations.harness import Harness
from artmed.evaluations.report import read_table
from artmed.evaluations.study import default_config, quick_config, run_study

pytestmark = pytest.mark.filterwarnings("ignore:.*label group:UserWarning")


# ---------------------------------------------------------------------------------------------- statistics
def test_mean_interval_is_the_student_t_interval():
    stats = mean_interval([1.0, 2.0, 3.0])
    # std (ddof 1) = 1; t(0.975, 2) = 4.302653 -> half-width 4.302653 / sqrt(3) = 2.484138
    assert stats["mean"] == 2.0 and stats["std"] == pytest.approx(1.0) and stats["n"] == 3
    assert stats["ci95"] == pytest.approx(2.484138, abs=1e-6)
    one = mean_interval([0.5, None, float("nan")])
    assert one["mean"] == 0.5 and one["n"] == 1 and math.isnan(one["std"]) and math.isnan(one["ci95"])
    assert math.isnan(mean_interval([])["mean"])


def test_summarize_groups_seed_replicates_and_formats_them():
    records = [
        {"attack": "badmatch", "trigger": "patch", "seed": s, "ca": ca, "asr": asr}
        for s, ca, asr in [(0, 0.8, 1.0), (1, 0.9, 0.5), (2, 1.0, 0.0)]
    ]
    records.append({"attack": "clean", "trigger": None, "seed": 0, "ca": 0.7})
    rows = summarize(records, ("attack", "trigger"), ("ca", "asr", "ra"))
    assert [r["attack"] for r in rows] == ["badmatch", "clean"]
    assert rows[0]["seeds"] == "0 1 2" and rows[0]["n_seeds"] == 3
    assert rows[0]["ca"] == pytest.approx(0.9) and rows[0]["asr_std"] == pytest.approx(0.5)
    assert "ra" not in rows[0] and "asr" not in rows[1]
    table = format_summary(rows, ("attack", "trigger"), ("ca", "asr"))
    # rates: the t-intervals [0.652, 1.148] and [-0.742, 1.742] kept inside [0, 1]
    assert (rows[0]["asr_lo"], rows[0]["asr_hi"]) == (0.0, 1.0) and rows[0]["ca_lo"] == pytest.approx(0.652, abs=1e-3)
    assert "| badmatch | patch | 3 | 0.900 ± 0.100 [0.652, 1.000] | 0.500 ± 0.500 [0.000, 1.000] |" in table
    assert "| clean | - | 1 | 0.700 | - |" in table


# ---------------------------------------------------------------------------------------------- config and CLI
def test_seeds_in_config_and_presets():
    assert StudyConfig().seed_list == [0] and StudyConfig(seed=4).seed_list == [4]
    assert StudyConfig.from_dict({"seeds": [3, 5]}).seed_list == [3, 5]
    assert default_config().seed_list == [0, 1, 2]
    assert default_config(seed=7, n_seeds=2).seed_list == [7, 8]
    for raw, message in [
        ({"seeds": 3}, "seeds must be a list"),
        ({"seeds": [1, 1]}, "seeds listed twice"),
        ({"seeds": [0, -1]}, r"seeds\[1\] must be a non-negative integer"),
        ({"seeds": ["one"]}, r"config\.seeds\[0\] must be an integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            StudyConfig.from_dict(raw)
    with pytest.raises(ValueError, match="number of seeds"):
        default_config(n_seeds=0)


def test_cli_seeds_option(tmp_path, capsys, monkeypatch):
    seen = {}

    def fake_run(config, verbose, reuse_stale, workers, threads, address):
        seen.update(seeds=config.seed_list, reuse=reuse_stale, engine=(workers, threads, address))
        raise ValueError("stop here")

    monkeypatch.setattr("artmed.evaluations.study.run_study", fake_run)
    assert main(["run", "--preset", "quick", "--seeds", "3", "--seed", "2", "--reuse-stale"]) == 2
    assert seen == {"seeds": [2, 3, 4], "reuse": True, "engine": (None, 1, None)}
    main(["run", "--preset", "quick", "--workers", "2", "--threads", "1", "--ray-address", "auto"])
    assert seen["engine"] == (2, 1, "auto")
    path = tmp_path / "study.yaml"
    path.write_text("seeds: [5, 9]\n")
    main(["run", "--config", str(path)])
    assert seen["seeds"] == [5, 9]
    main(["run", "--config", str(path), "--seeds", "2"])
    assert seen["seeds"] == [0, 1]
    with pytest.raises(SystemExit):
        main(["run", "--seeds", "0"])
    assert "positive integer" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the harness
@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds") / "study"
    result, paths = run_study(quick_config(str(out), n_seeds=2), verbose=False)
    return result, paths, out


def test_every_attack_runs_once_per_seed_as_an_independent_replicate(two_seeds):
    result, paths, out = two_seeds
    assert [(m["attack"], m["seed"]) for m in result.models] == [
        ("clean", 0),
        ("baddist_badmatch", 0),
        ("clean", 1),
        ("baddist_badmatch", 1),
    ]
    assert {p.name for p in (out / "models").iterdir()} >= {"base-s0", "base-s1"}
    poisoned = [m for m in result.models if m["attack"] == "baddist_badmatch"]
    assert all(-1.0 <= m["heldout_cos_trigger"] <= 1.0 and -1.0 <= m["baddist_cos_clean"] <= 1.0 for m in poisoned)
    masks = [result.arrays[f"defense/{m['attack_key']}+spectral_signatures"]["poison_mask"] for m in poisoned]
    assert masks[0].sum() == masks[1].sum() == 8 and (masks[0] != masks[1]).any()  # its own poison subset

    summary = read_table(out / "models_summary.csv")
    assert [(r["attack"], r["n_seeds"], r["seeds"]) for r in summary] == [
        ("clean", 2, "0 1"),
        ("baddist_badmatch", 2, "0 1"),
    ]
    row = summary[1]
    assert row["ca"] == pytest.approx(sum(m["ca"] for m in poisoned) / 2)
    assert row["ca_ci95"] == pytest.approx(12.7062 * row["ca_std"] / math.sqrt(2), rel=1e-4)
    defenses = read_table(out / "defenses_summary.csv")
    assert {(r["attack"], r["defense"], r["n_seeds"]) for r in defenses} == {
        (a, d, 2) for a in ("clean", "baddist_badmatch") for d in ("spectral_signatures", "activation_clustering")
    }
    assert len(read_table(out / "models.csv")) == 4


def test_cells_from_other_code_are_recomputed_unless_reused(two_seeds, tmp_path, monkeypatch):
    out = Path(shutil.copytree(two_seeds[2], tmp_path / "study"))
    attacks = []
    run_attack = harness_module.run_attack
    monkeypatch.setattr(
        harness_module, "run_attack", lambda spec, *a, **k: attacks.append(spec.key) or run_attack(spec, *a, **k)
    )
    config = quick_config(str(out), n_seeds=2)
    config.seeds = [1]
    Harness(config, verbose=False).run()
    assert attacks == []  # same code: every cell reused

    monkeypatch.setattr(store, "source_hash", lambda: "other code")
    Harness(config, verbose=False, reuse_stale=True).run()
    assert attacks == []
    harness = Harness(config, verbose=False)
    harness.run()
    assert attacks == ["clean-s1", "baddist_badmatch-patch-p0.05-s1"]
    assert "base-s1" in harness.stale and "clean-s1+spectral_signatures" in harness.stale
    cell = json.loads((out / "cells" / "model" / "clean-s1.json").read_text())
    assert cell["provenance"]["source_hash"] == "other code"


def test_source_hash_covers_every_source_file_once(tmp_path):
    checkout = {"artmed": tmp_path / "artmed", "artmed.attacks": tmp_path / "attacks"}
    (tmp_path / "artmed" / "models").mkdir(parents=True)
    (tmp_path / "attacks").mkdir()
    (tmp_path / "artmed" / "models" / "m.py").write_text("a = 1\n")
    (tmp_path / "attacks" / "p.py").write_text("b = 2\n")
    before = store.tree_hash(checkout)
    (tmp_path / "attacks" / "p.py").write_text("b = 3\n")  # an uncommitted edit
    assert store.tree_hash(checkout) != before
    (tmp_path / "attacks" / "p.py").write_text("b = 2\n")
    assert store.tree_hash(checkout) == before
    wheel = tmp_path / "site" / "artmed"  # an install nests attacks/ inside artmed/
    shutil.copytree(tmp_path / "artmed", wheel)
    shutil.copytree(tmp_path / "attacks", wheel / "attacks")
    assert store.tree_hash({"artmed": wheel, "artmed.attacks": wheel / "attacks"}) == before
    assert len(store.source_hash()) == 64 and store.provenance()["source_hash"] == store.source_hash()


# ---------------------------------------------------------------------------------------------- the README
def test_readme_block_is_written_and_checked(two_seeds, tmp_path, capsys):
    out = two_seeds[2]
    path = tmp_path / "README.md"
    path.write_text(f"# title\n\n{readme.BEGIN}\nold\n{readme.END}\n\ntail\n")
    assert readme.main([str(out), "--readme", str(path)]) == 0
    text = path.read_text()
    assert text.startswith("# title\n\n") and text.endswith("\n\ntail\n") and "old" not in text
    assert "| baddist_badmatch | patch | 0.05 | 2 |" in text and "seeds [0, 1]" in text
    assert readme.check(path, out) == []
    assert readme.main([str(out), "--readme", str(path), "--check"]) == 0

    row = next(line for line in text.splitlines() if line.startswith("| baddist_badmatch | patch | 0.05"))
    cells = row.split(" | ")
    mean = float(cells[4].split()[0])
    for shift, ok in ((0.09, True), (0.11, False)):
        changed = cells[:4] + [cells[4].replace(f"{mean:.3f}", f"{mean + shift:.3f}", 1)] + cells[5:]
        path.write_text(text.replace(row, " | ".join(changed)))
        problems = readme.check(path, out)
        assert (problems == []) is ok, problems
    assert "mean" in problems[0] and "more than 0.100" in problems[0]
    assert readme.main([str(out), "--readme", str(path), "--check"]) == 1
    path.write_text(text.replace("| baddist_badmatch | patch", "| badmatch | patch"))
    assert any("text differs" in p for p in readme.check(path, out))
    head, tail = text.split(readme.UNCHECKED)
    path.write_text(head + readme.UNCHECKED + tail.replace("0.", "9."))  # past the marker: not compared
    assert readme.check(path, out) == []
    path.write_text(text.replace(readme.UNCHECKED + "\n", ""))
    assert "no" in readme.check(path, out)[0]
    path.write_text("no block\n")
    assert readme.main([str(out), "--readme", str(path), "--check"]) == 2
    assert "no results block" in capsys.readouterr().err


def test_settings_sharing_a_seed_and_trigger_share_one_baddist_encoder(tmp_path, monkeypatch):
    calls = []
    apply = BadDistStep.apply
    monkeypatch.setattr(
        BadDistStep,
        "apply",
        lambda self, estimator, context: calls.append(context.seed) or apply(self, estimator, context),
    )
    config = quick_config(str(tmp_path / "study"))
    config.attacks.append(AttackSpec("baddist", baddist_params=config.attacks[1].baddist_params))
    config.defenses = []
    result = Harness(config, verbose=False).run()
    assert calls == [0]  # one BadDist step run, its output cached for the other setting
    both = [m for m in result.models if m["attack"].startswith("baddist")]
    assert both[0]["heldout_cos_trigger"] == both[1]["heldout_cos_trigger"]
    assert both[0]["baddist_cos_clean"] == both[1]["baddist_cos_clean"]
