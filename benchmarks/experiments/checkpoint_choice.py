"""Which epoch to export: the one chosen on validation cases, or simply the last?

Scores every per-epoch checkpoint a ``train_heldout.py --keep-epochs`` run kept on the 21
tuning cases of its fixed split (ONNX Runtime, with the left-right flip, Dice per case and
label), then answers without touching the 42 test cases: over many random halvings of the
tuning cases, the epoch with the best mean Dice on one half is compared with the last epoch
on the other half (the half that did not choose it).

    python benchmarks/train_heldout.py --tag budget30m_epochs --keep-epochs 0.6 budget=30m
    PYTHONPATH=benchmarks python benchmarks/experiments/checkpoint_choice.py <run_dir> --tag budget30m_epochs

Prints a table and writes ``benchmarks/results/checkpoint_choice_<tag>.json`` (filed under
``benchmarks/results/checkpoint_choice/<machine>/``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from machine import machine_info, write_result  # benchmarks/ is on sys.path (script)
from rich.console import Console
from rich.table import Table
from train_heldout import MSD, NAMES, score, split

from hsftrain.export.api import export_checkpoint


def split_halves(dice: np.ndarray, halves: int, seed: int = 0) -> dict[str, float | list[float]]:
    """``dice``: (epochs, cases, labels). For ``halves`` random halvings of the cases, the
    epoch with the best mean Dice on one half, scored on the other, minus the last epoch
    on that other half: per label, the mean difference and how often the last is at least
    as good."""
    rng = np.random.default_rng(seed)
    n = dice.shape[1]
    diffs, chosen = [], []
    for _ in range(halves):
        order = rng.permutation(n)
        a, b = order[: n // 2], order[n // 2 :]
        best = int(dice[:, a].mean(axis=(1, 2)).argmax())
        chosen.append(best)
        diffs.append(dice[best, b].mean(0) - dice[-1, b].mean(0))
    d = np.asarray(diffs)
    return {
        "chosen_minus_last_mean": d.mean(0).round(5).tolist(),
        "chosen_minus_last_sd": d.std(0).round(5).tolist(),
        "last_at_least_as_good": (d <= 0).mean(0).round(3).tolist(),
        "chosen_is_last": float(np.mean(np.asarray(chosen) == dice.shape[0] - 1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--halves", type=int, default=2000)
    args = parser.parse_args()
    kept = sorted((args.run_dir / "checkpoints").glob("epoch-*.ckpt"))
    if len(kept) < 2:
        raise SystemExit(f"{args.run_dir}: fewer than 2 epoch-*.ckpt (train with --keep-epochs)")
    images = sorted((MSD / "imagesTr").glob("hippocampus_*.nii.gz"))
    tuning = [images[i] for i in split(len(images))[1]]
    out = Path(tempfile.mkdtemp(prefix="hsftrain-epochs-"))
    per_epoch = []
    for ckpt in kept:
        dice = score(export_checkpoint(ckpt, out / f"{ckpt.stem}.onnx"), tuning, flip=True)
        per_epoch.append(np.stack([dice[name] for name in NAMES.values()], axis=1))
    dice = np.stack(per_epoch)  # (epochs, cases, labels)
    epochs = [int(p.stem.split("-")[1]) for p in kept]
    result = {
        "what": "per-epoch checkpoints on the 21 tuning cases (+flip); epoch chosen on one "
        "half vs the last epoch, scored on the other half",
        "tag": args.tag,
        "run_dir": str(args.run_dir),
        "labels": list(NAMES.values()),
        "epochs": epochs,
        "tuning_dice_mean": dice.mean(1).round(4).tolist(),
        "halves": args.halves,
        **split_halves(dice, args.halves),
        "machine": machine_info(),
    }
    table = Table(title=f"checkpoint_choice {args.tag}: tuning Dice (+flip) per epoch")
    for col in ("epoch", *NAMES.values()):
        table.add_column(col, justify="right")
    for epoch, means in zip(epochs, result["tuning_dice_mean"], strict=True):
        table.add_row(str(epoch), *(f"{v:.4f}" for v in means))
    Console().print(table)
    print(
        f"chosen on half, scored on the other, minus the last epoch ({args.halves} halvings): "
        f"{result['chosen_minus_last_mean']} (sd {result['chosen_minus_last_sd']}); last at "
        f"least as good in {result['last_at_least_as_good']}"
    )
    write_result("checkpoint_choice", args.tag, result)


if __name__ == "__main__":
    main()
