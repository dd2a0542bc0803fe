#!/usr/bin/env bash
# Install (first time), then what CI checks: lint, formatting, types, and the whole test
# suite on CPU. Arguments go to pytest (e.g. bash scripts/test.sh -x tests/data).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
bash scripts/browser.sh || echo "[browser] chromium could not be installed: the browser test will skip"
source scripts/env.sh
echo "[test 1/4] ruff check"
ruff check src tests benchmarks
echo "[test 2/4] ruff format --check"
ruff format --check src tests benchmarks
echo "[test 3/4] mypy (settings: pyproject.toml [tool.mypy])"
mypy
echo "[test 4/4] pytest"
exec python -m pytest -q --durations=20 "$@"
