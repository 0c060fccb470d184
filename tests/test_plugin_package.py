"""A third-party defense package, pip-installed here, is listed by ``artmed defenses`` and run by name by the harness.

The package is built and installed offline (``--no-index --no-build-isolation``, the environment's setuptools) and
always uninstalled afterwards. Both checks run in a subprocess, so the new entry points are read afresh.
"""

import os
import re
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

from artmed.defenses import registry
from artmed.evaluations.report import read_table
from artmed.evaluations.store import ResultStore

DISTRIBUTION = "artmed-toy-plugin"

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "artmed-toy-plugin"
version = "0.1.0"
description = "A toy third-party artmed defense"
dependencies = ["artmed"]

[project.entry-points."artmed.defenses"]
toy_norm = "artmed_toy_plugin:ToyNormDefense"

[tool.setuptools]
py-modules = ["artmed_toy_plugin"]
"""

MODULE = '''\
"""A third-party artmed defense: suspicion = the norm of an image's pooled features."""

import numpy as np

from artmed.defenses.base import Defense, DetectionResult


class ToyNormDefense(Defense):
    """Scores training images by the L2 norm of their features and flags the highest ``share``."""

    name = "toy_norm"
    kind = "detection"

    def __init__(self, share: float = 0.05, layer: str = "image_pooled") -> None:
        self.share = share
        self.layer = layer
        self._check_params()

    def _check_params(self) -> None:
        if not 0.0 < self.share < 1.0:
            raise ValueError(f"share must be in (0, 1), got {self.share}")

    def run(self, context):
        scores = np.linalg.norm(context.features(self.layer), axis=1)
        flags = np.zeros(scores.shape[0], dtype=bool)
        flags[np.argsort(-scores, kind="stable")[: max(1, round(self.share * scores.shape[0]))]] = True
        return DetectionResult(scores=scores, flags=flags)
'''

STUDY = """\
seed: 0
data: {n_train: 120, n_test: 20, n_shadow: 16, image_size: 32}
pretrain: {steps: 5, batch_size: 16}
train: {steps: 5, batch_size: 16}
attacks:
  - {attack: badmatch, percent_poison: 0.05}
defenses:
  - {name: toy_norm, params: {share: 0.1}}
  - spectral_signatures
"""


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def toy_plugin(tmp_path):
    """The toy plugin package installed into this environment for the test's duration."""
    if _pip("--version").returncode != 0:
        pytest.skip("pip is not available in this environment")
    source = tmp_path / "toy-plugin"
    source.mkdir()
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "artmed_toy_plugin.py").write_text(MODULE)
    try:
        done = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(source))
        assert done.returncode == 0, f"installing the toy plugin failed:\n{done.stdout}\n{done.stderr}"
        yield
    finally:
        _pip("uninstall", "-y", "-q", DISTRIBUTION)


CLI = """\
import sys
from artmed.evaluations.cli import main
print("=== defenses")
code = main(["defenses"])
print("=== run")
sys.exit(code or main(["run", "--config", "study.yaml", "--output", "out", "--quiet"]))
"""


def test_installed_plugin_is_listed_and_run_by_the_harness(toy_plugin, tmp_path):
    (tmp_path / "study.yaml").write_text(STUDY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, "-c", CLI], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    listing, run = done.stdout.split("=== run")
    assert re.search(
        r"^toy_norm\s+detection\s+artmed_toy_plugin\.ToyNormDefense\s+Scores training images",
        listing,
        flags=re.MULTILINE,
    ), listing
    assert re.search(r"^spectral_signatures\s", listing, flags=re.MULTILINE)
    assert "toy_norm" in run

    out = tmp_path / "out"
    rows = {row["defense"]: row for row in read_table(out / "defenses.json")}
    assert set(rows) == {"toy_norm", "spectral_signatures"}
    toy = rows["toy_norm"]
    assert toy["status"] == "ok" and toy["kind"] == "detection" and toy["params.share"] == 0.1
    assert 0.0 <= toy["auroc"] <= 1.0 and toy["removed"] == pytest.approx(0.1)
    arrays = ResultStore(out / "cells").load("defense", "badmatch-patch-p0.05-s0+toy_norm")["arrays"]
    scores, flags = arrays["scores"], arrays["flags"]
    assert scores.shape == flags.shape == arrays["poison_mask"].shape == (120,)
    assert np.isfinite(scores).all() and (scores > 0).all()
    assert flags.sum() == 12 and scores[flags].min() >= scores[~flags].max()


def test_plugin_is_uninstalled_afterwards():
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.distribution(DISTRIBUTION)
    assert "toy_norm" not in registry.available()
