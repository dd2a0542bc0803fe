#!/usr/bin/env bash
# Before a check on a lent GPU machine (`budget=5m` on a GPU, inference): put what the
# GPU machine lacks into two folders that git ignores and the `run` tool carries:
#   .whl/  Python 3.12 wheels of the packages its image does not hold (hydra-core, omegaconf,
#          antlr4 runtime, nibabel; ~4 MB). Not torchio or SimpleITK (53 MB, over the carry
#          limit with the data): training with the default torch augmentation, `segment` on
#          crops and `evaluate` import neither.
#   .msd/  the 208 MSD hippocampus crops (imagesTr, labelsTr; CC-BY-SA; 16 MB).
# Then, with the device tool: run(command="bash benchmarks/gpu_session.sh",
#   carry=[".whl", ".msd"], timeout_s=600).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
msd=${HSFTRAIN_MSD:-../shared/data/msd_hippocampus}
for d in .whl .msd; do
  grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >>.git/info/exclude
done
rm -rf .whl .msd
mkdir -p .whl .msd
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl hydra-core==1.3.8 omegaconf==2.3.1 nibabel==5.4.2
# antlr4 4.9.3 (what omegaconf 2.3 needs) is published as a source archive only: build it
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
cp -r "$msd/imagesTr" "$msd/labelsTr" .msd/
cp "$msd"/README* .msd/ 2>/dev/null || true
du -sh .whl .msd
