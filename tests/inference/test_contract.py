"""The input/model contract: the contrast index of a crop, the metadata a model records, and
the checks ``hsftrain segment`` runs on each crop and head."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hsftrain.data.contrast import contrast_index, contrast_name
from hsftrain.data.subjects import DatasetSpec
from hsftrain.export.contract import measure_contract
from hsftrain.inference.contract import Checks, Contract, asymmetry_flag
from hsftrain.inference.image import load_volume

from .conftest import MSD, MSD_NAMES, SHARED

ASHS = SHARED / "ashs_atlas_test" / "images"
#: tissue intensities (CSF, grey matter, white matter) of each contrast
TISSUES = {"T1": (20.0, 60.0, 100.0), "T2": (120.0, 70.0, 40.0)}


def anatomy(contrast: str, shape=(36, 44, 36), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A hippocampus-crop-like image of ``contrast`` and its labels: white matter, thin
    fluid sheets (2 voxels), a grey-matter hippocampus (two classes: front and back) with a
    grey ribbon; noise. Returns ``(image, label_map)``."""
    rng = np.random.default_rng(seed)
    csf, grey, white = TISSUES[contrast]
    idx = np.indices(shape).astype(np.float64)
    image = np.full(shape, white)
    centre = (np.asarray(shape) - 1) / 2
    radius = np.array([5.0, 12.0, 5.0])
    inside = (((idx - centre[:, None, None, None]) / radius[:, None, None, None]) ** 2).sum(0)
    image[inside < 1.6] = grey
    image[(idx[0] % 9 < 2) & (inside > 2.2)] = csf  # sulci / horn: thin fluid sheets
    labels = np.where(inside < 1, np.where(idx[1] < centre[1], 1, 2), 0).astype(np.uint8)
    return (image + rng.normal(0, 3, shape)).astype(np.float32), labels


def test_contrast_index_sign_follows_the_contrast() -> None:
    t1, _ = anatomy("T1")
    t2, _ = anatomy("T2")
    low, high = contrast_index(t1, (1, 1, 1)), contrast_index(t2, (1, 1, 1))
    assert low is not None and high is not None
    assert low < -0.3 and high > 0.3, (low, high)
    assert (contrast_name(low), contrast_name(high)) == ("T1", "T2")


def test_contrast_index_ignores_scale_offset_and_a_flat_background() -> None:
    t1, _ = anatomy("T1")
    t2, _ = anatomy("T2")
    base = contrast_index(t2, (1, 1, 1))
    assert contrast_index(3.5 * t2 + 1000, (1, 1, 1)) == pytest.approx(base, abs=1e-3)
    assert contrast_index(t2, (0.5, 0.5, 0.5)) == pytest.approx(base, abs=1e-3)
    # a skull-stripped image: zeros around the tissue are not dark tissue
    for image, sign in ((t2, 1), (t1, -1)):
        padded = np.pad(image, 12)
        index = contrast_index(padded, (1, 1, 1))
        assert index is not None and sign * index > 0.3, index


def test_contrast_index_unknown_for_tiny_or_constant_crops() -> None:
    assert contrast_index(np.ones((20, 20, 20)), (1, 1, 1)) is None
    assert contrast_index(np.random.default_rng(0).normal(size=(6, 6, 6)), (1, 1, 1)) is None
    assert contrast_index(np.zeros((4, 4)), (1, 1, 1)) is None


@pytest.mark.skipif(not (MSD.is_dir() and ASHS.is_dir()), reason="shared MRI missing")
def test_contrast_index_on_real_t1_and_t2_crops() -> None:
    """Real MSD T1 crops read T1; ASHS TSE (T2) crops around the hippocampus read T2."""
    for path in sorted((MSD / "imagesTr").glob("*.nii.gz"))[:4]:
        volume = load_volume(path)
        index = contrast_index(volume.array, volume.zooms)
        assert index is not None and index < -0.1, (path.name, index)
    for sid in ("sub01", "sub07"):
        tse = load_volume(ASHS / f"{sid}_tse.nii.gz")
        labels = load_volume(ASHS / f"{sid}_seg_L.nii.gz").array > 0
        centre = np.argwhere(labels).mean(0)
        half = np.array([18.0, 25.0, 18.0]) / np.asarray(tse.zooms)  # a 36 x 50 x 36 mm box
        lo = np.maximum(np.round(centre - half), 0).astype(int)
        hi = np.round(centre + half).astype(int)
        crop = tse.array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        index = contrast_index(crop, tse.zooms)
        assert index is not None and index > 0.3, (sid, index)


def write_pairs(folder: Path, contrast: str, n: int = 4) -> list[tuple[DatasetSpec, Path, Path]]:
    spec = DatasetSpec(
        "tiny", 0, folder, "1/2/3", {"t": ("*_img.nii.gz", "{id}_lbl.nii.gz")}, None, None
    )
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(n):
        image, labels = anatomy(contrast, seed=i)
        if i % 2:  # volumes that differ from crop to crop
            labels[:, :, : 10 + i] = 0
        affine = np.diag([1.0, 1.0, 1.0, 1.0])
        paths = folder / f"s{i}_img.nii.gz", folder / f"s{i}_lbl.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), str(paths[0]))
        nib.save(nib.Nifti1Image(labels, affine), str(paths[1]))
        pairs.append((spec, *paths))
    return pairs


