"""Per-forward seconds of ``hsftrain segment``'s engines on a CPU: ONNX Runtime (graph
optimisation basic/extended/all, 1 or 2 threads) and OpenVINO f32 (1 or 2 threads, batch
1 or 4), for HSF-size networks (ResidualUNet3D f_maps 16 and 24, 4 levels, 8 classes, random
weights; hsf_train's ARUnet) on the padded shapes of real crops (MSD hippocampus, ASHS).
Arg-max agreement is against ONNX Runtime (all optimisations, 2 threads).

Prints a table and writes ``benchmarks/results/engines.json`` (machine, load average,
versions, date, commit). ``--quick``: a tiny model, one shape, two forwards (a smoke run).

    python benchmarks/engines.py            # minutes: run it on a quiet machine
    python benchmarks/engines.py --quick
    python benchmarks/engines.py --gpu --tag gpu  # hardware=gpu (benchmarks/gpu_session.sh)
    python benchmarks/engines.py --onnx a.onnx b.int8.onnx --tag ab  # these models instead
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info, write_result  # noqa: E402
from segment_cpu import export_random_model  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MSD = Path(os.environ.get("HSFTRAIN_MSD", DATA / "msd_hippocampus"))
ASHS = DATA / "ashs_atlas_test"


def padded(shape: tuple[int, ...], multiple: int = 8) -> tuple[int, ...]:
    return tuple(-(-int(s) // multiple) * multiple for s in shape)


def crop_shapes(limit: int) -> list[tuple[str, tuple[int, ...]]]:
    """The most frequent padded shapes of MSD crops and of ASHS hippocampus boxes (label
    bounding box + 4 voxels on the T2 grid)."""
    import nibabel as nib

    out: list[tuple[str, tuple[int, ...]]] = []
    msd = Counter(padded(nib.load(p).shape[:3]) for p in sorted((MSD / "imagesTr").glob("*.nii*")))
    out += [("msd", s) for s, _ in msd.most_common(limit)]
    ashs: Counter = Counter()
    for p in sorted((ASHS / "images").glob("*_seg_L.nii.gz")):
        where = np.argwhere(np.asarray(nib.load(p).dataobj) > 0)
        if len(where):
            ashs[padded(tuple(where.max(0) - where.min(0) + 1 + 8))] += 1
    out += [("ashs", s) for s, _ in ashs.most_common(limit)]
    return out or [("synthetic", (40, 56, 40))]


def export(folder: Path, name: str, f_maps: int, levels: int) -> Path:
    return export_random_model(folder / f"{name}_f{f_maps}_l{levels}.onnx", name, f_maps, levels)


def models(folder: Path, quick: bool, onnx: list[Path] | None = None) -> list[tuple[str, Path]]:
    """ResidualUNet3D f_maps 16 and 24 and hsf_train's ARUnet (f_maps 16), 4 levels; or the
    ``onnx`` files given (a trained model, its int8 export)."""
    from hsftrain.models.hsf_arunet import NAME as HSF_NAME

    if onnx:
        return [(path.name, path) for path in onnx]
    if quick:
        return [("ResidualUNet3D f4 L2", export(folder, "ResidualUNet3D", 4, 2))]
    out = [(f"ResidualUNet3D f{f} L4", export(folder, "ResidualUNet3D", f, 4)) for f in (16, 24)]
    out.append((f"{HSF_NAME} f16 L4", export(folder, HSF_NAME, 16, 4)))
    return out


def gpu_providers() -> list[str]:
    """The providers of ``hardware=gpu`` this onnxruntime build has (TensorRT, CUDA, CPU)."""
    import onnxruntime as ort
    import yaml

    conf = Path(__file__).resolve().parents[1] / "src/hsftrain/conf/hardware/gpu.yaml"
    wanted = yaml.safe_load(conf.read_text())["engine_settings"]["execution_providers"]
    have = set(ort.get_available_providers())
    return [
        p if isinstance(p, str) else p[0]
        for p in wanted
        if (p if isinstance(p, str) else p[0]) in have
    ]


def ort_runner(path: Path, level: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }["all" if level == "gpu" else level]
    options.intra_op_num_threads = threads
    providers = gpu_providers() if level == "gpu" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), options, providers=providers)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def openvino_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    from hsftrain.inference.openvino_engine import OpenVinoEngine

    engine = OpenVinoEngine(path, batch_size=64, threads=threads)
    return engine.run


def configs(quick: bool, gpu: bool = False) -> list[tuple[str, str, int, int]]:
    """``(engine, setting, threads, batch)``; ``gpu``: ONNX Runtime with ``hardware=gpu``'s
    providers (batch 1 and 4) and the CPU reference."""
    if gpu:
        return [
            ("onnxruntime", "gpu", 0, 1),
            ("onnxruntime", "gpu", 0, 4),
            ("onnxruntime", "all", 0, 1),
        ]
    if quick:
        return [("onnxruntime", "all", 1, 1), ("openvino", "f32", 1, 1)]
    out = [("onnxruntime", lvl, t, 1) for lvl in ("basic", "extended", "all") for t in (1, 2)]
    return out + [("openvino", "f32", t, b) for t in (1, 2) for b in (1, 4)]


def time_forwards(run: Callable, images: np.ndarray, forwards: int) -> list[float]:
    run(images)  # warm-up (OpenVINO compiles the shape here)
    seconds = []
    for _ in range(forwards):
        start = time.perf_counter()
        run(images)
        seconds.append((time.perf_counter() - start) / len(images))
    return seconds


def versions() -> dict[str, str]:
    import onnxruntime

    out = {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    try:
        import openvino

        out["openvino"] = openvino.__version__
    except ImportError:
        out["openvino"] = "not installed"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, one shape, 2 forwards")
    parser.add_argument("--gpu", action="store_true", help="hardware=gpu's providers (ORT)")
    parser.add_argument("--forwards", type=int, default=5)
    parser.add_argument("--shapes", type=int, default=2, help="shapes per data set")
    parser.add_argument("--tag", default="", help="suffix of the result file")
    parser.add_argument("--json", type=Path, help="write the result here instead")
    parser.add_argument("--onnx", type=Path, nargs="+", help="time these ONNX models instead")
    args = parser.parse_args()
    forwards = 2 if args.quick else max(5, args.forwards)
    shapes = crop_shapes(1 if args.quick else args.shapes)[: 1 if args.quick else None]
    load_before = os.getloadavg()
    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, path in models(Path(tmp), args.quick, args.onnx):
            for source, shape in shapes:
                batch4 = rng.standard_normal((4, 1, *shape)).astype(np.float32)
                reference = ort_runner(path, "all", 2)(batch4[:1]).argmax(1)
                for engine, setting, threads, batch in configs(args.quick, args.gpu):
                    if engine == "openvino" and versions()["openvino"] == "not installed":
                        continue
                    run = (
                        ort_runner(path, setting, threads)
                        if engine == "onnxruntime"
                        else openvino_runner(path, threads)
                    )
                    images = batch4[:batch]
                    seconds = time_forwards(run, images, forwards)
                    agree = float((run(batch4[:1]).argmax(1) == reference).mean())
                    row = dict(
                        model=model_name,
                        data=source,
                        shape=list(shape),
                        engine=engine,
                        setting=setting,
                        threads=threads,
                        batch=batch,
                        median_s=float(np.median(seconds)),
                        sd_s=float(np.std(seconds)),
                        forwards=forwards,
                        argmax_agreement=agree,
                    )
                    rows.append(row)
                    print(
                        f"{model_name:24} {source:5} {'x'.join(map(str, shape)):9} "
                        f"{engine:11} {setting:8} t{threads} b{batch}  "
                        f"{row['median_s']:.4f} s +- {row['sd_s']:.4f}  agree {agree:.5f}",
                        flush=True,
                    )
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    out = {
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "versions": versions(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": commit,
        "quick": args.quick,
        "gpu_providers": gpu_providers() if args.gpu else None,
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    path = args.json or write_result("engines", "quick" if args.quick else args.tag, out)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
