"""Training benchmark on CPU: wall time and validation Dice of the demo configuration.

Runs ``hsftrain train`` through the Python API with the demo's settings (or your
overrides), then prints a table and writes ``benchmarks/results/train_cpu.json``.

    python benchmarks/train_cpu.py                        # the demo: datasets=sample
    python benchmarks/train_cpu.py datasets=msd lightning.max_epochs=30 models.hparams.f_maps=16
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info  # benchmarks/ is on sys.path when run as a script
from rich.console import Console
from rich.table import Table

from hsftrain.config.compose import compose
from hsftrain.core.logs import setup_logging
from hsftrain.workflow import train

DEMO = [
    "datasets=sample",
    "models.hparams.f_maps=8",
    "models.hparams.num_levels=3",
    "models.lr=5e-3",
    "lightning.max_epochs=12",
    "lightning.enable_progress_bar=false",
]


def main(overrides: list[str]) -> dict:
    setup_logging()
    out_dir = tempfile.mkdtemp(prefix="hsftrain-bench-")
    args = [*DEMO, *overrides, f"datasets.output_path={out_dir}", "run_name=bench", "logger=csv"]
    start = time.perf_counter()
    metrics = train(compose("config", args))
    seconds = time.perf_counter() - start
    result = {
        "what": "hsftrain train (demo configuration unless overridden), wall time incl. export",
        "overrides": args,
        "seconds": round(seconds, 1),
        "val_dice_mean": metrics.get("val/dice_mean"),
        "val_dice": {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("val/dice/")},
        "val_hd95_mm": {
            k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("val/hd95_mm/")
        },
        "machine": machine_info(),
    }
    table = Table(title="hsftrain train on CPU")
    for col in ("seconds", "val Dice mean", *result["val_dice"]):
        table.add_column(col, justify="right")
    table.add_row(
        f"{seconds:.0f}",
        f"{result['val_dice_mean']:.3f}",
        *(f"{v:.3f}" for v in result["val_dice"].values()),
    )
    Console().print(table)
    path = Path(__file__).parent / "results" / "train_cpu.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
