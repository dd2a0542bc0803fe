"""Make the bundled model files from a training run: what `segmentation=msd` ships.

    python benchmarks/ship_model.py RUN_DIR [--name msd_hippocampus]

From the run's best checkpoint (``metrics.json``'s ``best_checkpoint``, else
``checkpoints/last.ckpt``) it writes into ``src/hsftrain/assets/models/``:

* ``<name>.onnx``: the ONNX model with float16-stored weights (``hsftrain export
  weights=float16``: half the file, computed in float32, checked against PyTorch);
* ``<name>.ckpt``: the checkpoint without optimiser state, weights in float16, to fine-tune
  from (``finetuning.pretrained=<registry name>``);

and prints both files' size and xxh3_64 for the registry (``hub/presets/models.yaml``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hsftrain.core.logs import setup_logging
from hsftrain.export.api import export_checkpoint
from hsftrain.hub.fetch import file_hash

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "hsftrain" / "assets" / "models"
#: checkpoint entries kept: what loading a network for fine-tuning needs
KEEP = ("state_dict", "hyper_parameters", "epoch", "global_step", "pytorch-lightning_version")


def best_checkpoint(run_dir: Path) -> Path:
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        best = json.loads(metrics.read_text()).get("best_checkpoint")
        if best and Path(best).is_file():
            return Path(best)
    return run_dir / "checkpoints" / "last.ckpt"


def slim_checkpoint(ckpt: Path, out: Path) -> Path:
    """``ckpt`` without optimiser, scheduler and callback state; float weights in float16."""
    full = torch.load(ckpt, map_location="cpu", weights_only=False)
    slim = {k: full[k] for k in KEEP if k in full}
    slim["state_dict"] = {
        k: v.half() if v.is_floating_point() else v for k, v in full["state_dict"].items()
    }
    torch.save(slim, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", default="msd_hippocampus")
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args()
    setup_logging()
    ckpt = best_checkpoint(args.run_dir)
    onnx_path = export_checkpoint(ckpt, args.out / f"{args.name}.onnx", weights="float16")
    ckpt_path = slim_checkpoint(ckpt, args.out / f"{args.name}.ckpt")
    print(f"from {ckpt}")
    for path in (onnx_path, ckpt_path):
        print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB, xxh3_64 {file_hash(path)}")


if __name__ == "__main__":
    main()
