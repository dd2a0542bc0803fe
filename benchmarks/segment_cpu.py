"""Seconds per subject of ``hsftrain segment`` on CPU, on real MSD hippocampus crops.

Two settings, as HSF's presets:

* ``single_fast``-like: one model, no test-time augmentation (1 prediction per crop);
* ``bagging_accurate``-like: five models x (1 + ``--tta``) views (105 predictions per crop
  with the default ``--tta 20``).

The models are ResidualUNet3D networks of realistic size (``--f-maps``, ``--levels``, eight
HSF subfield classes) with random weights, exported to ONNX: timing does not depend on the
weights. After one untimed warm-up subject, each subject goes through the whole per-subject path of the command (read, z-norm,
pad, augment, predict, invert, fuse, write NIfTI/PNG/CSV outputs). Optionally the
whole-head localisation (template registration) is timed on the shared 256^3 T1.

    .venv/bin/python benchmarks/segment_cpu.py            # prints a table, writes JSON
    .venv/bin/python benchmarks/segment_cpu.py --subjects 2 --tta 4   # quicker

Writes ``benchmarks/results/segment_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MSD = SHARED / "msd_hippocampus" / "imagesTr"
WHOLEHEAD = SHARED / "wholehead_niivue" / "norm.mgz"
RESULTS = ROOT / "benchmarks" / "results" / "segment_cpu.json"


def export_models(folder: Path, n: int, f_maps: int, levels: int) -> list[Path]:
    """``n`` ResidualUNet3D models (8 classes, random weights) exported to ONNX."""
    import torch

    from hsftrain.data.labels import SUBFIELDS
    from hsftrain.export.onnx import export_onnx
    from hsftrain.models import build_model

    paths = []
    for seed in range(n):
        torch.manual_seed(seed)
        hparams = dict(in_channels=1, out_channels=len(SUBFIELDS), f_maps=f_maps, num_levels=levels)
        net = build_model("ResidualUNet3D", hparams).eval()
        meta = {"labels_names": list(SUBFIELDS), "num_classes": len(SUBFIELDS), "ca_mode": "1/2/3"}
        paths.append(
            export_onnx(
                net,
                folder / f"bench_{seed}.onnx",
                metadata=meta,
                example_shape=(1, 1, 32, 48, 32),
                verify_shapes=None,
            )
        )
    return paths


def time_setting(
    name: str, models: list[Path], num_aug: int, mris: list[Path], out: Path, threads: int
) -> dict[str, object]:
    """Seconds per subject of one setting (model loading timed apart)."""
    import nibabel as nib

    from hsftrain.config import compose
    from hsftrain.inference import api

    overrides = [
        f"files.path={mris[0].parent}",
        "files.pattern=*.nii.gz",
        f"files.output_dir={out / name}",
        "segmentation=custom",
        f"model_paths=[{','.join(str(m) for m in models)}]",
        f"segmentation.tta={'true' if num_aug else 'false'}",
        f"segmentation.test_time_num_aug={num_aug}",
        "hardware=cpu",
        f"hardware.engine_settings.intra_op_num_threads={threads}",
        "roiloc.mode=crop",
    ]
    settings = api.settings_from_config(compose("segment", overrides))
    start = time.perf_counter()
    engines = api.load_engines(settings)
    load_s = time.perf_counter() - start
    segmenter = api.Segmenter.from_settings(engines, settings)
    warm = api.outputs_for(mris[0], settings.root, out / f"{name}_warmup")
    api.segment_subject(mris[0], warm, "warmup", segmenter, settings)  # imports, allocator
    seconds, shapes = [], []
    for mri in mris:
        outputs = api.outputs_for(mri, settings.root, settings.output_dir)
        subject = api.subject_name(mri, settings.root)
        report = api.segment_subject(mri, outputs, subject, segmenter, settings)
        seconds.append(report.seconds)
        shapes.append(list(nib.load(str(mri)).shape))
    return {
        "setting": name,
        "models": len(models),
        "test_time_num_aug": num_aug,
        "predictions_per_subject": segmenter.predictions_per_crop,
        "model_load_s": round(load_s, 3),
        "seconds_per_subject_mean": round(statistics.mean(seconds), 3),
        "seconds_per_subject_median": round(statistics.median(seconds), 3),
        "seconds_per_subject_min": round(min(seconds), 3),
        "seconds_per_subject_max": round(max(seconds), 3),
        "seconds_per_prediction": round(
            statistics.mean(seconds) / segmenter.predictions_per_crop, 4
        ),
        "subjects": len(mris),
        "shapes": shapes,
    }


def time_registration(repeats: int = 2) -> dict[str, object] | None:
    """Whole-head localisation (registration of the MNI template) on the shared T1."""
    if not WHOLEHEAD.is_file():
        return None
    from hsftrain.config import compose
    from hsftrain.inference.image import load_volume
    from hsftrain.inference.roiloc import locate_hippocampi

    cfg = compose("segment", []).roiloc
    start = time.perf_counter()
    volume = load_volume(WHOLEHEAD)
    load_s = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        boxes = locate_hippocampi(volume, cfg)
        runs.append(time.perf_counter() - start)
    return {
        "image": WHOLEHEAD.name,
        "shape": list(volume.array.shape),
        "load_s": round(load_s, 3),
        "registration_and_boxes_s": round(min(runs), 3),
        "box_shapes": [list(b.shape) for b in boxes],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4, help="MSD crops to segment")
    parser.add_argument("--tta", type=int, default=20, help="augmentations (bagging_accurate)")
    parser.add_argument("--bag", type=int, default=5, help="models (bagging_accurate)")
    parser.add_argument("--f-maps", type=int, default=16)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="intra_op_num_threads (0: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="hsftrain-mpl-"))
    if not MSD.is_dir():
        print(f"MSD crops not found in {MSD}", file=sys.stderr)
        return 1
    import onnxruntime as ort
    from rich.console import Console
    from rich.table import Table

    load_before = [round(x, 2) for x in os.getloadavg()]  # other work on the machine skews timings
    mris = sorted(MSD.glob("hippocampus_*.nii.gz"))[: args.subjects]
    with tempfile.TemporaryDirectory(prefix="hsftrain-bench-") as tmp:
        work = Path(tmp)
        models = export_models(work / "models", args.bag, args.f_maps, args.levels)
        data = work / "data"
        data.mkdir()
        for mri in mris:  # a private copy: outputs never land in the shared folder
            (data / mri.name).write_bytes(mri.read_bytes())
        local = sorted(data.glob("*.nii.gz"))
        results = [
            time_setting("single_fast", models[:1], 0, local, work / "out", args.threads),
            time_setting("bagging_accurate", models, args.tta, local, work / "out", args.threads),
        ]
        model_mb = round(models[0].stat().st_size / 2**20, 2)
    registration = time_registration()

    report = {
        "benchmark": "segment_cpu",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "intra_op_num_threads": args.threads,
            "load_average_1_5_15_min_before": load_before,
            "load_average_1_5_15_min_after": [round(x, 2) for x in os.getloadavg()],
        },
        "model": {
            "name": "ResidualUNet3D",
            "f_maps": args.f_maps,
            "num_levels": args.levels,
            "classes": 8,
            "onnx_mb": model_mb,
            "weights": "random (timing only)",
        },
        "data": f"{len(mris)} MSD Task04 crops: {', '.join(m.name for m in mris)}",
        "results": results,
        "wholehead_localisation": registration,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    table = Table(
        title=f"hsftrain segment on CPU ({os.cpu_count()} cores, onnxruntime {ort.__version__})"
    )
    for column in (
        "setting",
        "models x views",
        "s / subject (mean)",
        "min-max",
        "s / prediction",
        "load s",
    ):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for r in results:
        table.add_row(
            str(r["setting"]),
            f"{r['models']} x {1 + int(r['test_time_num_aug'])}",
            f"{r['seconds_per_subject_mean']:.2f}",
            f"{r['seconds_per_subject_min']:.2f}-{r['seconds_per_subject_max']:.2f}",
            f"{r['seconds_per_prediction']:.3f}",
            f"{r['model_load_s']:.2f}",
        )
    console = Console()
    console.print(table)
    if registration:
        console.print(
            f"whole-head localisation ({registration['image']}, {registration['shape']}): "
            f"{registration['registration_and_boxes_s']:.2f} s (+ {registration['load_s']:.2f} s to read)"
        )
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
