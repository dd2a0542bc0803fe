#!/usr/bin/env bash
# The main job on the bundled sample data, CPU only, offline:
#   train a small ARUnet on 48 real MSD hippocampus crops (38 train / 10 validation),
#   export it to ONNX (verified against PyTorch), segment 8 held-out crops it never saw,
#   evaluate them against their manual labels, and report the volumes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
run="demo-$(date +%Y%m%d-%H%M%S)"
out="runs/$run"
heldout=src/hsftrain/assets/sample/msd_heldout
start=$SECONDS

hsftrain train datasets=sample run_name="$run" datasets.output_path=runs \
  models.hparams.f_maps=8 models.hparams.num_levels=3 models.lr=5e-3 \
  lightning.max_epochs="${DEMO_EPOCHS:-15}" lightning.enable_progress_bar=false "$@"

hsftrain segment files.path="$heldout" files.pattern='*_img.nii.gz' \
  files.output_dir="$out/segmentation" segmentation=custom "model_paths=[$out/model.onnx]" \
  segmentation.test_time_num_aug=2

hsftrain evaluate pred="$out/segmentation" ref="$heldout/*_lbl.nii.gz" out="$out/evaluation" \
  "labels={1: anterior, 2: posterior}"

echo
echo "demo finished in $((SECONDS - start)) s: run directory $out"
echo "  model:        $out/model.onnx (checkpoints in $out/checkpoints)"
echo "  segmentation: $out/segmentation (volumes.csv, QC PNGs, uncertainty maps)"
echo "  evaluation:   $out/evaluation/summary.csv"
