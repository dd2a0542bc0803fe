"""CPU inference: fp32 vs pruned vs int8 ONNX models, on the same MSD validation volumes.

For every model given with ``--model NAME=PATH.onnx``:

* speed: ms per forward pass at a realistic crop size (default 64 x 96 x 64, batch 1),
  with ONNX Runtime limited to 1 and to 2 intra-op threads: ``--rounds`` fresh
  subprocesses per model, visiting the models in turn, each timing ``--repeats`` runs
  after one warm-up run; the median over all timed runs;
* memory: peak resident memory of that subprocess (VmHWM, reset just before the session
  is created) minus its resident memory at that point: model + ONNX Runtime arenas +
  activations;
* size: the ONNX file in bytes, and the fraction of exactly-zero conv weights;
* quality: Dice of the segmentation against the reference labels, per label and mean, on
  the validation subjects of ``--split`` (a run's split.json) found under ``--data`` (the
  MSD Task04 folder with imagesTr/ and labelsTr/), scored through hsftrain segment +
  evaluate: each model alone segments the crops with ``hsftrain.inference.api.segment``
  (ONNX Runtime, no test-time augmentation) and ``hsftrain.evaluation.api`` compares them
  with the labels, on the crop's own grid: what ``hsftrain segment`` + ``hsftrain
  evaluate`` give a user. The timings above use their own ONNX Runtime sessions.

Prints a table and writes JSON (``--out``). Example (docs/results.md, "Inference speed and compression")::

    .venv/bin/python benchmarks/inference_cpu.py \\
        --model fp32=runs/fp32/model.onnx --model int8=runs/fp32/model.int8.onnx \\
        --split runs/fp32/split.json --data ../shared/data/msd_hippocampus
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(model: str, threads: int, shape: list[int], repeats: int, image: str | None) -> dict:
    """Time one model in this (fresh) process; returns ms and memory figures."""
    import onnxruntime as ort

    x = _timing_input(shape, image)
    exact = _reset_peak()  # the peak of loading torch/data above must not count
    rss0 = _status_kib("VmRSS")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: x})  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1000)
    peak = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "threads": threads,
        "ms_median": float(np.median(times)),
        "ms_min": float(np.min(times)),
        "ms_all": [round(t, 1) for t in times],
        "peak_rss_delta_mib": (peak - rss0) / 1024,
    }


def _timing_input(shape: list[int], image: str | None) -> np.ndarray:
    """A real image, pre-processed and centre cropped/padded to ``shape``, or noise."""
    if image is None:
        return np.random.default_rng(0).standard_normal((1, 1, *shape), dtype=np.float32)
    import torch

    from hsftrain.data.nifti import load_volume
    from hsftrain.data.transforms import postprocess

    data, _ = load_volume(image, np.float32, canonical=True)
    tensor = torch.from_numpy(np.ascontiguousarray(data))[None]
    out, _ = postprocess(tensor, torch.zeros(data.shape, dtype=torch.long), shape)
    return out[None].numpy().astype(np.float32)


def time_model(model: Path, threads: int, args: argparse.Namespace, image: str | None) -> dict:
    """One fresh subprocess timing ``model`` with ``threads`` intra-op threads."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        str(model),
        "--worker-threads",
        str(threads),
        "--shape",
        *map(str, args.shape),
        "--repeats",
        str(args.repeats),
    ]
    if image:
        cmd += ["--worker-image", image]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_models(
    models: dict[str, Path], args: argparse.Namespace, image: str | None
) -> dict[str, dict[str, dict]]:
    """Timings of every model, in ``args.rounds`` rounds that visit the models in turn (so
    that a background load spike hits them alike); the median over all timed runs."""
    runs: dict[str, dict[int, list[dict]]] = {n: {t: [] for t in args.threads} for n in models}
    for r in range(args.rounds):
        for name, path in models.items():
            for t in args.threads:
                print(
                    f"  timing round {r + 1}/{args.rounds}: {name}, {t} thread(s)", file=sys.stderr
                )
                runs[name][t].append(time_model(path, t, args, image))
    out: dict[str, dict[str, dict]] = {}
    for name, per_thread in runs.items():
        out[name] = {}
        for t, results in per_thread.items():
            times = [ms for res in results for ms in res["ms_all"]]
            out[name][str(t)] = {
                "threads": t,
                "ms_median": float(np.median(times)),
                "ms_min": float(np.min(times)),
                "ms_all": times,
                "peak_rss_delta_mib": float(max(res["peak_rss_delta_mib"] for res in results)),
            }
    return out


def validation_cases(split: Path, data: Path, limit: int | None) -> list[tuple[str, Path, Path]]:
    """(id, image, label) of the split's validation subjects in the MSD folder."""
    ids = json.loads(split.read_text())["val"]
    cases = []
    for sid in ids:
        name = Path(sid).name
        image, label = data / "imagesTr" / name, data / "labelsTr" / name
        if not (image.is_file() and label.is_file()):
            raise FileNotFoundError(f"validation subject {sid}: {image} or {label} missing")
        cases.append((name, image, label))
    return cases[:limit] if limit else cases


