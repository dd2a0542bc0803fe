"""Throughput (subjects per second) of ``hsftrain segment`` with 1, 2 and K worker processes.

A cohort of real MSD T1 hippocampus crops (``--subjects``, copied into a temporary
folder) is segmented end to end by ``hsftrain segment`` (the command's own ``segment``
function: model loading, worker start-up, every per-subject step and the volumes table)
with ``hardware.jobs`` = 1, 2, ... (``--jobs``), each on a fresh output folder, with a
realistic-size model (ResidualUNet3D, ``--f-maps``, ``--levels``, eight classes, random
weights: timing does not depend on the weights) and ``--tta`` augmented views. With
``hardware.engine_settings.intra_op_num_threads=0`` every run may use all cores: one
process uses them inside ONNX Runtime, K processes get cores / K threads each. The
outputs of every setting are checked to be byte-identical to those of one process.

``--whole-heads`` segments the 12 ASHS whole-head MPRAGEs instead (template registration
per subject, two crops each).

    .venv/bin/python benchmarks/segment_workers.py                  # 24 crops, jobs 1 2 4
    .venv/bin/python benchmarks/segment_workers.py --subjects 4 --jobs 1 2 --tta 0  # a check

Writes ``benchmarks/results/segment_workers.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED = ROOT.parent / "shared" / "data"
MSD = SHARED / "msd_hippocampus" / "imagesTr"
ASHS = SHARED / "ashs_atlas_test" / "images"
RESULTS = ROOT / "benchmarks" / "results" / "segment_workers.json"


def cohort(folder: Path, n: int, whole_heads: bool) -> list[Path]:
    """``n`` inputs copied into ``folder`` (MSD crops, or the ASHS MPRAGEs)."""
    source = sorted(ASHS.glob("*_mprage.nii.gz")) if whole_heads else sorted(MSD.glob("*.nii.gz"))
    folder.mkdir(parents=True)
    return [Path(shutil.copy(p, folder / p.name)) for p in source[:n]]


def digest(folder: Path) -> str:
    """One hash of every segmentation, uncertainty and volumes table written."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix != ".png":
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def time_jobs(inputs: Path, out: Path, model: Path, jobs: int, tta: int) -> dict[str, object]:
    from hsftrain.config.compose import compose
    from hsftrain.inference.api import segment

    cfg = compose(
        "segment",
        [
            f"files.path={inputs}",
            "files.pattern=*.nii.gz",
            f"files.output_dir={out}",
            f"model_paths=[{model}]",
            f"segmentation.tta={'true' if tta else 'false'}",
            f"segmentation.test_time_num_aug={tta}",
            "hardware=cpu",
            f"hardware.jobs={jobs}",
        ],
    )
    start = time.perf_counter()
    done = segment(cfg)
    wall = time.perf_counter() - start
    return {
        "jobs": jobs,
        "subjects": len(done),
        "wall_s": round(wall, 2),
        "subjects_per_s": round(len(done) / wall, 3),
        "outputs_sha256": digest(out),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--tta", type=int, default=2, help="augmented views per subject")
    parser.add_argument("--f-maps", type=int, default=16)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--whole-heads", action="store_true", help="the ASHS MPRAGEs")
    args = parser.parse_args(argv)
    from segment_cpu import export_models

    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="segment_workers_") as tmp:
        work = Path(tmp)
        (model,) = export_models(work / "models", 1, args.f_maps, args.levels)
        inputs = cohort(work / "inputs", args.subjects, args.whole_heads)
        for jobs in args.jobs:
            rows.append(
                time_jobs(inputs[0].parent, work / f"out_jobs{jobs}", model, jobs, args.tta)
            )
    reference = rows[0]["outputs_sha256"]
    for row in rows:
        row["identical_to_first"] = row["outputs_sha256"] == reference
        row["speed_up"] = round(float(rows[0]["wall_s"]) / float(row["wall_s"]), 2)  # type: ignore[arg-type]
    report = {
        "what": "hsftrain segment end to end, subjects per second by hardware.jobs",
        "inputs": "ASHS whole-head MPRAGEs" if args.whole_heads else "MSD T1 crops",
        "machine": {
            "cpu_count": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "load_average_before": [round(x, 2) for x in load],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": vars(args),
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1))
    print(f"{'jobs':>4s} {'subjects':>8s} {'wall s':>8s} {'subj/s':>8s} {'speed-up':>8s} identical")
    for r in rows:
        print(
            f"{r['jobs']:4d} {r['subjects']:8d} {r['wall_s']:8.1f} {r['subjects_per_s']:8.3f} "
            f"{r['speed_up']:8.2f} {r['identical_to_first']}"
        )
    print(f"load average before {load}, after {os.getloadavg()}; wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
