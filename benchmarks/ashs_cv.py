"""Cross-validated Dice per label on the 12 ASHS atlas test subjects (coronal TSE T2).

Three ways to get a T2 subfield model, each cross-validated over the same folds of the
12 subjects (both sides of a subject always in the same fold):

* ``scratch``: ``hsftrain train datasets=ashs_test`` on the other folds;
* ``combined``: ``datasets=ashs_msd``: the other folds' ASHS crops and MSD T1 crops
  (``--msd-glob``) through the forgiving loss (MSD compared at ca_type "ap");
* ``finetune``: a model trained once on the MSD crops (T1, anterior/posterior), then
  ``hsftrain finetune`` on the other folds with a new head for the ASHS classes.

Every fold's model is the one of its **last** epoch (the held-out fold is never used to
pick a checkpoint), exported to ONNX and run by ``hsftrain segment`` (plain view, no
test-time augmentation, ``resample.mode=off``: the crops are at the voxel size the ASHS
data were trained at, while a combined model's ``spacing_mm`` is the median over both
sets, MSD's 1 mm) on the held-out subjects' one-hippocampus crops (the TSE cut around each side's labels,
``crop_margin_mm`` as in training), and compared with their labels: Dice per label.

    .venv/bin/python benchmarks/ashs_cv.py                      # all modes, 4 folds
    .venv/bin/python benchmarks/ashs_cv.py --folds 3 --epochs 60 \
        --msd-glob 'hippocampus_0[0-2]*.nii.gz'                # what docs/results.md shows
    .venv/bin/python benchmarks/ashs_cv.py --quick              # 2 folds x 2 epochs: a check

Writes ``benchmarks/results/ashs_cv.json`` (``--quick``: ``ashs_cv_quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ASHS = SHARED / "ashs_atlas_test"
RESULTS = ROOT / "benchmarks" / "results"
SUBJECTS = 12
MODES = ("scratch", "combined", "finetune")
#: Runs found finished in the work folder and reused (their training time is not counted).
REUSED: list[str] = []


def folds_of(n_folds: int) -> list[list[int]]:
    """Subjects 0..11 in ``n_folds`` contiguous folds."""
    return [[int(s) for s in part] for part in np.array_split(np.arange(SUBJECTS), n_folds)]


def split(held_out: list[int], extra: int = 0) -> str:
    """``datasets.train_val_test_idx`` holding out ``held_out`` (both sides: left sides are
    subjects 0-11, right sides 12-23; ``extra`` other subjects, e.g. MSD, all train)."""
    val = sorted([s for s in held_out] + [s + SUBJECTS for s in held_out])
    train = [i for i in range(2 * SUBJECTS + extra) if i not in val]
    return f"datasets.train_val_test_idx=[{train},{val},[]]".replace(" ", "")


def common(args: argparse.Namespace, out: Path, name: str) -> list[str]:
    return [
        f"datasets.output_path={out}",
        f"datasets.cache_dir={out / 'prepared'}",
        f"run_name={name}",
        f"models.hparams.f_maps={args.f_maps}",
        f"models.hparams.num_levels={args.levels}",
        f"lightning.max_epochs={args.epochs}",
        f"lightning.check_val_every_n_epoch={args.val_every}",
        "lightning.enable_progress_bar=false",
        "logger=csv",
        "validation.surface_every=-1",
        "export_onnx=false",
        f"seed={args.seed}",
    ]


def train(overrides: list[str], finetune: bool = False) -> Path:
    """Train (or fine-tune) and export the last epoch's model; returns the ONNX file. A
    run already finished in the work folder (``--out``) is reused, an unfinished one redone."""
    import shutil

    from hsftrain.config.compose import compose
    from hsftrain.export.api import export_checkpoint
    from hsftrain.workflow import finetune as finetune_run
    from hsftrain.workflow import train as train_run

    cfg = compose("config", overrides)
    run_dir = Path(str(cfg.datasets.output_path)) / str(cfg.run_name)
    if (run_dir / "last.onnx").is_file():
        REUSED.append(str(cfg.run_name))
        return run_dir / "last.onnx"
    shutil.rmtree(run_dir, ignore_errors=True)
    out = (finetune_run if finetune else train_run)(cfg)
    run_dir = Path(str(out["run_dir"]))
    return export_checkpoint(run_dir / "checkpoints" / "last.ckpt", run_dir / "last.onnx")


def held_out_crops(folder: Path, subjects: list[int], margin_mm: float) -> dict[str, Path]:
    """Each held-out side's TSE crop (raw intensities, RAS) and its label crop
    (``datasets=ashs_test``'s classes) written to ``folder``; ``{crop: label}``."""
    import nibabel as nib

    from hsftrain.config.compose import compose
    from hsftrain.data.crop import crop_to_labels
    from hsftrain.data.discovery import read_label
    from hsftrain.data.nifti import load_volume
    from hsftrain.data.subjects import DatasetSpec

    cfg = compose("config", ["datasets=ashs_test", f"datasets.main_path={ASHS}"])
    spec = DatasetSpec.from_config("ashs", 0, ASHS, cfg.datasets.datasets.ashs)
    folder.mkdir(parents=True, exist_ok=True)
    pairs = {}
    for s in subjects:
        name = f"sub{s + 1:02d}"
        image, affine = load_volume(
            ASHS / "images" / f"{name}_tse.nii.gz", np.float32, canonical=True
        )
        for side in ("L", "R"):
            label = read_label(spec, ASHS / "images" / f"{name}_seg_{side}.nii.gz", canonical=True)
            crop, crop_label, crop_affine = crop_to_labels(image, label, affine, margin_mm)
            img_path = folder / f"{name}_{side}_img.nii.gz"
            lbl_path = folder / f"{name}_{side}_lbl.nii.gz"
            nib.save(nib.Nifti1Image(crop, crop_affine), str(img_path))
            nib.save(nib.Nifti1Image(crop_label.astype(np.uint8), crop_affine), str(lbl_path))
            pairs[str(img_path)] = lbl_path
    return pairs


def dice_per_label(model: Path, crops: dict[str, Path], out: Path) -> dict[str, list[float]]:
    """``hsftrain segment`` the crops with ``model`` (one plain view) and compare."""
    import nibabel as nib

    from hsftrain.config.compose import compose
    from hsftrain.inference.api import segment
    from hsftrain.inference.engines import OnnxEngine

    folder = Path(next(iter(crops))).parent
    segment(
        compose(
            "segment",
            [
                f"files.path={folder}",
                "files.pattern=*_img.nii.gz",
                f"files.output_dir={out}",
                f"model_paths=[{model}]",
                "roiloc.mode=crop",
                "resample.mode=off",  # crops at the training voxel size (see the module doc)
                "hardware=cpu",
                "qc=false",
                "files.overwrite=true",
            ],
        )
    )
    names = OnnxEngine(model).labels_names
    scores: dict[str, list[float]] = {n: [] for n in names[1:]}
    for image, label in crops.items():
        seg = out / Path(image).name.replace(".nii.gz", "_hippocampus_seg.nii.gz")
        pred = np.asarray(nib.load(str(seg)).dataobj)
        ref = np.asarray(nib.load(str(label)).dataobj)
        for value, name in enumerate(names):
            if value == 0:
                continue
            p, r = pred == value, ref == value
            total = int(p.sum() + r.sum())
            scores[name].append(1.0 if total == 0 else 2.0 * float((p & r).sum()) / total)
    return scores


def tse_labels(subject: int) -> np.ndarray:
    """Both sides' labels on the subject's TSE grid, in ``datasets=ashs_test``'s classes."""
    from hsftrain.config.compose import compose
    from hsftrain.data.discovery import read_label
    from hsftrain.data.subjects import DatasetSpec

    cfg = compose("config", ["datasets=ashs_test", f"datasets.main_path={ASHS}"])
    spec = DatasetSpec.from_config("ashs", 0, ASHS, cfg.datasets.datasets.ashs)
    name = f"sub{subject + 1:02d}"
    left, right = (read_label(spec, ASHS / "images" / f"{name}_seg_{s}.nii.gz") for s in "LR")
    return np.where(left > 0, left, right)


def multispectral_dice(
    model: Path, subjects: list[int], out: Path, t2_weight: float
) -> tuple[dict[str, list[float]], float]:
    """``hsftrain segment`` of the subjects' MPRAGE with their TSE (``files.t2_pattern``,
    ``multispectral.t2_space``): Dice per label of the consensus on the TSE grid, and the
    seconds per subject."""
    import nibabel as nib

    from hsftrain.config.compose import compose
    from hsftrain.inference.api import segment
    from hsftrain.inference.engines import OnnxEngine

    folder = out / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    for s in subjects:
        for kind in ("mprage", "tse"):
            link = folder / f"sub{s + 1:02d}_{kind}.nii.gz"
            if not link.exists():
                link.symlink_to(ASHS / "images" / link.name)
    start = time.perf_counter()
    segment(
        compose(
            "segment",
            [
                f"files.path={folder}",
                "files.pattern=*_mprage.nii.gz",
                "files.t2_pattern={id}_tse.nii.gz",
                f"files.output_dir={out / 'seg'}",
                f"model_paths=[{model}]",
                "multispectral.t2_space=true",
                f"multispectral.t2_weight={t2_weight}",
                "resample.mode=off",
                "hardware=cpu",
                "qc=false",
                "files.overwrite=true",
            ],
        )
    )
    seconds = (time.perf_counter() - start) / len(subjects)
    names = OnnxEngine(model).labels_names
    scores: dict[str, list[float]] = {n: [] for n in names[1:]}
    for s in subjects:
        seg = out / "seg" / f"sub{s + 1:02d}_tse_hippocampus_seg.nii.gz"
        pred = np.asarray(nib.load(str(seg)).dataobj)
        ref = tse_labels(s)
        for value, name in enumerate(names):
            if value:
                p, r = pred == value, ref == value
                total = int(p.sum() + r.sum())
                scores[name].append(1.0 if total == 0 else 2.0 * float((p & r).sum()) / total)
    return scores, seconds


def registrations() -> list[dict[str, float]]:
    """Rigid TSE -> MPRAGE registration of every subject: quality and shift (mm)."""
    from hsftrain.inference.alignment import register_rigid
    from hsftrain.inference.image import load_volume

    rows = []
    for s in range(SUBJECTS):
        name = f"sub{s + 1:02d}"
        start = time.perf_counter()
        t1 = load_volume(ASHS / "images" / f"{name}_mprage.nii.gz")
        t2 = load_volume(ASHS / "images" / f"{name}_tse.nii.gz")
        matrix, quality = register_rigid(t2, t1)
        rows.append(
            {
                "subject": s + 1,
                "quality": round(quality, 3),
                "shift_mm": round(float(np.linalg.norm(matrix[:3, 3])), 2),
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
    return rows


def summarise(scores: dict[str, list[float]]) -> dict[str, dict[str, object]]:
    return {
        label: {
            "mean": round(float(np.mean(v)), 3),
            "sd": round(float(np.std(v)), 3),
            "values": [round(x, 3) for x in v],
        }
        for label, v in scores.items()
    }


def run_mode(mode: str, args: argparse.Namespace, out: Path) -> dict[str, object]:
    folds = folds_of(args.folds)
    scores: dict[str, list[float]] = {}
    fused: dict[float, dict[str, list[float]]] = {}
    fused_seconds: list[float] = []
    start = time.perf_counter()
    pretrained = None
    msd = [f"datasets.datasets.msd.patterns.t1.mri={args.msd_glob}"]
    n_msd = len(list((SHARED / "msd_hippocampus" / "imagesTr").glob(args.msd_glob)))
    if mode == "finetune":
        base = ["datasets=msd", f"datasets.main_path={SHARED / 'msd_hippocampus'}", *msd]
        overrides = [
            *base,
            *common(args, out, "msd_pretrain"),
            "datasets.train_ratio=0.8",
            f"lightning.max_epochs={args.pretrain_epochs or args.epochs}",
        ]
        pretrained = train(overrides).parent / "checkpoints" / "last.ckpt"
    for k, held_out in enumerate(folds):
        name = f"{mode}_fold{k}"
        if mode == "scratch":
            overrides = ["datasets=ashs_test", f"datasets.main_path={ASHS}", split(held_out)]
            model = train([*overrides, *common(args, out, name)])
        elif mode == "combined":
            overrides = [
                "datasets=ashs_msd",
                f"datasets.main_path={SHARED}",
                *msd,
                split(held_out, n_msd),
                f"datasets.patch_size={args.patch}",
            ]
            model = train([*overrides, *common(args, out, name)])
        else:
            overrides = [
                "datasets=ashs_test",
                f"datasets.main_path={ASHS}",
                split(held_out),
                f"finetuning.pretrained={pretrained}",
                "finetuning.out_channels=6",
                *common(args, out, name)[:3],
                *common(args, out, name)[5:],
            ]
            model = train(overrides, finetune=True)
        crops = held_out_crops(out / "crops" / name, held_out, args.margin)
        for label, values in dice_per_label(model, crops, out / "preds" / name).items():
            scores.setdefault(label, []).extend(values)
        if mode == "combined" and args.multispectral:
            for weight in args.t2_weights:
                where = out / "multispectral" / f"{name}_w{weight:g}"
                both, seconds = multispectral_dice(model, held_out, where, weight)
                fused_seconds.append(seconds)
                for label, values in both.items():
                    fused.setdefault(weight, {}).setdefault(label, []).extend(values)
    result: dict[str, object] = {
        "mode": mode,
        "folds": folds,
        "held_out_crops": sum(len(v) for v in list(scores.values())[:1]),
        "dice": summarise(scores),
        "seconds": round(time.perf_counter() - start, 1),
        "reused_runs": [r for r in REUSED if r.startswith(mode) or r == "msd_pretrain"],
    }
    if fused:
        result["multispectral_tse_space"] = {
            "what": "MPRAGE + TSE fused (one model for both), consensus on the TSE grid vs "
            "both sides' labels, by multispectral.t2_weight",
            "dice_by_t2_weight": {f"{w:g}": summarise(d) for w, d in fused.items()},
            "seconds_per_subject": round(float(np.mean(fused_seconds)), 2),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="finetune: MSD epochs")
    parser.add_argument("--val-every", type=int, default=10, help="validation every N epochs")
    parser.add_argument("--f-maps", type=int, default=8)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--margin", type=float, default=10.0, help="crop_margin_mm")
    parser.add_argument("--patch", default="[32,16,32]", help="combined: datasets.patch_size")
    parser.add_argument("--msd-glob", default="hippocampus_0[0-4]*.nii.gz")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--no-multispectral",
        dest="multispectral",
        action="store_false",
        help="combined: skip the MPRAGE + TSE runs of the held-out subjects",
    )
    parser.add_argument(
        "--t2-weights",
        type=lambda text: [float(w) for w in text.split(",")],
        default=[1.0, 3.0, 1000.0],
        help="combined: multispectral.t2_weight values (1000: the T2 decides where it covers)",
    )
    parser.add_argument("--quick", action="store_true", help="2 folds x 2 epochs (a check)")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.quick:
        args.folds, args.epochs, args.val_every = 2, 2, 1
    if not ASHS.is_dir():
        print(f"{ASHS} is missing: nothing to run", file=sys.stderr)
        return 1
    modes = [m for m in args.modes.split(",") if m]
    load = os.getloadavg()
    path = RESULTS / ("ashs_cv_quick.json" if args.quick else "ashs_cv.json")
    RESULTS.mkdir(parents=True, exist_ok=True)
    aligned = registrations()
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="ashs_cv_") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        for mode in modes:
            results.append(run_mode(mode, args, out))
            write_report(path, args, load, results, aligned)  # each mode as soon as it is done
    print_table(results, aligned, load, path)
    return 0


def write_report(
    path: Path,
    args: argparse.Namespace,
    load: tuple[float, float, float],
    results: list[dict[str, object]],
    aligned: list[dict[str, float]],
) -> None:
    report = {
        "what": "leave-fold-out Dice per label of last-epoch models on held-out ASHS TSE crops",
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": [round(x, 2) for x in load],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
        "t2_to_t1_registration": aligned,
    }
    path.write_text(json.dumps(report, indent=1))


def print_table(
    results: list[dict[str, object]],
    aligned: list[dict[str, float]],
    load: tuple[float, float, float],
    path: Path,
) -> None:
    labels = list(results[0]["dice"]) if results else []
    print(f"{'mode':10s} " + " ".join(f"{n:>12s}" for n in labels) + f" {'seconds':>8s}")
    for r in results:
        dice = r["dice"]
        cells = " ".join(f"{dice[n]['mean']:.2f}+-{dice[n]['sd']:.2f}".rjust(12) for n in labels)
        print(f"{r['mode']:10s} {cells} {r['seconds']:8.0f}")
    for r in results:
        by_weight = r.get("multispectral_tse_space", {}).get("dice_by_t2_weight", {})  # type: ignore[attr-defined]
        for weight, dice in by_weight.items():
            cells = " ".join(
                f"{dice[n]['mean']:.2f}+-{dice[n]['sd']:.2f}".rjust(12) for n in labels
            )
            print(f"{'T1+T2 w' + weight:10s} {cells}")
    qualities = [a["quality"] for a in aligned]
    print(f"TSE -> MPRAGE registration quality {min(qualities):.3f} to {max(qualities):.3f}")
    print(f"load average before {load}, after {os.getloadavg()}; wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
