# Sourced by the scripts: project-local caches, never the home directory.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PIP_CACHE_DIR="$root/.cache/pip"
export HSFTRAIN_CACHE="${HSFTRAIN_CACHE:-$root/.cache/hsftrain}"
export MPLCONFIGDIR="$root/.cache/matplotlib"
export WANDB_DIR="$root/.cache/wandb" WANDB_CACHE_DIR="$root/.cache/wandb" WANDB_CONFIG_DIR="$root/.cache/wandb"
export XDG_CACHE_HOME="$root/.cache"
export PATH="$root/.venv/bin:$PATH"
