#!/usr/bin/env bash
# Create .venv and install hsftrain with its test tools; a no-op when already up to date.
# torch is pinned (torch==2.13.0) in pyproject.toml and installed in the same pip command as
# everything else, so pip takes the local CPU wheel. Caches stay inside the project.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PIP_CACHE_DIR="$PWD/.cache/pip"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.hsftrain-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
  touch "$stamp"
fi
