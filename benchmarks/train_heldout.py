"""Train on MSD, score on MSD cases the run never saw: wall time, CPU time, held-out Dice.

One fixed split of the 208 MSD crops (seed 0): 145 train, 21 validation (checkpoint
selection), 42 test (never seen in training or tuning). The run trains with the given
overrides, exports its best checkpoint (lowest validation loss) to ONNX, and that model is
scored on the 42 test cases through hsftrain segment + evaluate: the cases segmented by
``hsftrain.inference.api.segment`` with that model alone (ONNX Runtime; the test-time flip
through ``segmentation.tta=flip``), Dice per label by ``hsftrain.evaluation.api``: what
``hsftrain segment`` + ``hsftrain evaluate`` give a user.

Only the public API is used (``compose``, ``train``, ``segment``, ``evaluate_files``), so
the same script measures an older checkout that has it too:

    python benchmarks/train_heldout.py --tag new lightning.max_epochs=10
    git worktree add /tmp/old ccf639e
    PYTHONPATH=/tmp/old/src python benchmarks/train_heldout.py --tag old lightning.max_epochs=10
    python benchmarks/train_heldout.py --tag budget30m budget=30m
    python benchmarks/train_heldout.py --summary 'scr_*'              # the recipe table

Prints a table and writes ``benchmarks/results/train_heldout_<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from machine import machine_info, write_result  # benchmarks/ is on sys.path (script)
from rich.console import Console
from rich.table import Table

import hsftrain
from hsftrain.config.compose import compose
from hsftrain.core.logs import setup_logging

ROOT = Path(__file__).resolve().parents[1]
MSD = Path(os.environ.get("HSFTRAIN_MSD", ROOT.parent / "shared/data/msd_hippocampus"))
NAMES = {1: "anterior", 2: "posterior"}
RECIPE = [
    "datasets=msd",
    f"datasets.main_path={MSD}",
    "models.hparams.f_maps=8",
    "models.hparams.num_levels=3",
    "models.lr=5e-3",
    "datasets.batch_size=2",
    "lightning.enable_progress_bar=false",
    "logger=csv",
    "validation.surface_every=-1",
]


def split(n: int = 208, seed: int = 0) -> tuple[list[int], list[int], list[int]]:
    """Indices into the sorted MSD subjects: 145 train, 21 validation, 42 test."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    return sorted(order[63:]), sorted(order[42:63]), sorted(order[:42])


def canonical(path: Path) -> np.ndarray:
    return np.asanyarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)


def product_dice(
    model: Path,
    images: list[Path],
    references: list[Path],
    out: Path,
    labels: dict[int, str],
    flip: bool = False,
) -> tuple[dict[str, list[float]], list[Path]]:
    """Dice per label of ``hsftrain segment`` + ``hsftrain evaluate`` on ``images``: the
    crops segmented with ``model`` alone (``model_paths``, ONNX Runtime, roiloc.mode=crop;
    ``flip``: ``segmentation.tta=flip`` with the mean of the two views), each segmentation
    scored against its reference by :func:`hsftrain.evaluation.api.evaluate_files`.

    Returns:
        ``{label name: [Dice of each image, in order]}`` and the segmentations, in order.
    """
    from hsftrain.evaluation.api import EvaluationOptions, evaluate_files
    from hsftrain.evaluation.pairing import subject_id
    from hsftrain.inference.api import segment

    crops, refs, segs = out / "crops", out / "references", out / "segmentations"
    for folder, files in ((crops, images), (refs, references)):
        folder.mkdir(parents=True, exist_ok=True)
        for file in files:  # the cases asked for, under their own names
            (folder / file.name).unlink(missing_ok=True)
            (folder / file.name).symlink_to(file.resolve())
    overrides = [
        f"files.path={crops}",
        "files.pattern=*.nii.gz",
        f"files.output_dir={segs}",
        "files.overwrite=true",
        f"model_paths=[{model}]",
        "roiloc.mode=crop",
        "hardware=onnxruntime",
        "qc=false",
        "report=false",
    ]
    if flip:
        overrides += ["segmentation.tta=flip", "segmentation.fusion=mean"]
    outputs = {subject_id(p): p for p in segment(compose("segment", overrides))}
    options = EvaluationOptions(
        labels=labels, out=out / "evaluation", surface=False, plots=False, show=False
    )
    results = evaluate_files(str(segs / "*_hippocampus_seg.nii.gz"), refs, options)
    by_case = {(r.subject, r.label): r.dice for r in results.results}
    ids = [subject_id(image) for image in images]
    dice = {name: [by_case[(i, value)] for i in ids] for value, name in labels.items()}
    return dice, [outputs[i] for i in ids]


def score(
    onnx_path: Path, cases: list[Path], flip: bool = False, references: list[Path] | None = None
) -> dict[str, list[float]]:
    """Dice per label of the exported model on each case, scored through ``hsftrain
    segment`` + ``hsftrain evaluate`` (:func:`product_dice`); ``flip``: with the test-time
    flip (``segmentation.tta=flip``). ``references``: the label of each case (default: its
    namesake in the MSD ``labelsTr/``)."""
    refs = references or [MSD / "labelsTr" / image.name for image in cases]
    with tempfile.TemporaryDirectory(prefix="hsftrain-score-") as tmp:
        return product_dice(onnx_path, cases, refs, Path(tmp), NAMES, flip)[0]


