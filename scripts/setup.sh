#!/usr/bin/env bash
# Create .venv and install hsftrain with its test tools; a no-op when already up to date.
# pyproject.toml asks for torch>=2.4; scripts/constraints-cpu.txt pins torch==2.13.0 in the
# same pip command as everything else, so pip takes the local CPU wheel, not a multi-GB CUDA
# build (HSFTRAIN_CONSTRAINTS= with no file installs without it, e.g. on a CUDA machine).
# Caches stay inside the project.
# Progress: stage messages, then pip's own lines (what it collects, downloads and builds).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PIP_CACHE_DIR="$PWD/.cache/pip"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.hsftrain-installed
constraints="${HSFTRAIN_CONSTRAINTS-scripts/constraints-cpu.txt}"
if [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ] && [ -x .venv/bin/python ] \
  && { [ -z "$constraints" ] || [ ! "$constraints" -nt "$stamp" ]; }; then
  exit 0
fi
start=$SECONDS
if [ ! -x .venv/bin/python ]; then
  echo "[setup 1/3] creating the virtual environment .venv ($("$PY" --version 2>&1))"
  "$PY" -m venv .venv
else
  echo "[setup 1/3] .venv exists; pyproject.toml or the constraints changed since the last install"
fi
echo "[setup 2/3] installing hsftrain and its dependencies into .venv (torch, onnxruntime, ...:"
echo "            several minutes on a fresh machine; pip reports each package below)"
.venv/bin/python -m pip install --disable-pip-version-check --progress-bar on \
  ${constraints:+-c "$constraints"} -e ".[dev]"
touch "$stamp"
echo "[setup 3/3] done in $((SECONDS - start)) s: source scripts/env.sh puts hsftrain on PATH"
