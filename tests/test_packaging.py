"""The top-level folders import under the ``artmed`` namespace in editable and regular (wheel) installs."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NAMESPACED = {"attacks": "artmed.attacks", "defenses": "artmed.defenses", "evaluations": "artmed.evaluations"}


def _source_packages() -> set[str]:
    """Every folder with an ``__init__.py`` under the mapped roots, as its dotted ``artmed`` name."""
    found = set()
    for root, prefix in [("artmed", "artmed"), *NAMESPACED.items()]:
        for init in (REPO / root).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / root).parts
            found.add(".".join((prefix, *parts)))
    return found


def test_pyproject_lists_every_package():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == _source_packages()
    for folder, name in NAMESPACED.items():
        assert config["package-dir"][name] == folder


def test_namespaced_folders_import_from_this_tree():
    import artmed.attacks
    import artmed.defenses
    import artmed.evaluations

    for module, folder in [
        (artmed.attacks, "attacks"),
        (artmed.defenses, "defenses"),
        (artmed.evaluations, "evaluations"),
    ]:
        assert Path(module.__file__).resolve() == REPO / folder / "__init__.py"


@pytest.mark.slow
def test_wheel_install_maps_folders(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(REPO),
        ],
        check=True,
    )
    wheels = list(wheel_dir.glob("artmed-*.whl"))
    assert len(wheels) == 1
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheels[0])], check=True
    )
    code = (
        "import artmed.attacks.poisoning, artmed.defenses, artmed.evaluations, artmed.models, artmed.data; "
        "print(artmed.attacks.poisoning.__file__, artmed.evaluations.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
    ).stdout.split()
    for path in out:
        assert Path(path).resolve().is_relative_to(target.resolve())
