"""Seconds per subject of ``hsftrain segment`` end to end on CPU, on real MSD hippocampus crops.

Each measurement runs the real command in a fresh process, as a user runs it (process
start, imports, model loading, then every subject: read, checks, z-norm, pad, augment,
predict, invert, fuse, write NIfTI/PNG/CSV outputs, the QC report), on a folder of MSD
crops, and records its wall time and CPU seconds (``getrusage`` of the child). Settings:

* ``single``: one HSF-size model (random weights, eight subfield classes), no TTA;
* ``bagging_fast``: five such models, no TTA, vote;
* ``bagging_accurate``: five models x (1 + ``--tta``) views;
* ``msd``: the bundled MSD model and its preset (``tta=flip``); ``msd_fast`` when that
  preset exists.

Each setting runs once per ``--engines`` entry (``hardware.engine=...``); an engine the
checkout does not know is skipped with its error line as the note. The cohort figure is
subjects per hour on ``--cohort`` MSD crops with ``segmentation=msd`` and
``hardware.jobs=1`` and ``2``. ``--old-commit REV`` also measures REV's code (a ``git
worktree``, its own ``PYTHONPATH``, the same .venv) on the same crops in the same run,
alternating with the current code, for every setting (rows with ``"code": REV``) and for the
cohort: the "old vs new crops per second" figure; the last repeat's outputs of both are
compared (``agreement_with_old``: the lowest voxel agreement of a label map, the largest
relative difference of a volume).

    .venv/bin/python benchmarks/segment_cpu.py                       # the full measurement
    .venv/bin/python benchmarks/segment_cpu.py --old-commit 792139c  # + old vs new
    .venv/bin/python benchmarks/segment_cpu.py --quick               # seconds: a smoke run

Writes ``benchmarks/results/segment_cpu/<machine>/segment_cpu.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, machine_slug  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MSD = ROOT.parent / "shared" / "data" / "msd_hippocampus" / "imagesTr"
RESULTS = ROOT / "benchmarks" / "results" / "segment_cpu" / machine_slug() / "segment_cpu.json"
SETTINGS = ("single", "bagging_fast", "bagging_accurate", "msd", "msd_fast")


def export_random_model(
    path: Path, name: str, f_maps: int, levels: int, seed: int = 0, metadata: dict | None = None
) -> Path:
    """One network of ``hsftrain.models`` with random weights (seeded), 8 classes, exported to
    ONNX at ``path``: timing does not depend on the weights."""
    import torch

    from hsftrain.data.labels import SUBFIELDS
    from hsftrain.export.onnx import OnnxOptions, export_onnx
    from hsftrain.models import build_model

    torch.manual_seed(seed)
    hparams = dict(in_channels=1, out_channels=len(SUBFIELDS), f_maps=f_maps, num_levels=levels)
    net = build_model(name, hparams).eval()
    return export_onnx(
        net,
        path,
        metadata=metadata or {"num_classes": len(SUBFIELDS)},
        options=OnnxOptions(example_shape=(1, 1, 32, 48, 32), verify_shapes=None),
    )


def export_models(folder: Path, n: int, f_maps: int, levels: int) -> list[Path]:
    """``n`` ResidualUNet3D models (8 HSF subfield classes, random weights) exported to ONNX."""
    from hsftrain.data.labels import SUBFIELDS

    meta = {"labels_names": list(SUBFIELDS), "num_classes": len(SUBFIELDS), "ca_mode": "1/2/3"}
    return [
        export_random_model(
            folder / f"bench_{seed}.onnx", "ResidualUNet3D", f_maps, levels, seed, meta
        )
        for seed in range(n)
    ]


def setting_overrides(name: str, models: list[Path], tta: int) -> list[str]:
    """The ``segment`` overrides of one setting."""
    if name.startswith("msd"):
        return [f"segmentation={name}"]
    bag = models[:1] if name == "single" else models
    views = ["segmentation.tta=false"]
    if name == "bagging_accurate":
        views = ["segmentation.tta=true", f"segmentation.test_time_num_aug={tta}"]
    paths = ",".join(str(m) for m in bag)
    return ["segmentation=custom", f"model_paths=[{paths}]", "segmentation.fusion=vote", *views]


def run_segment(src: Path, data: Path, out: Path, overrides: Sequence[str]) -> dict[str, object]:
    """One ``hsftrain segment`` process with ``src`` on PYTHONPATH: wall and CPU seconds, or
    the error line it stopped on."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "400"}  # one line per message
    env.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="hsftrain-mpl-"))
    command = [sys.executable, "-m", "hsftrain.cli", "segment", f"files.path={data}"]
    command += ["files.pattern=*.nii.gz", f"files.output_dir={out}", "hardware=cpu", *overrides]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        error = next((line.split("ERROR", 1)[-1].strip() for line in lines if "ERROR" in line), "")
        return {"error": error or (lines[-1] if lines else f"exit {done.returncode}")}
    return {"wall_s": wall, "cpu_s": cpu}


