"""MkDocs hook: lay the installed ``artmed`` package out on disk for mkdocstrings before the build.

griffe, which reads the docstrings, finds subpackages by walking the package's folder and does not follow
setuptools' ``package-dir`` mapping (``artmed.attacks`` lives in ``attacks/``), so this hook builds
``build/griffe-src/artmed/`` from symlinks: every entry of ``artmed/`` plus each mapped subpackage.
"""

import shutil
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # the docs extra installs tomli on Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = ROOT / "build" / "griffe-src"


def on_startup(**kwargs: Any) -> None:
    """Rebuild the symlinked ``artmed`` tree that mkdocs.yml's ``paths`` points griffe at."""
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top = OVERLAY / "artmed"
    shutil.rmtree(OVERLAY, ignore_errors=True)
    top.mkdir(parents=True)
    for entry in (ROOT / package_dirs["artmed"]).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for package, folder in package_dirs.items():
        parts = package.split(".")
        if len(parts) != 2 or parts[0] != "artmed":
            continue
        link = top / parts[1]
        if link.exists() or link.is_symlink():
            raise RuntimeError(f"pyproject.toml package-dir {package!r} collides with artmed/{parts[1]}")
        link.symlink_to(ROOT / folder)
