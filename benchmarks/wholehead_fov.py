"""Whole-head crops sized to the model's training field of view: before / after, as a user
runs it (``hsftrain segment`` then ``hsftrain evaluate``, subprocesses).

Data: the FreeSurfer-processed niivue head (``../shared/data/wholehead_niivue/norm.mgz``,
256^3, 1 mm), scored against FreeSurfer's automatic hippocampus labels (aseg 17 + 53; the
aseg file copied as ``norm_lbl.mgz``). "before" is ``roiloc.model_fov=false``: the template
box (``box_mm`` + ``margin_mm``, the crops every model got before), "after" the defaults.
Also counted: predicted voxels inside FreeSurfer's amygdala (aseg 18 + 54).

``--poses`` adds ten heads: norm.mgz and the packaged MNI template (HippUnfold's automatic
hippocampus of the template, ``../shared/data/hippunfold_mni_subfields``), each as it is
and resampled four times (pitch +10 and -10 degrees, roll + yaw 6 degrees, scaled 1.08 and
shifted 4 mm): the same real anatomy in other head positions. ``--heldout`` segments the 8
held-out MSD crops (``assets/sample/msd_heldout``, crop input: unchanged by the crop size).
``--set KEY=VALUE`` adds overrides to the "after" runs (e.g. another margin).

    python benchmarks/wholehead_fov.py [--poses] [--heldout] [--set roiloc.model_fov_margin_mm=[1,1,1]]

Writes ``benchmarks/results/wholehead_field_of_view.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
HEAD = SHARED / "wholehead_niivue"
HIPPUNFOLD = SHARED / "hippunfold_mni_subfields"
MNI = ROOT / "src/hsftrain/assets/mni/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
HELDOUT = ROOT / "src/hsftrain/assets/sample/msd_heldout"
RESULT = ROOT / "benchmarks/results/wholehead_field_of_view.json"
PRESETS = ("msd", "demo")


def hsftrain(*args: str) -> None:
    cli = Path(sys.executable).with_name("hsftrain")
    subprocess.run([str(cli), *args], check=True, stdout=subprocess.DEVNULL)


def segment_and_evaluate(
    folder: Path, pattern: str, ref: str, ref_map: str, out: Path, preset: str, extra: list[str]
) -> list[dict]:
    """``hsftrain segment`` + ``hsftrain evaluate``; the per-subject rows of metrics.csv."""
    hsftrain(
        "segment",
        f"files.path={folder}",
        f"files.pattern={pattern}",
        f"files.output_dir={out}",
        f"segmentation={preset}",
        "segmentation.ca_mode=whole",
        "qc=false",
        *extra,
    )
    hsftrain("evaluate", f"pred={out}", f"ref={ref}", f"ref_map={ref_map}")
    with open(out / "evaluation" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _rotation(axis: int, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    i, j = [k for k in range(3) if k != axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return m


POSES = {
    "p0": (np.eye(3), (0.0, 0.0, 0.0)),
    "pitchup": (_rotation(0, 10), (0.0, 0.0, 0.0)),
    "pitchdown": (_rotation(0, -10), (0.0, 0.0, 0.0)),
    "rollyaw": (_rotation(1, 6) @ _rotation(2, 6), (0.0, 0.0, 0.0)),
    "scaled": (1.08 * np.eye(3), (4.0, -4.0, 3.0)),
}


def write_poses(folder: Path) -> None:
    """The ten heads of ``--poses``: ``<head>_<pose>_img.nii.gz`` and ``_lbl.nii.gz``
    (1 hippocampus, 2 amygdala where known), resampled about the image centre (1 mm
    grids: image trilinear, labels nearest)."""
    from scipy import ndimage

    fs = nib.as_closest_canonical(nib.load(str(HEAD / "norm.mgz")))
    aseg = np.asarray(
        nib.as_closest_canonical(nib.load(str(HEAD / "aparc.a2009s+aseg.mgz"))).dataobj
    )
    fs_lbl = np.zeros(aseg.shape, np.uint8)
    fs_lbl[np.isin(aseg, [17, 53])] = 1
    fs_lbl[np.isin(aseg, [18, 54])] = 2
    mni = nib.load(str(MNI))
    name = "tpl-MNI152NLin2009aSym_hemi-{}_space-T1w_desc-subfields_dseg.nii.gz"
    hemis = [np.asarray(nib.load(str(HIPPUNFOLD / name.format(h))).dataobj) for h in "LR"]
    mni_lbl = (sum(((h > 0) & (h < 8)) for h in hemis) > 0).astype(np.uint8)  # 8: a cyst
    heads = {
        "fs": (np.asarray(fs.dataobj, np.float32), fs_lbl, fs.affine),
        "mni": (np.asarray(mni.dataobj, np.float32), mni_lbl, mni.affine),
    }
    for head, (image, label, affine) in heads.items():
        centre = (np.asarray(image.shape) - 1) / 2
        for pose, (matrix, shift) in POSES.items():
            inverse = np.linalg.inv(matrix)
            offset = centre - inverse @ (centre + np.asarray(shift))
            moved = [image, label]
            if pose != "p0":
                moved = [
                    ndimage.affine_transform(a, inverse, offset, order=o)
                    for a, o in ((image, 1), (label, 0))
                ]
            stem = folder / f"{head}_{pose}"
            nib.save(nib.Nifti1Image(moved[0].astype(np.float32), affine), f"{stem}_img.nii.gz")
            nib.save(nib.Nifti1Image(moved[1].astype(np.uint8), affine), f"{stem}_lbl.nii.gz")


def amygdala_voxels(pred: Path, label: Path, values: list[int]) -> int:
    """Predicted voxels inside the reference amygdala (``values``)."""
    seg = np.asarray(nib.load(str(pred)).dataobj) > 0
    return int((seg & np.isin(np.asarray(nib.load(str(label)).dataobj), values)).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--poses", action="store_true", help="the ten-head check too")
    parser.add_argument("--heldout", action="store_true", help="the 8 held-out MSD crops too")
    parser.add_argument("--set", action="append", default=[], help="override for 'after'")
    args = parser.parse_args()
    runs = {"before": ["roiloc.model_fov=false"], "after": list(args.set)}
    out: dict = {"overrides_after": args.set, "norm_mgz": {}, "poses": {}, "heldout": {}}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        head = tmp / "head"
        head.mkdir()
        shutil.copy(HEAD / "norm.mgz", head / "norm.mgz")
        shutil.copy(HEAD / "aparc.a2009s+aseg.mgz", head / "norm_lbl.mgz")
        for preset in PRESETS:
            for run, extra in runs.items():
                res = tmp / f"{preset}_{run}"
                rows = segment_and_evaluate(
                    head,
                    "norm.mgz",
                    str(head / "norm_lbl.mgz"),
                    "{17: 1, 53: 1}",
                    res,
                    preset,
                    extra,
                )
                amygdala = amygdala_voxels(
                    res / "norm_hippocampus_seg.nii.gz", head / "norm_lbl.mgz", [18, 54]
                )
                row = rows[0]
                out["norm_mgz"][f"{preset}_{run}"] = {
                    "dice": round(float(row["dice"]), 4),
                    "hd95_mm": round(float(row["hd95_mm"]), 2),
                    "pred_volume_mm3": float(row["pred_volume_mm3"]),
                    "ref_volume_mm3": float(row["ref_volume_mm3"]),
                    "voxels_in_amygdala": amygdala,
                }
                print(preset, run, out["norm_mgz"][f"{preset}_{run}"])
        if args.poses:
            poses = tmp / "poses"
            poses.mkdir()
            write_poses(poses)
            for preset in PRESETS:
                for run, extra in runs.items():
                    res = tmp / f"poses_{preset}_{run}"
                    ref = str(poses / "*_lbl.nii.gz")
                    rows = segment_and_evaluate(
                        poses, "*_img.nii.gz", ref, "{1: 1}", res, preset, extra
                    )
                    dice = {r["subject"]: round(float(r["dice"]), 4) for r in rows}
                    hd95 = {r["subject"]: round(float(r["hd95_mm"]), 2) for r in rows}
                    amygdala = {
                        s: amygdala_voxels(
                            res / f"{s}_img_hippocampus_seg.nii.gz", poses / f"{s}_lbl.nii.gz", [2]
                        )
                        for s in sorted(dice)
                        if s.startswith("fs")
                    }
                    values = np.asarray(list(dice.values()))
                    out["poses"][f"{preset}_{run}"] = {
                        "n": len(values),
                        "dice_mean": round(float(values.mean()), 4),
                        "dice_sd": round(float(values.std(ddof=1)), 4),
                        "dice_min": round(float(values.min()), 4),
                        "hd95_mm_median": round(float(np.median(list(hd95.values()))), 2),
                        "dice": dice,
                        "voxels_in_amygdala_fs": amygdala,
                    }
                    print(
                        preset,
                        run,
                        "poses",
                        {
                            k: out["poses"][f"{preset}_{run}"][k]
                            for k in ("n", "dice_mean", "dice_sd", "dice_min")
                        },
                    )
        if args.heldout:
            ref = str(HELDOUT / "*_lbl.nii.gz")
            for run, extra in runs.items():
                res = tmp / f"heldout_{run}"
                hsftrain(
                    "segment",
                    f"files.path={HELDOUT}",
                    "files.pattern=*_img.nii.gz",
                    f"files.output_dir={res}",
                    "segmentation=msd",
                    "qc=false",
                    *extra,
                )
                hsftrain(
                    "evaluate", f"pred={res}", f"ref={ref}", "labels={1: anterior, 2: posterior}"
                )
                with open(res / "evaluation" / "summary.csv", newline="") as f:
                    summary = [r for r in csv.DictReader(f) if r["metric"] in ("dice", "hd95_mm")]
                out["heldout"][run] = {
                    f"{r['label_name']}_{r['metric']}": round(float(r["mean"]), 4) for r in summary
                }
                print("heldout msd", run, out["heldout"][run])
    RESULT.write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
