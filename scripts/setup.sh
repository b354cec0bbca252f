#!/usr/bin/env bash
# Set up the workspace on a fresh machine: a virtual environment at .venv
# with this project and its dev tools installed, and the Pulumi CLI in
# .tools/bin.  Safe to run again; it only does what is missing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.statekeeper-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[dev]'
    touch "$stamp"
fi
bash scripts/install-pulumi.sh
[ -f .env ] || echo "setup: no .env yet; copy .env.example to .env for real AWS" >&2
echo "setup: ready (.venv/bin/inv --list shows the tasks)" >&2
