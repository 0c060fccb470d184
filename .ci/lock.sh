#!/usr/bin/env bash
# Refresh constraints.txt, the lock of every package `pip install -c constraints.txt -e ".[dev]"` installs (all extras
# included), with pip-tools' pip-compile: it resolves with pip itself, under this machine's pip configuration, so the
# lock is what that pip install would choose (torch 2.13.0's CPU build from the wheel on disk, hence no nvidia-*
# packages). Pins already in constraints.txt are kept unless the arguments say otherwise; they are passed on to
# pip-compile, e.g. `.ci/lock.sh --upgrade` or `.ci/lock.sh --upgrade-package numpy`. Extra pins to start from
# (such as a `pip freeze` of a working venv) can be given with `-c FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/pip" install -q pip-tools==7.6.2
CUSTOM_COMPILE_COMMAND=".ci/lock.sh" "$tools/bin/pip-compile" --quiet --all-extras --allow-unsafe --strip-extras \
    --no-emit-index-url --no-emit-find-links --output-file constraints.txt "$@" pyproject.toml
if grep -qi '^nvidia-' constraints.txt; then
    echo "constraints.txt pins nvidia-* packages: torch resolved to a CUDA build, not the CPU wheel" >&2
    exit 1
fi
