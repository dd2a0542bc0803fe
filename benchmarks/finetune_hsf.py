"""Fine-tuning from an HSF (hsf_train) checkpoint on real MSD cases: Dice before and after.

The path the fine-tuning guide recommends, "start from HSF 4.0.0", measured end to end:
an hsf_train checkpoint is read as ``HSFResidualUNet3D``, its 6-class head is swapped for
MSD's 3 classes (background, anterior, posterior), it is fine-tuned on ``--train`` labelled
MSD cases, exported to ONNX, and scored on ``--test`` held-out MSD cases through
``hsftrain segment`` (1 view) + ``hsftrain evaluate``.

"before" is the starting network with its new, randomly initialised 3-class head (what
fine-tuning starts from); "fine-tuned" is the result; ``--scratch`` adds the same network
trained from scratch with the same epochs.

The default start is ``../shared/data/hsf_train_reference/arunet_f8_random.ckpt``: HSF
4.0.0's architecture at f_maps 8 with *random* weights, so "improves" only shows that the
pipeline learns. With network access, ``--pretrained arunet_4.0.0_single_ckpt`` measures
the published model itself (f_maps 64: slow on CPU).

    python benchmarks/finetune_hsf.py                               # 10 train, 40 test, 40 epochs
    python benchmarks/finetune_hsf.py --train 4 --test 2 --epochs 1 --out /tmp/x.json  # check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from finetune_cpu import folder_data, test_dice  # benchmarks/ is on sys.path as a script
from rich.console import Console
from rich.table import Table
from train_cpu import machine_info

from hsftrain.config.compose import compose
from hsftrain.core.logs import setup_logging
from hsftrain.export.onnx import export_onnx
from hsftrain.hub import fetch
from hsftrain.models import build_model
from hsftrain.training.checkpoint import read_checkpoint
from hsftrain.workflow import finetune, train

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared/data"
MSD = Path(os.environ.get("HSFTRAIN_MSD", SHARED / "msd_hippocampus"))
REFERENCE = SHARED / "hsf_train_reference/arunet_f8_random.ckpt"
RESULTS = ROOT / "benchmarks/results/finetune_hsf.json"
CLASSES = ["background", "anterior", "posterior"]
COMMON = ["lightning.enable_progress_bar=false", "logger=csv", "export_onnx=true"]


def write_cases(work: Path, n_train: int, n_test: int, seed: int) -> dict[str, list[str]]:
    """Copy a seeded choice of MSD cases into ``train`` / ``test`` folders of
    ``<id>_img.nii.gz`` / ``<id>_lbl.nii.gz``."""
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (MSD / "imagesTr").glob("*.nii.gz"))
    if len(ids) < n_train + n_test:
        raise SystemExit(f"{MSD}: {len(ids)} cases, fewer than requested")
    order = np.random.default_rng(seed).permutation(len(ids))
    chosen = [ids[i] for i in order]
    parts = {"train": chosen[:n_train], "test": chosen[n_train : n_train + n_test]}
    for part, cases in parts.items():
        folder = work / part
        folder.mkdir(parents=True)
        for case in cases:
            shutil.copy(MSD / "imagesTr" / f"{case}.nii.gz", folder / f"{case}_img.nii.gz")
            shutil.copy(MSD / "labelsTr" / f"{case}.nii.gz", folder / f"{case}_lbl.nii.gz")
    return parts


def export_start(pretrained: Path, out: Path, seed: int) -> tuple[Path, dict]:
    """The fine-tuning start as ONNX: the checkpoint's network with a new 3-class head."""
    state, info = read_checkpoint(pretrained)
    net = build_model(info.name, info.hparams)
    net.load_state_dict(state)
    torch.manual_seed(seed)
    net.replace_head(len(CLASSES))
    meta = {"labels_names": CLASSES, "num_classes": len(CLASSES), "ca_mode": ""}
    return export_onnx(net.eval(), out, metadata={**meta, "model_name": info.name}), info.hparams


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", default=str(REFERENCE), help="checkpoint or hub name")
    parser.add_argument("--train", type=int, default=10, help="labelled MSD cases (8:2 split)")
    parser.add_argument("--test", type=int, default=40, help="held-out MSD cases")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--unfreeze-frequency", type=int, default=0)
    parser.add_argument("--scratch", action="store_true", help="also train from scratch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    setup_logging()
    pretrained = fetch(args.pretrained)
    work = Path(tempfile.mkdtemp(prefix="hsftrain-finetune-hsf-"))
    parts = write_cases(work, args.train, args.test, args.seed)
    test = work / "test"
    start_onnx, hparams = export_start(pretrained, work / "start.onnx", args.seed)
    rows = [
        {
            "setting": "before (pretrained, new 3-class head)",
            "epochs": 0,
            "train_seconds": 0.0,
            **test_dice(start_onnx, test, work / "eval_before"),
        }
    ]
    data = [*folder_data(work / "train", work / "runs"), *COMMON]
    data += [f"lightning.max_epochs={args.epochs}", f"models.lr={args.lr}", f"seed={args.seed}"]
    runs = {
        "fine-tuned": (
            finetune,
            [
                f"finetuning.pretrained={pretrained}",
                f"finetuning.unfreeze_frequency={args.unfreeze_frequency}",
                "models.use_forgiving_loss=false",
            ],
        )
    }
    if args.scratch:
        shape = [f"models.hparams.{k}={hparams[k]}" for k in ("f_maps", "num_levels")]
        runs["from scratch"] = (train, ["models=hsf_arunet", *shape])
    for name, (command, extra) in runs.items():
        tag = name.replace(" ", "_")
        start = time.perf_counter()
        result = command(compose("config", [*data, f"run_name={tag}", *extra]))
        seconds = time.perf_counter() - start
        rows.append(
            {
                "setting": name,
                "epochs": args.epochs,
                "train_seconds": round(seconds, 1),
                **test_dice(Path(result["run_dir"]) / "model.onnx", test, work / f"eval_{tag}"),
            }
        )

    report = {
        "what": "Dice on held-out MSD cases, fine-tuning from an hsf_train checkpoint",
        "how": "python benchmarks/finetune_hsf.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "pretrained": {"path": str(pretrained), "hparams": hparams},
        "data": {"source": MSD.name, "cases": {k: len(v) for k, v in parts.items()}},
        "test_ids": parts["test"],
        "rows": rows,
        "machine": machine_info(),
        "work_dir": str(work),
    }
    table = Table(title=f"Fine-tuning from {Path(pretrained).name} (held-out MSD cases)")
    table.add_column("setting")
    for col in ("epochs", "train s", "Dice ant", "Dice post", "HD95 mm"):
        table.add_column(col, justify="right")
    for r in rows:
        hd = r["hd95_mm"]
        table.add_row(
            r["setting"],
            str(r["epochs"]),
            f"{r['train_seconds']:.0f}",
            f"{r['dice']['anterior']:.3f}",
            f"{r['dice']['posterior']:.3f}",
            f"{hd['anterior']:.1f} / {hd['posterior']:.1f}",
        )
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
