#!/usr/bin/env bash
# mypy on the package as installed: setuptools' package-dir maps artmed.attacks, artmed.defenses and
# artmed.evaluations onto attacks/, defenses/ and evaluations/ (pyproject.toml), which mypy does not follow, so this
# lays artmed/ out in a temporary folder from symlinks (as docs/griffe_src.py does for the docs) and checks
# `mypy -p artmed` there with the repository's [tool.mypy] settings. Extra arguments go to mypy.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tree="$(mktemp -d)"
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/artmed"
for entry in "$root"/artmed/*; do
    [ "$(basename "$entry")" = __pycache__ ] || ln -s "$entry" "$tree/artmed/$(basename "$entry")"
done
for sub in attacks defenses evaluations; do
    ln -s "$root/$sub" "$tree/artmed/$sub"
done
cd "$tree"
mypy --config-file "$root/pyproject.toml" --cache-dir "$root/build/mypy-cache" "$@" -p artmed
