"""Fine-tuning benchmark on CPU: a few labelled cases of a "new protocol" on real MSD data.

The question a user asks: I have a pretrained model and a handful of manually labelled
hippocampi from my own scanner; how good does ``hsftrain finetune`` get, and in how long,
compared with the pretrained model as it is and with training from scratch on my cases?

Data (all real MSD Task04 crops and their manual labels, ``../shared/data/msd_hippocampus``),
split once with a fixed seed:

- source: ``--source`` cases, as they are: the pretraining set (stand-in for a published
  model);
- target: the other cases with a simulated protocol change (``--shift invert``: contrast
  inverted and gamma-corrected; ``mild``: gamma only; both with a smooth multiplicative
  bias field and noise), written as a plain folder of
  ``<id>_img.nii.gz`` / ``<id>_lbl.nii.gz``: ``--target-train`` labelled cases for the user,
  the rest held out for testing.

Settings compared on the held-out target cases (``hsftrain segment`` + ``evaluate``):
pretrained model as it is, fine-tuned from it, trained from scratch with the same epochs.

    python benchmarks/finetune_cpu.py                    # invert, 60 epochs (~30 min)
    python benchmarks/finetune_cpu.py --shift mild --pretrained-run WORK/runs/pretrained
    python benchmarks/finetune_cpu.py --work WORK --epochs 120 --no-scratch  # reuse data
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from train_cpu import machine_info  # benchmarks/ is on sys.path when run as a script

from hsftrain.config.compose import compose
from hsftrain.core.logs import setup_logging
from hsftrain.data.nifti import load_volume, save_volume
from hsftrain.evaluation.api import evaluate
from hsftrain.inference.api import segment
from hsftrain.workflow import finetune, train

ROOT = Path(__file__).resolve().parents[1]
MSD = Path(os.environ.get("HSFTRAIN_MSD", ROOT.parent / "shared/data/msd_hippocampus"))
RESULTS = ROOT / "benchmarks/results/finetune_cpu.json"
NAMES = {1: "anterior", 2: "posterior"}
MODEL = ["models.hparams.f_maps=8", "models.hparams.num_levels=3"]
COMMON = ["lightning.enable_progress_bar=false", "logger=csv", "export_onnx=true"]


#: Simulated protocol changes: gamma exponent and whether the contrast is inverted.
SHIFTS = {"invert": (1.7, True), "mild": (0.6, False)}


def new_protocol(image: np.ndarray, rng: np.random.Generator, shift: str) -> np.ndarray:
    """A simulated change of scanner/protocol, anatomy and labels unchanged: gamma-corrected
    (``invert``: also inverted) contrast, a smooth multiplicative bias field, noise."""
    gamma, invert = SHIFTS[shift]
    x = image.astype(np.float32)
    x = np.clip(x / np.percentile(x, 99.5), 0, 1)
    y = (1.0 - x if invert else x) ** gamma
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in x.shape], indexing="ij")
    coef = rng.uniform(-0.25, 0.25, size=3)
    bias = np.exp(sum(c * g for c, g in zip(coef, grids, strict=True)))
    y = y * bias + rng.normal(0, 0.03, size=x.shape)
    return (np.clip(y, 0, None) * 1000).astype(np.float32)


def write_folders(
    work: Path, n_source: int, n_train: int, n_test: int, seed: int, shift: str
) -> dict:
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (MSD / "imagesTr").glob("*.nii.gz"))
    if len(ids) < n_source + n_train + n_test:
        raise SystemExit(f"{MSD}: {len(ids)} cases, fewer than requested")
    order = np.random.default_rng(seed).permutation(len(ids))
    chosen = [ids[i] for i in order]
    parts = {
        "source": chosen[:n_source],
        "target_train": chosen[n_source : n_source + n_train],
        "target_test": chosen[n_source + n_train : n_source + n_train + n_test],
    }
    rng = np.random.default_rng(seed + 1)
    for part, cases in parts.items():
        folder = work / part
        folder.mkdir(parents=True)
        for case in cases:
            image, affine = load_volume(MSD / "imagesTr" / f"{case}.nii.gz")
            label, _ = load_volume(MSD / "labelsTr" / f"{case}.nii.gz")
            if part != "source":
                image = new_protocol(image, rng, shift)
            save_volume(image.astype(np.float32), affine, folder / f"{case}_img.nii.gz")
            save_volume(label.astype(np.uint8), affine, folder / f"{case}_lbl.nii.gz")
    return parts


def _ids(folder: Path) -> list[str]:
    return [p.name.removesuffix("_img.nii.gz") for p in folder.glob("*_img.nii.gz")]


def folder_data(path: Path, out: Path) -> list[str]:
    return [
        "datasets=folder",
        f"datasets.path={path}",
        f"datasets.output_path={out}",
        "datasets.datasets.folder.labels_names={1: anterior, 2: posterior}",
    ]


def test_dice(model: Path, test: Path, out: Path) -> dict:
    """Segment the held-out target cases with ``model`` and evaluate them."""
    seg = out / "segmentation"
    segment(
        compose(
            "segment",
            [
                f"files.path={test}",
                "files.pattern=*_img.nii.gz",
                f"files.output_dir={seg}",
                "segmentation=custom",
                f"model_paths=[{model}]",
                "segmentation.tta=false",
                "hardware=cpu",
                "qc=false",
                "files.overwrite=true",
            ],
        )
    )
    summary = evaluate(
        compose(
            "evaluate",
            [
                f"pred={seg}",
                f"ref={test}/*_lbl.nii.gz",
                f"out={out / 'evaluation'}",
                "labels={1: anterior, 2: posterior}",
                "plots=false",
                "show=false",
            ],
        )
    )
    return {
        "dice": {name: round(summary.mean("dice", k), 4) for k, name in NAMES.items()},
        "hd95_mm": {name: round(summary.mean("hd95_mm", k), 2) for k, name in NAMES.items()},
        "subjects": len(summary.subjects),
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=int, default=120, help="pretraining cases")
    parser.add_argument("--target-train", type=int, default=10, help="user's labelled cases")
    parser.add_argument("--target-test", type=int, default=40, help="held-out target cases")
    parser.add_argument("--pretrain-epochs", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=60, help="fine-tuning / scratch epochs")
    parser.add_argument("--finetune-lr", type=float, default=5e-3)
    parser.add_argument("--unfreeze-frequency", type=int, default=0)
    parser.add_argument("--scratch-lr", type=float, default=5e-3)
    parser.add_argument("--no-scratch", action="store_true", help="skip the scratch baseline")
    parser.add_argument("--shift", choices=sorted(SHIFTS), default="invert")
    parser.add_argument("--pretrained-run", type=Path, help="reuse this pretraining run dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="reuse the data and pretrained run of a run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    setup_logging()
    if args.work and (args.work / "target_test").is_dir():
        work = args.work
        parts = {p: sorted(_ids(work / p)) for p in ("source", "target_train", "target_test")}
    else:
        work = Path(tempfile.mkdtemp(prefix="hsftrain-finetune-bench-"))
        parts = write_folders(
            work, args.source, args.target_train, args.target_test, args.seed, args.shift
        )
    test = work / "target_test"
    rows = []

    pre_dir = args.pretrained_run or work / "runs" / "pretrained"
    start = time.perf_counter()
    if (pre_dir / "metrics.json").is_file():
        pre = json.loads((pre_dir / "metrics.json").read_text())
        pre_s = None  # reused: timed by the run that trained it
    else:
        pre = train(
            compose(
                "config",
                [
                    *folder_data(work / "source", work / "runs"),
                    *MODEL,
                    *COMMON,
                    "run_name=pretrained",
                    "models.lr=5e-3",
                    f"lightning.max_epochs={args.pretrain_epochs}",
                ],
            )
        )
        pre_s = time.perf_counter() - start
    rows.append(
        {
            "setting": "pretrained as is",
            "train_cases": len(parts["source"]),
            "epochs": args.pretrain_epochs,
            "train_seconds": None if pre_s is None else round(pre_s, 1),
            **test_dice(pre_dir / "model.onnx", test, work / "eval_pretrained"),
        }
    )

    runs = {
        "fine-tuned": (
            finetune,
            [
                f"finetuning.pretrained={pre['best_checkpoint']}",
                "finetuning.mode=encoder",
                f"finetuning.unfreeze_frequency={args.unfreeze_frequency}",
                f"models.lr={args.finetune_lr}",
            ],
        ),
        "from scratch": (train, [*MODEL, f"models.lr={args.scratch_lr}"]),
    }
    if args.no_scratch:
        del runs["from scratch"]
    for name, (command, extra) in runs.items():
        lr = args.finetune_lr if command is finetune else args.scratch_lr
        tag = f"{name.replace(' ', '_')}-{args.epochs}ep-lr{lr:g}"
        start = time.perf_counter()
        result = command(
            compose(
                "config",
                [
                    *folder_data(work / "target_train", work / "runs"),
                    *COMMON,
                    f"run_name={tag}",
                    f"lightning.max_epochs={args.epochs}",
                    *extra,
                ],
            )
        )
        seconds = time.perf_counter() - start
        rows.append(
            {
                "setting": name,
                "lr": lr,
                "train_cases": args.target_train,
                "epochs": args.epochs,
                "train_seconds": round(seconds, 1),
                **test_dice(Path(result["run_dir"]) / "model.onnx", test, work / f"eval_{tag}"),
            }
        )

    report = {
        "what": "Dice on held-out target-protocol MSD cases: pretrained vs fine-tuned vs scratch",
        "how": "python benchmarks/finetune_cpu.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "data": {
            "source": MSD.name,
            "cases": {k: len(v) for k, v in parts.items()},
            "target_protocol": f"{args.shift}: gamma, inversion = {SHIFTS[args.shift]}; "
            "smooth bias field, noise (simulated)",
            "test_ids": parts["target_test"],
        },
        "rows": rows,
        "machine": machine_info(),
        "work_dir": str(work),
    }
    table = Table(title="Fine-tuning on a new protocol (held-out target cases)")
    table.add_column("setting")
    for col in ("train cases", "epochs", "train s", "Dice ant", "Dice post", "HD95 mm"):
        table.add_column(col, justify="right")
    for r in rows:
        hd = r["hd95_mm"]
        table.add_row(
            r["setting"],
            str(r["train_cases"]),
            str(r["epochs"]),
            "reused" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}",
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
