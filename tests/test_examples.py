"""The example configs in examples/ load, pass every up-front check against generated data layouts, and select what
their comments say (the paper's real-data settings under the released protocol)."""

from pathlib import Path

import pytest

from artmed.data.tasks import task_prompts
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations.config import StudyConfig
from artmed.evaluations.protocol import RELEASED_BADDIST, RELEASED_TRAIN
from artmed.evaluations.regime import load_regime
from artmed.models import save_tokenizer
from artmed.models.config import RELEASED_LOGIT_SCALE_MAX
from test_study_sources import write_covid, write_mimic, write_rsna

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PAPER = {"paper_resnet50.yaml": "resnet50", "paper_swin_tiny.yaml": "swin_tiny"}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """MIMIC-CXR-JPG (with reports), RSNA and COVID layouts and a tokenizer folder, keyed by the examples' paths."""
    root = tmp_path_factory.mktemp("real")
    write_mimic(root / "mimic")
    write_rsna(root / "rsna")
    write_covid(root / "covid")
    save_tokenizer(MedCLIPEstimator.tiny(task_prompts("rsna_like"), image_size=32, seed=0).tokenizer, root / "bert")
    return {
        "/data/mimic-cxr-jpg": root / "mimic",
        "/data/mimic-cxr-reports": root / "mimic",
        "/data/rsna-pneumonia": root / "rsna",
        "/data/covid19-radiography": root / "covid",
        "/models/Bio_ClinicalBERT": root / "bert",
    }


def localised(name: str, roots: dict[str, Path], tmp_path: Path) -> Path:
    text = (EXAMPLES / name).read_text()
    for placeholder, path in roots.items():
        assert placeholder in text, f"{name} no longer names {placeholder}: update this test"
        text = text.replace(placeholder, str(path))
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_pass_every_check_on_real_layouts(name, roots, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = StudyConfig.from_yaml(localised(name, roots, tmp_path))
    config.check_runnable()
    assert config.protocol == "released" and config.seeds == [0, 1, 2]
    assert (config.model.variant, config.data.image_size, config.data.source) == (PAPER[name], 224, "mimic_cxr")
    assert [t.name for t in config.tasks] == ["rsna", "covid", "mimic_5x200"]
    assert config.evaluation.decision == "released_sigmoid" and config.evaluation.prompts == "medclip"
    assert config.model.logit_scale_max == RELEASED_LOGIT_SCALE_MAX
    assert config.train.batch_size == RELEASED_TRAIN["batch_size"] and config.train.eda
    assert config.data.native_trigger and config.data.interpolation == "bilinear"
    poisoned = [a for a in config.attacks if a.attack != "clean"]
    assert {a.percent_poison for a in poisoned} == {0.0005} and {a.trigger for a in poisoned} == {"patch", "fourier"}
    assert all(a.baddist_params == RELEASED_BADDIST for a in poisoned if "baddist" in a.attack)
    assert all(a.badmatch_params == {"candidates": "released"} for a in poisoned)
    assert {d.name for d in config.defenses} >= {
        "spectral_signatures",
        "activation_clustering",
        "fine_pruning",
        "spectre",
        "scan",
        "strip",
        "decree",
        "cleanclip",
    }


def test_every_example_config_loads():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        if path.name.startswith("regime_"):
            assert load_regime(path)[0].points(), path.name
        else:
            assert StudyConfig.from_yaml(path).attacks, path.name


def test_regime_example_runs_the_papers_regime_on_real_layouts(roots, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    regime, template = load_regime(localised("regime_resnet50.yaml", roots, tmp_path))
    assert min(count / n for n, count in regime.points()) == pytest.approx(0.0005)
    configs = regime.configs("out", template)
    assert [c.data.n_train for c in configs] == [5000, 10000, 20000]
    assert [c.train.steps for c in configs] == [1562, 3125, 6250]  # 10 passes of 32 at every size
    for config in configs:
        assert config.protocol == "released" and config.model.variant == "resnet50"
        assert config.data.source == "mimic_cxr" and config.data.native_trigger
        triggers = {a.trigger: a.trigger_params for a in config.attacks if a.attack != "clean"}
        assert triggers["fourier"] == {"unnormalized": True}
        assert all(a.baddist_params == RELEASED_BADDIST for a in config.attacks if "baddist" in a.attack)
        assert {d.name for d in config.defenses} >= {"spectre", "scan", "strip", "decree", "cleanclip"}
        config.check_runnable()
