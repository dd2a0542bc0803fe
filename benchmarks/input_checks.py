"""The input checks of ``hsftrain segment`` on real data: false flags on healthy T1 crops,
flags on T2 images given to the T1 models, and the bundled models' metadata.

    python benchmarks/input_checks.py metadata   # contrasts / fingerprint / volumes of the
                                                 # bundled models (segmentation/{msd,demo}.yaml)
    python benchmarks/input_checks.py flags      # counts flags per set, writes JSON

``flags`` runs the command (bundled models, their presets, default ``checks``) on:

* ``demo_msd152``: ``segmentation=demo`` on the 152 MSD crops it never saw (the
  benchmark of docs/results.md); ``msd_msd40``: ``segmentation=msd`` on 40 MSD crops;
* ``{demo,msd}_heldout8``: the 8 bundled held-out crops (``assets/sample/msd_heldout``);
* ``{demo,msd}_ashs_tse``: the 12 ASHS coronal TSE (T2) slabs as they are (whole head);
* ``msd_ashs_t1t2``: the 12 ASHS MPRAGE (4 mm) + TSE pairs, multispectral;

and prints, per set, how many subjects were flagged and for which check. Writes
``benchmarks/results/input_checks/epyc-2core/input_checks.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MSD = SHARED / "msd_hippocampus"
ASHS = SHARED / "ashs_atlas_test" / "images"
SAMPLE = ROOT / "src" / "hsftrain" / "assets" / "sample"
NAMES = ["background", "anterior", "posterior"]
#: flag text -> check
REASONS = {
    "contrast index": "contrast",
    "checks.volume_factor": "volume",
    "checks.empty_class": "empty_class",
    "checks.max_uncertainty": "uncertainty",
    "checks.max_asymmetry": "asymmetry",
    "no hippocampus found": "no_hippocampus",
}


def metadata() -> dict[str, dict]:
    """The metadata of the bundled models, measured on their training crops."""
    from hsftrain.data.discovery import find_pairs
    from hsftrain.data.subjects import DatasetSpec
    from hsftrain.export.contract import measure_contract

    names = {1: "anterior", 2: "posterior"}
    sets = {
        "msd_hippocampus.onnx (segmentation=msd)": DatasetSpec(
            "msd", 0, MSD / "imagesTr", "1/2/3",
            {"t1": ("hippocampus_*.nii.gz", "../labelsTr/{id}.nii.gz")}, {1: 1, 2: 2}, names,
        ),
        "msd_small.onnx (segmentation=demo)": DatasetSpec(
            "sample", 0, SAMPLE / "msd_hippocampus", "1/2/3",
            {"t1": ("*_img.nii.gz", "{id}_lbl.nii.gz")}, {1: 1, 2: 2}, names,
        ),
    }  # fmt: skip
    out = {}
    for model, spec in sets.items():
        pairs = [(spec, image, label) for _, image, label in find_pairs(spec)]
        out[model] = measure_contract(pairs, NAMES)
        print(f"{model}: {len(pairs)} crops\n  {json.dumps(out[model])}")
    return out


def link(files: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f)
    return folder


def run(folder: Path, pattern: str, preset: str, out: Path, *extra: str) -> dict:
    """``hsftrain segment`` on ``folder``; flagged subjects counted per check."""
    from hsftrain.config.compose import compose
    from hsftrain.inference.api import segment

    overrides = [
        f"files.path={folder}",
        f"files.pattern={pattern}",
        f"files.output_dir={out}",
        f"segmentation={preset}",
        "hardware=cpu",
        "qc=false",
        *extra,
    ]
    segment(compose("segment", overrides))
    flags: dict[str, set[str]] = {}
    with (out / "volumes.csv").open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for part in filter(None, (p.strip() for p in row["flag"].split(";"))):
            check = next((c for text, c in REASONS.items() if text in part), "other")
            flags.setdefault(check, set()).add(row["subject"])
    subjects = {r["subject"] for r in rows}
    flagged = set().union(*flags.values()) if flags else set()
    return {
        "subjects": len(subjects),
        "flagged": len(flagged),
        "by_check": {k: len(v) for k, v in sorted(flags.items())},
    }


def flags() -> dict[str, dict]:
    sample_ids = {p.name.replace("_img", "") for p in SAMPLE.rglob("*_img.nii.gz")}
    msd = sorted((MSD / "imagesTr").glob("*.nii.gz"))
    unseen = [p for p in msd if p.name not in sample_ids]
    every = [msd[round(i * (len(msd) - 1) / 39)] for i in range(40)]
    tse = sorted(ASHS.glob("*_tse.nii.gz"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pairs = root / "ashs_t1t2"
        pairs.mkdir()
        for t2 in tse:
            sid = t2.name.split("_")[0]
            (pairs / f"{sid}_T1w.nii.gz").symlink_to(ASHS / f"{sid}_mprage.nii.gz")
            (pairs / f"{sid}_T2w.nii.gz").symlink_to(t2)
        sets = {
            "demo_msd152": (link(unseen, root / "unseen"), "*.nii.gz", "demo", ()),
            "msd_msd40": (link(every, root / "msd40"), "*.nii.gz", "msd", ()),
            "demo_heldout8": (SAMPLE / "msd_heldout", "*_img.nii.gz", "demo", ()),
            "msd_heldout8": (SAMPLE / "msd_heldout", "*_img.nii.gz", "msd", ()),
            "demo_ashs_tse": (link(tse, root / "tse"), "*.nii.gz", "demo", ()),
            "msd_ashs_tse": (root / "tse", "*.nii.gz", "msd", ()),
            "msd_ashs_t1t2": (
                pairs, "*_T1w.nii.gz", "msd", ("files.t2_pattern={id}_T2w.nii.gz",)
            ),
        }  # fmt: skip
        for name, (folder, pattern, preset, extra) in sets.items():
            results[name] = run(folder, pattern, preset, root / f"out_{name}", *extra)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["metadata", "flags"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    if args.what == "metadata":
        metadata()
        return
    from machine import write_result

    path = write_result("input_checks", "", {"sets": flags()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
