#!/usr/bin/env bash
# On the GPU machine (the device tool's `run`, after benchmarks/gpu_prepare.sh here), one
# prepared check within one 10-minute command:
#   1. training throughput of the hsf_train-size network (f_maps 64, 4 levels, bf16,
#      torch.compile) on real MSD batches;
#   2. inference on the GPU: benchmarks/engines.py --gpu (ONNX Runtime with hardware=gpu's
#      providers, TensorRT/CUDA, against the CPU) on the padded MSD crop shapes
#      (SKIP_INFERENCE=1 skips it);
#   3. `budget=5m` on the fixed MSD split (145 train / 21 tuning / 42 never seen), scored on
#      the 42 unseen crops (target: >= 0.90 on each label).
# Result JSONs (with the GPU's name) land in benchmarks/results and in $OUT.
# Knobs: BUDGET (5m), STEPS (30), PYTHON (python3), SKIP_THROUGHPUT=1.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=${PYTHON:-python3}
out=${OUT:-benchmarks/results/gpu_session}
mkdir -p "$out"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/hsftrain-site .whl/*.whl || exit 1
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/hsftrain-site"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HSFTRAIN_MSD=${HSFTRAIN_MSD:-$PWD/.msd}
export MPLCONFIGDIR=/tmp/hsftrain-mpl TORCHINDUCTOR_CACHE_DIR=/tmp/hsftrain-inductor \
  HSFTRAIN_CACHE=/tmp/hsftrain-cache XDG_CACHE_HOME=/tmp/hsftrain-xdg
{ nvidia-smi -L; "$py" -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } \
  2>&1 | tee "$out/machine.txt"
status=0
if [ "${SKIP_THROUGHPUT:-0}" != 1 ]; then
  device=$("$py" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
  timeout 180 "$py" benchmarks/train_throughput.py --device "$device" --f-maps 64 --levels 4 \
    --patch 64 96 64 --batch 8 --precision bf16 --compile --steps "${STEPS:-30}" \
    --skip data-legacy data augment --tag "gpu_f64L4_$device" 2>&1 | tee "$out/throughput.log"
  status=$((status | $?))
fi
if [ "${SKIP_INFERENCE:-0}" != 1 ]; then
  timeout 240 "$py" benchmarks/engines.py --gpu --shapes 1 --tag gpu 2>&1 | tee "$out/engines.log"
  status=$((status | $?))
  cp benchmarks/results/engines_gpu.json "$out/" 2>/dev/null
fi
tag="gpu_budget${BUDGET:-5m}"
"$py" benchmarks/train_heldout.py --tag "$tag" --out /tmp/hsftrain-gpu-run \
  "budget=${BUDGET:-5m}" 2>&1 | tee "$out/budget.log"
status=$((status | $?))
cp benchmarks/results/train_throughput_gpu_*.json "benchmarks/results/train_heldout_$tag.json" \
  "$out/" 2>/dev/null
exit "$status"