def _means(dice: dict[str, list[float]]) -> dict[str, float]:
    """Mean Dice per label, as ``hsftrain evaluate`` averages (a class in neither image:
    NaN, left out)."""
    return {k: round(float(np.nanmean(v)), 4) for k, v in dice.items()}


def summary(pattern: str) -> None:
    """One table of earlier results (``benchmarks/results/train_heldout_<pattern>.json``):
    the recipe comparison, on the 21 tuning cases."""
    table = Table(title=f"train_heldout {pattern}: Dice on the 21 tuning cases")
    for col in ("tag", "overrides", "wall s", "CPU s", "ant", "post", "ant+flip", "post+flip"):
        table.add_column(col, justify="left" if col in ("tag", "overrides") else "right")
    for path in sorted((ROOT / "benchmarks" / "results").glob(f"train_heldout_{pattern}.json")):
        r = json.loads(path.read_text())
        tuning = r.get("tuning_dice_mean")
        if not tuning:
            continue
        shown = [o for o in r["overrides"] if o not in RECIPE]
        table.add_row(
            r["tag"],
            " ".join(shown),
            f"{r['wall_s']:.0f}",
            f"{r['cpu_s']:.0f}",
            *(f"{v:.3f}" for v in (*tuning["plain"].values(), *tuning["flip"].values())),
        )
    Console().print(table)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag")
    parser.add_argument("--summary", metavar="GLOB", help="print earlier results and stop")
    parser.add_argument(
        "--all",
        action="store_true",
        help="train on all 208 cases (the 21 tuning cases, also trained on, select the "
        "checkpoint): the model to ship; nothing is left to score it on",
    )
    parser.add_argument(
        "--with-tuning",
        action="store_true",
        help="also train on the 21 tuning cases (166 in all; they still select the "
        "checkpoint, so their Dice is no longer a held-out figure): the 42 test cases stay "
        "unseen; for a recipe already chosen on the tuning cases",
    )
    parser.add_argument("--out", default=None, help="output folder (default: a temp dir)")
    parser.add_argument(
        "--keep-epochs",
        type=float,
        metavar="FRACTION",
        help="also keep the weights of every epoch from this fraction of the run on "
        "(checkpoints/epoch-NNN.ckpt), for benchmarks/checkpoint_choice.py",
    )
    parser.add_argument(
        "--cpu-candidates",
        metavar="FxL",
        nargs="+",
        help="budget= on a CPU: the networks the plan chooses among instead of "
        "planning.candidates.cpu, e.g. 24x4 32x4, or channels per level 16-48-96-192x4 (what a change "
        "of the planner's list would do)",
    )
    args, overrides = parser.parse_known_args()
    if args.summary:
        summary(args.summary)
        return {}
    if not args.tag:
        parser.error("--tag is required")
    setup_logging()
    if args.cpu_candidates:  # e.g. 16x4 or 8-24-48x3: [f_maps, num_levels] pairs

        def network(text: str) -> str:
            width, levels = text.lower().split("x")
            sizes = width.split("-")
            return f"[{sizes[0] if len(sizes) == 1 else '[' + ','.join(sizes) + ']'},{levels}]"

        pairs = ",".join(network(c) for c in args.cpu_candidates)
        overrides.append(f"planning.candidates.cpu=[{pairs}]")
    if args.keep_epochs is not None:
        _keep_epochs(args.keep_epochs)
    images = sorted((MSD / "imagesTr").glob("hippocampus_*.nii.gz"))
    tr, va, te = split(len(images))
    if args.all:
        tr, te = list(range(len(images))), []
    elif args.with_tuning:
        tr = sorted(tr + va)
    out = Path(args.out or tempfile.mkdtemp(prefix="hsftrain-heldout-"))
    cfg_args = [
        *RECIPE,
        f"datasets.train_val_test_idx=[{tr},{va},{te}]",
        f"datasets.output_path={out}",
        f"run_name={args.tag}",
        *overrides,
    ]
    try:
        from hsftrain.workflow import train
    except ImportError:  # checkouts before hsftrain.workflow (train -> export) existed
        from hsftrain.training.run import train  # type: ignore[no-redef]

    load_before = os.getloadavg()[0]
    start, cpu0 = time.perf_counter(), _cpu()
    metrics = train(compose("config", cfg_args))
    wall, cpu = time.perf_counter() - start, _cpu() - cpu0
    run_dir = Path(str(metrics["run_dir"]))
    if args.all:
        print(f"trained on all {len(images)} cases in {wall:.0f} s: {run_dir / 'model.onnx'}")
        return {"run_dir": str(run_dir), "wall_s": wall, "cpu_s": cpu}
    dice = score(run_dir / "model.onnx", [images[i] for i in te])
    means = _means(dice)
    tuning = {  # the 21 validation cases: what recipes are compared on (never the 42)
        "plain": _means(score(run_dir / "model.onnx", [images[i] for i in va])),
        "flip": _means(score(run_dir / "model.onnx", [images[i] for i in va], flip=True)),
    }
    test_flip = score(run_dir / "model.onnx", [images[i] for i in te], flip=True)
    raw = _trained_weights_onnx(metrics.get("best_checkpoint"), out)
    paired = {}
    if raw is not None:  # models.ema_decay: the same run without its average, case for case
        paired = {
            f"{part}_{kind}": _means(score(raw, [images[i] for i in cases], flip=kind == "flip"))
            for part, cases in (("tuning", va), ("test", te))
            for kind in ("plain", "flip")
        }
    result = {
        "what": f"train on {len(tr)} MSD cases (21 for checkpoint selection"
        + (", also trained on)" if args.with_tuning else ")")
        + ", Dice on 42 never seen",
        "tag": args.tag,
        "hsftrain": str(Path(hsftrain.__file__).parent),
        "overrides": [*RECIPE[2:], *overrides],
        "cpu_candidates": args.cpu_candidates,
        "trained_on": len(tr),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "test_dice_mean": means,
        "test_dice": {k: [round(x, 4) for x in v] for k, v in dice.items()},
        "test_dice_mean_flip": _means(test_flip),
        "tuning_dice_mean": tuning,
        "trained_weights_dice_mean": paired or None,
        "last_checkpoint_dice_mean": _last_checkpoint_dice(run_dir, metrics, out, va, te, images),
        "val_dice_mean": metrics.get("val/dice_mean"),
        "plan": (run_dir / "plan.yaml").read_text() if (run_dir / "plan.yaml").is_file() else None,
        "machine": machine_info(),
    }
    table = Table(title=f"train_heldout {args.tag}")
    cols = [f"{part} {k}" for part in ("tuning", "tuning+flip", "test") for k in means]
    for col in ("wall s", "CPU s", *cols):
        table.add_column(col, justify="right")
    values = [*tuning["plain"].values(), *tuning["flip"].values(), *means.values()]
    table.add_row(f"{wall:.0f}", f"{cpu:.0f}", *(f"{v:.3f}" for v in values))
    Console().print(table)
    write_result("train_heldout", args.tag, result)
    return result


