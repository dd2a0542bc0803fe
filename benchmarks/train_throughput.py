"""Training throughput: where a training step's time goes, in samples per second.

Measured on real data (the 208 MSD crops, ``../shared/data/msd_hippocampus``):

(a) ``data``: the data path alone: prepared cache -> random fixed-size patches -> batches
    (``datasets.num_workers`` workers), no augmentation;
(a0) ``data-legacy``: what every step did before the cache (hsftrain <= 0.1 at commit
    ccf639e): read the ``.nii.gz`` pair, reorient, remap, augment with torchio,
    z-normalise, pad; one subject at a time;
(b) ``augment``: the torch augmentation backend alone on batches on ``--device``;
(c) ``step`` / ``step+aug``: full training steps (forward, forgiving loss, backward, AdamP)
    without and with augmentation, on ``--device`` (bf16 autocast on CUDA unless
    ``--precision 32``; ``--compile`` for torch.compile).

    python benchmarks/train_throughput.py                       # demo model, CPU
    python benchmarks/train_throughput.py --device cuda --f-maps 64 --levels 4 \\
        --patch 64 96 64 --batch 8 --compile                   # hsf_train size, one GPU

Prints a table and writes ``benchmarks/results/train_throughput[_<tag>].json`` with the
machine, load average and CPU seconds beside each wall time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import (  # benchmarks/ is on sys.path when run as a script
    cpu_seconds,
    machine_info,
    write_result,
)
from rich.console import Console
from rich.table import Table

from hsftrain.config.compose import compose
from hsftrain.core.logs import setup_logging
from hsftrain.data.augment import BatchAugment
from hsftrain.data.cache import PrepareSettings, prepare
from hsftrain.data.dataset import PatchDataset
from hsftrain.data.discovery import discover, read_label
from hsftrain.data.nifti import load_volume
from hsftrain.data.transforms import augmentation, postprocess
from hsftrain.planning.timing import train_step
from hsftrain.training.module import SegmentationModule

ROOT = Path(__file__).resolve().parents[1]
MSD = Path(os.environ.get("HSFTRAIN_MSD", ROOT.parent / "shared/data/msd_hippocampus"))


def timed(run: Callable[[], int], warmup: Callable[[], object] | None = None) -> dict:
    """Samples/s of ``run`` (which returns the number of samples it processed)."""
    if warmup is not None:
        warmup()
    start, cpu = time.perf_counter(), cpu_seconds()
    samples = run()
    wall = time.perf_counter() - start
    return {
        "samples": samples,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu_seconds() - cpu, 3),
        "samples_per_s": round(samples / wall, 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--f-maps",
        type=int,
        nargs="+",
        default=[8],
        help="channels of the first level (doubled at each level), or of each level",
    )
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--patch", type=int, nargs=3, default=[40, 56, 40])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on CUDA) | 32 | bf16")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[], help="parts to skip")
    parser.add_argument("--tag", default="", help="suffix of the JSON file")
    args = parser.parse_args()
    f_maps = args.f_maps[0] if len(args.f_maps) == 1 else args.f_maps
    levels = args.levels if len(args.f_maps) == 1 else len(args.f_maps)
    setup_logging()
    device = torch.device(args.device)
    cfg = compose("config", ["datasets=msd", f"datasets.main_path={MSD}"])
    found = discover(cfg.datasets)
    cache = Path(tempfile.mkdtemp(prefix="hsftrain-throughput-"))
    prepared = prepare(found, cache, PrepareSettings(), progress=False)
    results: dict[str, dict] = {}
    patch, batch = tuple(args.patch), args.batch

    if "data-legacy" not in args.skip:
        specs = {s.index: s for s in found.datasets}
        transform = augmentation(cfg.augmentation)

        def legacy(augment: bool) -> int:
            import torchio as tio

            for subject in found.subjects:
                image, affine = load_volume(subject.image, np.float32, canonical=True)
                label = read_label(specs[subject.dataset], subject.label, canonical=True)
                item = tio.Subject(
                    image=tio.ScalarImage(tensor=torch.from_numpy(image)[None], affine=affine),
                    label=tio.LabelMap(tensor=torch.from_numpy(label)[None], affine=affine),
                )
                if augment:
                    item = transform(item)
                postprocess(item["image"].data.float(), item["label"].data[0].long(), None)
            return len(found.subjects)

        results["data-legacy (nifti, per subject)"] = timed(lambda: legacy(False))
        results["data-legacy + torchio augment"] = timed(lambda: legacy(True))

    dataset = PatchDataset(prepared, patch, foreground_ratio=0.33)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )

    def one_epoch() -> int:
        n = 0
        for item in loader:
            n += item["image"].shape[0]
        return n

    if "data" not in args.skip:
        results[f"data (cache->patches, {args.workers} workers)"] = timed(one_epoch, one_epoch)

    augment = BatchAugment(cfg.augmentation, seed=0)
    batches = [next(iter(loader)) for _ in range(8)]
    on_device = [
        {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in batches
    ]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if "augment" not in args.skip:

        def aug_run(rounds: int = 20) -> int:
            n = 0
            for _ in range(rounds):
                for b in on_device:
                    augment(b["image"], b["label"], b["spacing"])
                    n += b["image"].shape[0]
            sync()
            return n

        results[f"augment (torch backend, {device.type})"] = timed(aug_run, lambda: aug_run(1))

    module = SegmentationModule(
        "ResidualUNet3D",
        {"in_channels": 1, "out_channels": 3, "f_maps": f_maps, "num_levels": levels},
        ["background", "anterior", "posterior"],
        found.dataset_classes,
        {s.index: s.ca_type for s in found.datasets},
        dict(cfg.models) | {"lr": 5e-3},
        total_steps=1000,
        compile=args.compile,
    ).to(device)
    optimizer = module.configure_optimizers()["optimizer"]
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")

    def steps(with_aug: bool, count: int) -> int:
        n = 0
        module.train()
        for i in range(count):
            b = on_device[i % len(on_device)]
            train_step(module, optimizer, b, augment if with_aug else None, bf16)
            n += b["image"].shape[0]
        sync()
        return n

    for with_aug in (False, True):
        if ("step+aug" if with_aug else "step") in args.skip:
            continue
        name = f"train step{' + augment' if with_aug else ''} ({device.type})"
        results[name] = timed(
            lambda w=with_aug: steps(w, args.steps), lambda w=with_aug: steps(w, 3)
        )

    out = {
        "what": "training throughput on the 208 MSD crops (samples/s)",
        "settings": {
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "f_maps": f_maps,
            "num_levels": levels,
            "patch": list(patch),
            "batch": batch,
            "workers": args.workers,
            "precision": "bf16-mixed" if bf16 else "32",
            "compile": args.compile,
        },
        "results": results,
        "machine": machine_info(),
    }
    table = Table(title=f"training throughput, {device.type}, patch {patch}, batch {batch}")
    for col in ("part", "samples/s", "wall s", "CPU s", "load 1m"):
        table.add_column(col, justify="right" if col != "part" else "left")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['samples_per_s']:.1f}",
            f"{r['wall_s']:.2f}",
            f"{r['cpu_s']:.2f}",
            f"{r['loadavg_1m']:.2f}",
        )
    Console().print(table)
    write_result("train_throughput", args.tag, out)
    return out


if __name__ == "__main__":
    main()
