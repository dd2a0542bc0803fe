"""Does where a crop sits on the network's 8-voxel grid change its segmentation?

A 4-level U-Net downsamples by 8, so padding a crop to a multiple of 8 with its extra voxels
before or after it places the anatomy at a different phase of that grid. This scores one
exported MSD model (e.g. a ``train_heldout.py`` run's ``model.onnx``) on the same 21 tuning
and 42 test cases, with the padding placed: evenly (as ``hsftrain segment``), at the end
(the setting named "end (train_heldout)": a hand-written scorer's placement, kept for
comparison; ``train_heldout.py`` scores through hsftrain segment + evaluate), and averaged over several phases (a "shift" test-time
augmentation: the mean softmax of the crop placed at phases {0, 4} per axis (8 views) or
(k, k, k) for k in 0, 2, 4, 6 (4 views)), each with and without the left-right flip.
Largest-component clean-up is applied as ``segment`` does. Padding placements other than
segment's own are not something ``hsftrain segment`` offers, so this experiment pads and runs
the model itself; the crops are z-normalised and scored with the product's own functions
(``hsftrain.data.intensity.z_normalize``, ``hsftrain.evaluation.metrics.dice``).

    PYTHONPATH=benchmarks python benchmarks/experiments/tta_grid.py --tag plain /tmp/runs/budget30m/model.onnx

Prints a table and writes ``benchmarks/results/tta_grid_<tag>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from machine import machine_info  # benchmarks/ is on sys.path when run as a script
from rich.console import Console
from rich.table import Table
from train_heldout import MSD, NAMES, ROOT, canonical, split

from hsftrain.data.intensity import z_normalize
from hsftrain.evaluation.metrics import dice as dice_of
from hsftrain.inference.fusion import keep_largest_component

CUBE = list(itertools.product((0, 4), repeat=3))
DIAG = [(k, k, k) for k in (0, 2, 4, 6)]
EVEN, END = "even", (0, 0, 0)
SETTINGS = {  # name: the (flipped, phase) views averaged
    "even (segment)": [(0, EVEN)],
    "end (train_heldout)": [(0, END)],
    "8 phases {0,4}^3": [(0, c) for c in CUBE],
    "4 phases (k,k,k)": [(0, c) for c in DIAG],
}
SETTINGS.update(
    {f"{k} + flip": [(f, c) for f in (0, 1) for _, c in v] for k, v in SETTINGS.items()}
)


def probabilities(session: ort.InferenceSession, image: np.ndarray) -> dict:
    """Softmax of every (flipped, phase) view used by :data:`SETTINGS`, on the crop's grid."""
    name = session.get_inputs()[0].name
    out = {}
    for flip in (0, 1):
        view = np.ascontiguousarray(image[::-1] if flip else image)
        for phase in {p for views in SETTINGS.values() for f, p in views if f == flip}:
            before = [(-s % 8) // 2 for s in view.shape] if phase == EVEN else list(phase)
            pads = [(b, -(s + b) % 8) for b, s in zip(before, view.shape, strict=True)]
            padded = np.pad(view, pads, constant_values=float(view.min()))
            crop = tuple(slice(b, b + s) for b, s in zip(before, view.shape, strict=True))
            logits = session.run(None, {name: padded[None, None]})[0][0][(slice(None), *crop)]
            e = np.exp(logits - logits.max(0, keepdims=True))
            p = e / e.sum(0, keepdims=True)
            out[(flip, phase)] = p[:, ::-1] if flip else p
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--tag", required=True)
    args = parser.parse_args()
    session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    images = sorted((MSD / "imagesTr").glob("hippocampus_*.nii.gz"))
    _, va, te = split(len(images))
    start = time.perf_counter()
    dice: dict[str, dict[str, dict[str, list[float]]]] = {}
    for part, cases in (("tuning", va), ("test", te)):
        for i in cases:
            image = z_normalize(canonical(images[i]))
            label = canonical(MSD / "labelsTr" / images[i].name)
            probs = probabilities(session, image)
            for setting, views in SETTINGS.items():
                pred = keep_largest_component(np.mean([probs[v] for v in views], 0).argmax(0))
                for value, label_name in NAMES.items():
                    dice.setdefault(part, {}).setdefault(setting, {}).setdefault(
                        label_name, []
                    ).append(dice_of(pred == value, label == value))
    means = {
        part: {s: {k: round(float(np.mean(v)), 4) for k, v in d.items()} for s, d in rows.items()}
        for part, rows in dice.items()
    }
    table = Table(title=f"tta_grid {args.tag}: Dice, {args.model}")
    table.add_column("padding placement")
    for part in means:
        for label_name in NAMES.values():
            table.add_column(f"{part} {label_name}", justify="right")
    for setting in SETTINGS:
        table.add_row(
            setting, *(f"{means[p][setting][n]:.4f}" for p in means for n in NAMES.values())
        )
    Console().print(table)
    result = {
        "what": "Dice of one model with the padding placed at different phases of its 8-voxel "
        "grid (21 tuning / 42 test MSD cases of train_heldout.py's split)",
        "tag": args.tag,
        "model": str(args.model),
        "wall_s": round(time.perf_counter() - start, 1),
        "dice_mean": means,
        "machine": machine_info(),
    }
    path = ROOT / "benchmarks" / "results" / f"tta_grid_{args.tag}.json"
    path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