def _trained_weights_onnx(best: object, out: Path) -> Path | None:
    """The run's best checkpoint with its trained weights instead of their moving average
    (``ema_raw``), exported: scored beside the average it was saved with (None: no average)."""
    if not best or not Path(str(best)).is_file():
        return None
    import torch

    from hsftrain.export.api import export_checkpoint

    ckpt = torch.load(str(best), map_location="cpu", weights_only=False)
    if not ckpt.get("ema_raw"):
        return None
    ckpt["state_dict"].update(ckpt.pop("ema_raw"))
    path = out / "trained_weights.ckpt"
    torch.save(ckpt, path)
    return export_checkpoint(path, out / "trained_weights.onnx")


def _last_checkpoint_dice(
    run_dir: Path, metrics: dict, out: Path, va: list[int], te: list[int], images: list[Path]
) -> dict | None:
    """Tuning and test Dice (with the flip) of the last epoch's weights, paired with the
    best checkpoint (lowest validation loss) that ``model.onnx`` holds; None when the two
    are the same epoch or the checkout has no per-epoch ``last.ckpt``."""
    import torch

    from hsftrain.export.api import export_checkpoint

    last, best = run_dir / "checkpoints" / "last.ckpt", metrics.get("best_checkpoint")
    if not last.is_file() or not best or not Path(str(best)).is_file():
        return None
    epochs = [torch.load(p, map_location="cpu", weights_only=False)["epoch"] for p in (last, best)]
    if epochs[0] == epochs[1]:
        return None
    onnx = export_checkpoint(last, out / "last.onnx")
    return {
        "epochs_last_best": epochs,
        "tuning_flip": _means(score(onnx, [images[i] for i in va], flip=True)),
        "test_flip": _means(score(onnx, [images[i] for i in te], flip=True)),
    }


def _keep_epochs(fraction: float) -> None:
    """The run also saves ``checkpoints/epoch-NNN.ckpt`` (weights only) after every training
    epoch from ``fraction`` of its epochs on; its own checkpoints are unchanged."""
    import hsftrain.training.run as run_module

    class KeepEpochs(run_module.RunCheckpoints):  # type: ignore[misc,name-defined]
        def on_train_epoch_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
            super().on_train_epoch_end(trainer, pl_module)
            epoch = trainer.current_epoch
            if trainer.is_global_zero and epoch >= fraction * (trainer.max_epochs or 0):
                path = Path(str(self.dirpath)) / f"epoch-{epoch:03d}.ckpt"
                trainer.save_checkpoint(path, weights_only=True)

    run_module.RunCheckpoints = KeepEpochs  # type: ignore[misc]


def _cpu() -> float:
    """CPU seconds of this process and its children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
