#!/usr/bin/env bash
# CI: artmed installs and runs without its repository. Build the wheel, install it with the lock (constraints.txt:
# torch 2.13.0's CPU build and every other package pinned) in a clean virtual environment, then run the quick study
# from a folder outside the repository, so that nothing (code or package data) can come from the source tree.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
unset PYTHONPATH
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Build from the files git would commit (no ignored build/ or egg-info leftovers can slip into the wheel).
mkdir "$work/src"
git -C "$repo" ls-files -z --cached --others --exclude-standard | (cd "$repo" && tar --null --ignore-failed-read -T - -cf - 2>/dev/null) \
    | tar -xf - -C "$work/src"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" wheel --no-deps -q -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/artmed-*.whl)
echo "built $(basename "$wheel")"
# Package data read at run time must be in the wheel.
"$work/venv/bin/python" - "$wheel" <<'EOF'
import sys
import zipfile

names = set(zipfile.ZipFile(sys.argv[1]).namelist())
needed = ["artmed/evaluations/notebooks/defense_comparison.ipynb", "artmed/evaluations/cli.py",
          "artmed/defenses/registry.py", "artmed/attacks/pipeline.py"]
missing = [name for name in needed if name not in names]
if missing:
    sys.exit(f"the wheel lacks {missing}")
EOF

"$work/venv/bin/pip" install -q -c "$repo/constraints.txt" "$wheel"
"$work/venv/bin/pip" check
mkdir "$work/outside"
cd "$work/outside"
"$work/venv/bin/python" - "$repo" <<'EOF'
import sys
from pathlib import Path

import artmed.evaluations

where = Path(artmed.evaluations.__file__).resolve()
if where.is_relative_to(Path(sys.argv[1]).resolve()):
    sys.exit(f"artmed was imported from the repository ({where}), not from the installed wheel")
EOF
"$work/venv/bin/artmed" --version
"$work/venv/bin/artmed" defenses > /dev/null
start=$(date +%s)
"$work/venv/bin/artmed" run --preset quick --output "$work/outside/quick" --quiet
echo "wheel install + quick study outside the repository: ok ($(( $(date +%s) - start )) s)"
