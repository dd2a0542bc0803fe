#!/usr/bin/env bash
# Install (first time) and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
exec python -m pytest -q "$@"