def summarise(runs: list[dict[str, object]], subjects: int) -> dict[str, object]:
    """Median and sd over repeats of wall seconds, seconds per subject, crops per second."""
    walls = [float(r["wall_s"]) for r in runs]  # type: ignore[arg-type]
    cpus = [float(r["cpu_s"]) for r in runs]  # type: ignore[arg-type]
    median = statistics.median(walls)
    return {
        "subjects": subjects,
        "repeats": len(walls),
        "wall_s": [round(w, 3) for w in walls],
        "wall_s_median": round(median, 3),
        "wall_s_sd": round(statistics.stdev(walls), 3) if len(walls) > 1 else None,
        "cpu_s_median": round(statistics.median(cpus), 3),
        "seconds_per_subject": round(median / subjects, 4),
        "crops_per_second": round(subjects / median, 4),
        "subjects_per_hour": round(3600 * subjects / median, 1),
    }


def measure(
    trees: dict[str, Path], data: Path, out: Path, overrides: list[str], repeats: int
) -> dict[str, dict[str, object]]:
    """Each tree's summary (or its error), repeats alternating between trees."""
    subjects = len(list(data.glob("*.nii.gz")))
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in trees}
    errors: dict[str, object] = {}
    for _ in range(repeats):
        for name, src in trees.items():
            if name in errors:
                continue
            run = run_segment(src, data, out / name, overrides)
            if "error" in run:
                errors[name] = run["error"]
            else:
                runs[name].append(run)
    return {
        name: {"skipped": errors[name]} if name in errors else summarise(runs[name], subjects)
        for name in trees
    }


def compare_outputs(new: Path, old: Path) -> dict[str, object]:
    """How far two runs' outputs are apart: the lowest voxel agreement of a label map (same
    file names under both folders) and the largest relative difference of a volume of
    ``volumes.csv`` (rows matched by subject, side and label)."""
    import nibabel as nib
    import numpy as np

    from hsftrain.inference.writer import read_volumes

    agreement = []
    for seg in sorted(new.rglob("*_seg.nii.gz")):
        other = old / seg.relative_to(new)
        if other.is_file():
            a, b = (np.asarray(nib.load(p).dataobj) for p in (seg, other))
            agreement.append(float((a == b).mean()) if a.shape == b.shape else 0.0)

    def volumes(folder: Path) -> dict[tuple[object, object, object], float]:
        rows = read_volumes(folder / "volumes.csv")
        return {
            (r["subject"], r["side"], r["label"]): float(str(r["volume_mm3"]))
            for r in rows
            if r.get("volume_mm3")
        }

    a, b = volumes(new), volumes(old)
    shared = sorted(set(a) & set(b))
    differences = [abs(a[k] - b[k]) / max(abs(b[k]), 1.0) for k in shared]
    return {
        "label_maps": len(agreement),
        "min_voxel_agreement": round(min(agreement), 6) if agreement else None,
        "volumes": len(shared),
        "max_volume_difference_pct": round(100 * max(differences), 4) if differences else None,
    }