def test_measure_contract_records_contrast_fingerprint_and_volumes(tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "t1", "T1")
    meta = measure_contract(pairs, MSD_NAMES)
    assert meta["contrasts"] == ["T1"]
    lo, median, hi = meta["intensity_fingerprint"]["contrast_index"]
    assert lo <= median <= hi < 0
    assert meta["intensity_fingerprint"]["images"] == 4
    volumes = [
        {v: int((labels == v).sum()) for v in (1, 2)}
        for labels in (np.asarray(nib.load(str(p[2])).dataobj) for p in pairs)
    ]
    ranges = meta["volume_range_mm3"]
    assert set(ranges) == {"anterior", "posterior", "hippocampus"}
    wholes = [v[1] + v[2] for v in volumes]
    assert ranges["hippocampus"][0] == pytest.approx(np.percentile(wholes, 1), abs=0.1)
    assert ranges["hippocampus"][1] == pytest.approx(np.percentile(wholes, 99), abs=0.1)
    both = measure_contract(pairs + write_pairs(tmp_path / "t2", "T2"), MSD_NAMES)
    assert both["contrasts"] == ["T1"]  # one dataset: its median decides
    t2_spec = DatasetSpec("t2", 1, tmp_path / "t2", "1/2/3", pairs[0][0].patterns, None, None)
    mixed = pairs + [(t2_spec, i, lab) for _, i, lab in write_pairs(tmp_path / "t2", "T2")]
    assert measure_contract(mixed, MSD_NAMES)["contrasts"] == ["T1", "T2"]


T1_MODEL = {
    "contrasts": ["T1"],
    "intensity_fingerprint": {"contrast_index": [-0.9, -0.6, -0.2], "images": 10},
    "volume_range_mm3": {"anterior": [1000, 2400], "hippocampus": [2400, 4000]},
}


def test_contract_from_metadata_unions_models_and_ignores_junk() -> None:
    other = {
        "contrasts": ["t2"],
        "intensity_fingerprint": {"contrast_index": [0.5, 0.9, 1.2]},
        "volume_range_mm3": {"anterior": [500, 3000], "junk": "x"},
    }
    contract = Contract.from_metadata([T1_MODEL, other, {"volume_range_mm3": 3}])
    assert contract.contrasts == ("T1", "T2")
    assert contract.contrast_range == (-0.9, 1.2)
    assert contract.volume_range == {"anterior": (500, 3000), "hippocampus": (2400, 4000)}
    assert Contract.from_metadata([{}]) == Contract()


def test_contrast_flag_only_towards_the_other_contrast() -> None:
    contract = Contract.from_metadata([T1_MODEL])
    checks = Checks()
    t1, _ = anatomy("T1")
    t2, _ = anatomy("T2")
    assert contract.contrast_flag(t1, (1, 1, 1), checks, "crop") == ""
    flag = contract.contrast_flag(t2, (1, 1, 1), checks, "left crop")
    assert flag.startswith("left crop: contrast index +") and "T2-weighted" in flag, flag
    assert "trained on T1" in flag and "checks.contrast_tolerance" in flag
    # more T1-like than the training crops is not a contrast problem
    darker = Contract(("T1",), (0.5, 0.8))
    assert darker.contrast_flag(t1, (1, 1, 1), checks, "crop") == ""
    assert Contract(("T2",), (0.5, 0.8)).contrast_flag(t1, (1, 1, 1), checks, "crop")
    # unknown or mixed contrasts, or the check off: nothing
    off = Checks(contrast_tolerance=None)
    assert contract.contrast_flag(t2, (1, 1, 1), off, "crop") == ""
    assert Contract(("T1", "T2"), (-0.9, 1.2)).contrast_flag(t2, (1, 1, 1), checks, "c") == ""
    assert Contract().contrast_flag(t2, (1, 1, 1), checks, "crop") == ""


def test_crop_flags_volumes_empty_class_and_uncertainty() -> None:
    contract = Contract.from_metadata([T1_MODEL])
    checks = Checks()
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[:12, :12, :10] = 1  # 1440 mm3 anterior
    labels[:12, :12, 10:20] = 2  # 1440 mm3 posterior
    names = MSD_NAMES
    assert contract.crop_flags(labels, None, names, 1.0, checks, "crop") == []
    # a class with no voxel
    only = np.where(labels == 2, 0, labels).astype(np.uint8)
    flags = contract.crop_flags(only, None, names, 1.0, checks, "crop")
    assert flags == ["crop: no posterior voxel (checks.empty_class)"]
    assert contract.crop_flags(only, None, names, 1.0, Checks(empty_class=False), "c") == []
    # far outside the training volumes (voxels 8 mm3: 23040 mm3 > 3 x 4000)
    flags = contract.crop_flags(labels, None, names, 8.0, checks, "left crop")
    assert len(flags) == 2 and all("checks.volume_factor 3" in f for f in flags), flags
    assert flags[0].startswith("left crop: anterior 11520 mm3, outside 333-7200 mm3")
    assert contract.crop_flags(labels, None, names, 8.0, Checks(volume_factor=None), "c") == []
    # uncertain
    uncertainty = np.full(labels.shape, 0.5, dtype=np.float32)
    flags = contract.crop_flags(labels, uncertainty, names, 1.0, checks, "crop")
    assert flags == [
        "crop: mean uncertainty 0.50 inside the hippocampus > checks.max_uncertainty 0.3"
    ]
    # nothing found: the pipeline's own flag says so
    empty = np.zeros_like(labels)
    assert contract.crop_flags(empty, uncertainty, names, 1.0, checks, "crop") == []


def test_asymmetry_flag() -> None:
    checks = Checks()
    assert asymmetry_flag({"left": 3000, "right": 2700}, checks) == ""
    flag = asymmetry_flag({"left": 10117, "right": 229}, checks)
    assert flag.startswith("left and right hippocampus 10117 / 229 mm3 differ by 191%"), flag
    assert asymmetry_flag({"crop": 100}, checks) == ""
    assert asymmetry_flag({"left": 0, "right": 0}, checks) == ""
    assert asymmetry_flag({"left": 10117, "right": 229}, Checks(max_asymmetry=None)) == ""