def dice_scores(model: Path, cases: list[tuple[str, Path, Path]], labels: list[int]) -> dict:
    """Dice per label and mean of ``model`` on ``cases``, scored through hsftrain segment +
    evaluate (:func:`train_heldout.product_dice`: ``hsftrain.inference.api.segment`` with
    ``model_paths=[model]``, ONNX Runtime, no test-time augmentation; Dice by
    ``hsftrain.evaluation.api``); ``_pred``: each case's segmentation (native grid)."""
    import tempfile

    import nibabel as nib
    from train_heldout import product_dice  # benchmarks/ is on sys.path (script)

    with tempfile.TemporaryDirectory(prefix="hsftrain-inference-cpu-") as tmp:
        images, refs = [c[1] for c in cases], [c[2] for c in cases]
        names = {v: str(v) for v in labels}
        per_label, segs = product_dice(model, images, refs, Path(tmp), names)
        predictions = {
            case: np.asarray(nib.load(str(seg)).dataobj)
            for (case, _, _), seg in zip(cases, segs, strict=True)
        }
    dice = {str(v): float(np.nanmean(per_label[str(v)])) for v in labels}
    return {
        "dice": dice,
        "dice_mean": float(np.mean(list(dice.values()))),
        "dice_per_case_mean": [
            float(np.nanmean([per_label[str(v)][i] for v in labels])) for i in range(len(cases))
        ],
        "_pred": predictions,
    }


def model_facts(model: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model))
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    dq_inputs = {
        n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"
    }
    inits = {i.name: i for i in proto.graph.initializer}
    total = zeros = params = 0
    for init in proto.graph.initializer:
        params += int(np.prod(init.dims)) if init.data_type in (1, 3) else 0
    for w in conv_weights:
        source = inits.get(w) or inits.get(dq_inputs.get(w, ""))
        if source is None:
            continue
        array = numpy_helper.to_array(source)
        total += array.size
        zeros += int((array == 0).sum())
    meta = {p.key: p.value for p in proto.metadata_props}
    return {
        "file_bytes": model.stat().st_size,
        "conv_weights": total,
        "conv_weight_zeros": zeros / total if total else 0.0,
        "f_maps": json.loads(meta["f_maps"]) if "f_maps" in meta else None,
        "quantization": meta.get("quantization", "fp32"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH.onnx (repeat)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/msd_hippocampus")
    parser.add_argument("--split", type=Path, help="split.json whose `val` subjects are scored")
    parser.add_argument("--cases", type=int, default=None, help="at most this many cases")
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 96, 64])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per subprocess")
    parser.add_argument("--rounds", type=int, default=3, help="subprocesses per model")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reference", default=None, help="model NAME used as the Dice reference")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/inference_cpu.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-image", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(
            args.worker, args.worker_threads, args.shape, args.repeats, args.worker_image
        )
        print(json.dumps(result))
        return
    if not args.model or not args.split:
        parser.error("give at least one --model NAME=PATH and --split RUN/split.json")
    models = dict(m.split("=", 1) for m in args.model)
    load_start = os.getloadavg()
    cases = validation_cases(args.split, args.data, args.cases)
    timing_image = str(cases[0][1])
    reference = args.reference or next(iter(models))
    results: dict[str, dict] = {}
    preds: dict[str, dict] = {}
    for name, path in models.items():
        path = Path(path)
        print(f"[{name}] {path}", file=sys.stderr, flush=True)
        entry = model_facts(path)
        scores = dice_scores(path, cases, [1, 2])
        preds[name] = scores.pop("_pred")
        entry.update(scores)
        results[name] = entry
    timings = time_models({n: Path(p) for n, p in models.items()}, args, timing_image)
    for name, entry in results.items():
        entry["timing"] = timings[name]
    ref = results[reference]
    for name, entry in results.items():
        entry["dice_drop_vs_reference"] = ref["dice_mean"] - entry["dice_mean"]
        entry["argmax_agreement_vs_reference"] = float(
            np.mean([np.mean(preds[name][c] == preds[reference][c]) for c, _, _ in cases])
        )
        for t in args.threads:
            entry["timing"][str(t)]["speedup_vs_reference"] = (
                ref["timing"][str(t)]["ms_median"] / entry["timing"][str(t)]["ms_median"]
            )
    report = {
        "what": "ONNX Runtime CPU inference, batch 1, per model: ms per forward, peak RSS delta, "
        "file size, Dice vs reference labels on validation cases",
        "shape": args.shape,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "validation_cases": [c for c, _, _ in cases],
        "reference": reference,
        "loadavg_at_start": load_start,
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "onnxruntime": __import__("onnxruntime").__version__,
            "loadavg_at_end": os.getloadavg(),
        },
        "models": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print_table(report, args.threads)
    print(f"\nwritten {args.out}")


def print_table(report: dict, threads: list[int]) -> None:
    heads = ["model", "f_maps", "zeros", "MiB file"]
    heads += [f"ms {t}T" for t in threads] + [f"x{t}T" for t in threads]
    heads += ["peak MiB", "Dice ant", "Dice post", "Dice mean", "drop", "agree"]
    rows = []
    for name, e in report["models"].items():
        t = e["timing"]
        rows.append(
            [
                name,
                str(e["f_maps"]),
                f"{e['conv_weight_zeros']:.0%}",
                f"{e['file_bytes'] / 2**20:.2f}",
                *[f"{t[str(n)]['ms_median']:.0f}" for n in threads],
                *[f"{t[str(n)]['speedup_vs_reference']:.2f}" for n in threads],
                f"{max(t[str(n)]['peak_rss_delta_mib'] for n in threads):.0f}",
                f"{e['dice']['1']:.4f}",
                f"{e['dice']['2']:.4f}",
                f"{e['dice_mean']:.4f}",
                f"{e['dice_drop_vs_reference']:+.4f}",
                f"{e['argmax_agreement_vs_reference']:.4f}",
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    print(" | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