def agreement_with_old(out: Path, got: dict[str, dict[str, object]]) -> dict[str, object]:
    """``{"agreement_with_old": ...}`` when both trees ran (their last repeat's outputs are
    left in ``out/current`` and ``out/old``), else nothing."""
    if "old" not in got or any("skipped" in g for g in got.values()):
        return {}
    return {"agreement_with_old": compare_outputs(out / "current", out / "old")}


def crop_folder(folder: Path, n: int) -> Path:
    """A private copy of the first ``n`` MSD crops (outputs never land in the shared folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    for mri in sorted(MSD.glob("hippocampus_*.nii.gz"))[:n]:
        shutil.copyfile(mri, folder / mri.name)
    return folder


def old_tree(work: Path, rev: str) -> Path:
    """A ``git worktree`` of ``rev`` (removed by :func:`drop_tree`); returns its ``src``."""
    path = work / f"old-{rev}"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
        check=True,
        capture_output=True,
    )
    return path / "src"


def drop_tree(src: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(src.parent)],
        check=False,
        capture_output=True,
    )


def commit(path: Path = ROOT) -> str:
    done = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=16, help="MSD crops per setting")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated")
    parser.add_argument("--engines", default="onnxruntime,openvino", help="hardware.engine list")
    parser.add_argument("--cohort", type=int, default=48, help="crops of the cohort figure (0: no)")
    parser.add_argument("--old-commit", default="", help="also measure this revision's code")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tta", type=int, default=20, help="augmentations (bagging_accurate)")
    parser.add_argument("--bag", type=int, default=5, help="models (bagging)")
    parser.add_argument("--f-maps", type=int, default=16)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="2 crops, tiny models, 1 repeat")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.subjects, args.repeats, args.tta, args.bag = 2, 1, 2, 2
        args.f_maps, args.levels, args.cohort = 4, 2, min(args.cohort, 2)
    if not MSD.is_dir():
        print(f"MSD crops not found in {MSD}", file=sys.stderr)
        return 1
    settings = [s for s in args.settings.split(",") if s]
    engines = [e for e in args.engines.split(",") if e]
    load_before = [round(x, 2) for x in os.getloadavg()]  # other work skews timings
    trees = {"current": ROOT / "src"}
    results: list[dict[str, object]] = []
    cohort: list[dict[str, object]] = []
    old_vs_new: dict[str, object] | None = None
    with tempfile.TemporaryDirectory(prefix="hsftrain-bench-") as tmp:
        work = Path(tmp)
        models = export_models(work / "models", args.bag, args.f_maps, args.levels)
        data = crop_folder(work / "data", args.subjects)
        presets = ROOT / "src" / "hsftrain" / "conf" / "segmentation"
        if args.old_commit:  # each setting also on the old code, alternating
            trees["old"] = old_tree(work, args.old_commit)
        try:
            for name in settings:
                if name.startswith("msd") and not (presets / f"{name}.yaml").is_file():
                    results.append({"setting": name, "skipped": f"no segmentation={name} preset"})
                    continue
                for engine in engines:
                    overrides = [
                        *setting_overrides(name, models, args.tta),
                        f"hardware.engine={engine}",
                    ]
                    got = measure(trees, data, work / "out", overrides, args.repeats)
                    same = agreement_with_old(work / "out", got)
                    for tree, summary in got.items():
                        code = "current" if tree == "current" else args.old_commit
                        row = {"setting": name, "engine": engine, "code": code, **summary}
                        results.append({**row, **same} if tree == "current" else row)
            if args.cohort:
                crops = crop_folder(work / "cohort", args.cohort)
                for jobs in (1, 2):
                    overrides = ["segmentation=msd", f"hardware.jobs={jobs}"]
                    got1 = measure(
                        {"current": trees["current"]}, crops, work / "out", overrides, args.repeats
                    )
                    cohort.append({"jobs": jobs, **got1["current"]})
                if args.old_commit:
                    both = measure(trees, crops, work / "out", ["segmentation=msd"], args.repeats)
                    cohort_same = agreement_with_old(work / "out", both)
        finally:
            if "old" in trees:
                drop_tree(trees["old"])
        if args.cohort and args.old_commit:
            new, old = both["current"], both["old"]
            speedup = None
            if "crops_per_second" in new and "crops_per_second" in old:
                speedup = round(float(new["crops_per_second"]) / float(old["crops_per_second"]), 3)  # type: ignore[arg-type]
            old_vs_new = {
                "old_commit": args.old_commit,
                "old": old,
                "new": new,
                "speedup": speedup,
                **cohort_same,
            }
    report = {
        "benchmark": "segment_cpu",
        "commit": commit(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            **machine_info(),
            "load_average_1_5_15_min_before": load_before,
            "load_average_1_5_15_min_after": [round(x, 2) for x in os.getloadavg()],
        },
        "model": {
            "name": "ResidualUNet3D",
            "f_maps": args.f_maps,
            "num_levels": args.levels,
            "classes": 8,
            "weights": "random (timing only)",
        },
        "measure": "hsftrain segment processes, wall time from start to exit, median of repeats",
        "data": f"the first {args.subjects} MSD Task04 crops (cohort: {args.cohort})",
        "results": results,
        "cohort_msd": cohort,
        "old_vs_new_msd": old_vs_new,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.out}")
    return 0


def print_table(report: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="hsftrain segment end to end on CPU (median of repeats)")
    for column in ("setting", "engine", "s / subject", "crops / s", "sd (s)", "CPU s", "note"):
        table.add_column(
            column, justify="left" if column in ("setting", "engine", "note") else "right"
        )
    rows = list(report["results"])  # type: ignore[call-overload]
    rows += [{"setting": f"cohort msd, jobs={c['jobs']}", **c} for c in report["cohort_msd"]]  # type: ignore[attr-defined]
    old_vs_new = report["old_vs_new_msd"]
    if isinstance(old_vs_new, dict):
        rows += [
            {
                "setting": f"msd {k} ({old_vs_new['old_commit'] if k == 'old' else 'HEAD'})",
                **old_vs_new[k],
            }
            for k in ("old", "new")
        ]
    for r in rows:
        code = r.get("code", "current")
        setting = str(r.get("setting", "")) + ("" if code == "current" else f" ({code})")
        cells = [setting, str(r.get("engine", ""))]
        if "skipped" in r:
            table.add_row(*cells, "", "", "", "", f"skipped: {r['skipped']}")
            continue
        table.add_row(
            *cells,
            f"{r['seconds_per_subject']:.3f}",
            f"{r['crops_per_second']:.2f}",
            "" if r["wall_s_sd"] is None else f"{r['wall_s_sd']:.2f}",
            f"{r['cpu_s_median']:.1f}",
            same_note(r.get("agreement_with_old")),
        )
    console = Console(width=max(Console().width, 140))
    console.print(table)
    if isinstance(old_vs_new, dict) and old_vs_new["speedup"]:
        console.print(f"new / old crops per second: {old_vs_new['speedup']:.2f}x")
        if old_vs_new.get("agreement_with_old"):
            console.print(f"outputs {same_note(old_vs_new['agreement_with_old'])}")


def same_note(same: object) -> str:
    """The agreement of the new outputs with the old code's, in a few words."""
    if not isinstance(same, dict) or same.get("min_voxel_agreement") is None:
        return ""
    text = f"vs old: voxels >= {100 * float(same['min_voxel_agreement']):.3f}% same"
    if same.get("max_volume_difference_pct") is not None:
        text += f", volumes within {float(same['max_volume_difference_pct']):.3f}%"
    return text


if __name__ == "__main__":
    raise SystemExit(main())
