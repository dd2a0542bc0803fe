"""``hsftrain segment`` end to end (typer CliRunner) and the pieces of the API."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import xxhash
from typer.testing import CliRunner

from hsftrain.cli.app import app
from hsftrain.config.compose import compose
from hsftrain.data.labels import SUBFIELDS, merge_probs
from hsftrain.inference import api
from hsftrain.inference.api import Segmenter, find_mris, segment, settings_from_config
from hsftrain.inference.engines import OnnxEngine
from hsftrain.inference.segmenter import SegmenterOptions
from hsftrain.inference.writer import read_volumes

from .conftest import ORIENTATIONS, write_crop

runner = CliRunner()
PATTERN = "files.pattern=**/*T1w.nii.gz"


def run_cli(*overrides: str) -> object:
    return runner.invoke(app, ["segment", *overrides])


def base(root: Path, models: list[Path], *extra: str) -> list[str]:
    paths = ",".join(str(m) for m in models)
    return [
        f"files.path={root}",
        PATTERN,
        "segmentation=custom",
        f"model_paths=[{paths}]",
        "hardware=cpu",
        *extra,
    ]


def digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): xxhash.xxh3_64_hexdigest(p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class VoxelwiseEngine:
    """A fake engine that commutes with flips: per-voxel softmax of (x, -x, 0)."""

    labels_names = ["background", "anterior", "posterior"]
    path = Path("voxelwise.onnx")

    def __init__(self, pads_with_minimum: bool = True) -> None:
        self.pads_with_minimum = pads_with_minimum
        self.inputs: list[np.ndarray] = []

    def prepare(self, shape: tuple[int, ...]) -> None:
        pass  # nothing compiled per shape

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.inputs.append(images)
        x = images[:, 0]
        logits = np.stack([x, -x, np.zeros_like(x)], axis=1)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def test_find_mris(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for name in ("a_T1w.nii.gz", "b_T1w.nii.gz", "c_T2w.nii.gz", "bad_T1w.nii.gz"):
        write_crop(root / "s" / name)
    (root / "s" / "a_T1w_hippocampus_seg.nii.gz").write_bytes(b"x")  # our own output
    (root / "s" / "a_T1w_hippocampus_seg_crop_left.nii.gz").write_bytes(b"x")
    (root / "s" / ".a_T1w_hippocampus_seg.nii.gz.x.hsftrain-tmp.nii.gz").write_bytes(b"x")
    found = find_mris(root, "**/*.nii.gz", ["bad_*"])
    assert [p.name for p in found] == ["a_T1w.nii.gz", "b_T1w.nii.gz", "c_T2w.nii.gz"]
    assert [p.name for p in find_mris(root, "**/*T1w.nii.gz", ["s/b_*"])] == [
        "a_T1w.nii.gz",
        "bad_T1w.nii.gz",
    ]
    assert find_mris(root / "s" / "a_T1w.nii.gz", None) == [root / "s" / "a_T1w.nii.gz"]
    with pytest.raises(
        FileNotFoundError, match=rf"files.pattern='\*\*/\*FLAIR.nii.gz' under files.path={root}"
    ):
        find_mris(root, "**/*FLAIR.nii.gz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_mris(tmp_path / "nowhere", "*")
    with pytest.raises(ValueError, match="relative to files.path"):
        find_mris(root, str(root / "*.nii.gz"))


def test_cli_segments_crops_end_to_end(crops: Path, tiny_models: list[Path]) -> None:
    before = digest(crops)
    result = run_cli(*base(crops, tiny_models, "augmentation.test_time_num_aug=2"))
    assert result.exit_code == 0, result.output
    assert "hsftrain segment" in result.output  # the summary table
    for i in (1, 2):
        mri = crops / f"sub-0{i}" / "anat" / f"sub-0{i}_T1w.nii.gz"
        stem = mri.parent / f"sub-0{i}_T1w_hippocampus"
        seg = nib.load(f"{stem}_seg.nii.gz")
        image = nib.load(str(mri))
        assert seg.shape == image.shape and np.allclose(seg.affine, image.affine)
        assert seg.get_data_dtype() == np.uint8
        unc = np.asarray(nib.load(f"{stem}_uncertainty.nii.gz").dataobj)
        assert unc.shape == image.shape and 0 <= unc.min() and unc.max() <= 1
        assert Path(f"{stem}_qc.png").is_file()
        assert not Path(f"{stem}_seg_crop.nii.gz").exists()  # a crop input: native is the crop
    rows = read_volumes(crops / "volumes.csv")
    assert [(r["subject"], r["name"]) for r in rows] == [
        ("sub-01/anat/sub-01_T1w", "anterior"),
        ("sub-01/anat/sub-01_T1w", "posterior"),
        ("sub-02/anat/sub-02_T1w", "anterior"),
        ("sub-02/anat/sub-02_T1w", "posterior"),
    ]
    seg = np.asarray(nib.load(str(crops / "sub-01/anat/sub-01_T1w_hippocampus_seg.nii.gz")).dataobj)
    for row in rows[:2]:
        assert int(row["voxel_count"]) == int((seg == int(row["label"])).sum())
        assert float(row["volume_mm3"]) == pytest.approx(int(row["voxel_count"]) * 1.0)
    after = digest(crops)
    assert {k: v for k, v in after.items() if k in before} == before  # inputs untouched


def test_skip_overwrite_and_resume_keep_volumes_exact(crops: Path, tiny_model: Path) -> None:
    args = base(crops, [tiny_model], "segmentation.tta=false")
    assert run_cli(*args).exit_code == 0
    table = crops / "volumes.csv"
    first = table.read_text()
    seg1 = crops / "sub-01/anat/sub-01_T1w_hippocampus_seg.nii.gz"
    seg2 = crops / "sub-02/anat/sub-02_T1w_hippocampus_seg.nii.gz"
    stamp = seg1.stat().st_mtime_ns

    again = run_cli(*args)  # everything done: skipped, same table, no model needed
    assert again.exit_code == 0 and "skipped" in again.output
    assert seg1.stat().st_mtime_ns == stamp and table.read_text() == first

    seg2.unlink()  # as if the run had been killed before subject 2 finished
    resumed = run_cli(*args)
    assert resumed.exit_code == 0
    assert seg2.is_file() and seg1.stat().st_mtime_ns == stamp
    assert table.read_text() == first  # no row lost, none duplicated

    overwritten = run_cli(*args, "files.overwrite=true")
    assert overwritten.exit_code == 0 and seg1.stat().st_mtime_ns != stamp
    assert table.read_text() == first


def test_killed_run_leaves_no_partial_output_and_resumes(
    crops: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = compose("segment", base(crops, [tiny_model], "segmentation.tta=false", "qc=false"))
    from hsftrain.inference import results

    real_save = results.save_nifti

    def killed_on_subject_2(array: np.ndarray, affine: np.ndarray, path: Path, *codes) -> Path:
        if Path(path).name == "sub-02_T1w_hippocampus_seg.nii.gz":
            raise KeyboardInterrupt  # not caught per subject: stops the run like a kill
        return real_save(array, affine, path, *codes)

    monkeypatch.setattr(results, "save_nifti", killed_on_subject_2)
    with pytest.raises(KeyboardInterrupt):
        segment(cfg)
    folder = crops / "sub-02" / "anat"
    assert not (folder / "sub-02_T1w_hippocampus_seg.nii.gz").exists()
    assert not list(crops.rglob("*hsftrain-tmp*"))
    monkeypatch.setattr(results, "save_nifti", real_save)
    outputs = segment(cfg)
    assert [p.name for p in outputs] == [
        "sub-01_T1w_hippocampus_seg.nii.gz",
        "sub-02_T1w_hippocampus_seg.nii.gz",
    ]
    subjects = [r["subject"] for r in read_volumes(crops / "volumes.csv")]
    assert subjects == ["sub-01/anat/sub-01_T1w"] * 2 + ["sub-02/anat/sub-02_T1w"] * 2


def test_bad_inputs_are_reported_and_the_others_segmented(crops: Path, tiny_model: Path) -> None:
    corrupt = crops / "sub-03" / "anat" / "sub-03_T1w.nii.gz"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(gzip.compress(b"\x00" * 64))
    four_d = crops / "sub-04" / "anat" / "sub-04_T1w.nii.gz"
    four_d.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), str(four_d))
    cfg = compose("segment", base(crops, [tiny_model], "segmentation.tta=false"))
    with pytest.raises(api.SegmentError) as err:
        segment(cfg)
    assert "2 of 4" in str(err.value)
    assert str(corrupt) in str(err.value) and str(four_d) in str(err.value)
    assert "3D" in str(err.value)
    assert (crops / "sub-02/anat/sub-02_T1w_hippocampus_seg.nii.gz").is_file()
    rows = read_volumes(crops / "volumes.csv")
    assert len([r for r in rows if r["volume_mm3"]]) == 4
    failed = {r["subject"]: r["flag"] for r in rows if not r["volume_mm3"]}
    assert sorted(failed) == ["sub-03/anat/sub-03_T1w", "sub-04/anat/sub-04_T1w"]
    four = failed["sub-04/anat/sub-04_T1w"]
    assert four.startswith("failed: ") and "3D" in four
    result = run_cli(*base(crops, [tiny_model], "segmentation.tta=false"))
    assert result.exit_code == 1  # failures give a non-zero exit status


def test_empty_glob_is_a_clear_cli_error(crops: Path, tiny_model: Path) -> None:
    with pytest.raises(FileNotFoundError, match="files.pattern='\\*\\*/\\*FLAIR.nii.gz'"):
        segment(compose("segment", [*base(crops, [tiny_model]), "files.pattern=**/*FLAIR.nii.gz"]))
    assert run_cli(*base(crops, [tiny_model]), "files.pattern=**/*FLAIR.nii.gz").exit_code == 1


def test_output_dir_mirrors_subfolders(crops: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = compose(
        "segment", base(crops, [tiny_model], "segmentation.tta=false", f"files.output_dir={out}")
    )
    paths = segment(cfg)
    assert paths[0] == out / "sub-01" / "anat" / "sub-01_T1w_hippocampus_seg.nii.gz"
    assert (out / "volumes.csv").is_file()
    assert not list(crops.rglob("*_hippocampus_*"))


def test_identical_predictions_have_zero_uncertainty(crops: Path, tiny_model: Path) -> None:
    for fusion in ("vote", "mean"):
        cfg = compose(
            "segment",
            base(
                crops,
                [tiny_model, tiny_model],
                "segmentation.tta=false",
                f"segmentation.fusion={fusion}",
                "files.overwrite=true",
            ),
        )
        segment(cfg)
        unc = nib.load(str(crops / "sub-01/anat/sub-01_T1w_hippocampus_uncertainty.nii.gz"))
        np.testing.assert_array_equal(np.asarray(unc.dataobj), 0.0)


def test_flip_tta_through_the_segmenter_is_exact() -> None:
    image = np.random.default_rng(0).normal(size=(13, 18, 11)).astype(np.float32)
    rng = np.random.default_rng(1)
    plain = Segmenter([VoxelwiseEngine()]).segment_crop(image, (1, 1, 1), rng)  # type: ignore[list-item]
    flips = {
        "flip": {"p": 1.0, "axes": ["LR", "AP", "IS"]},
        "affine": {"p": 0},
        "elastic": {"p": 0},
    }
    tta = Segmenter([VoxelwiseEngine()], SegmenterOptions(flips, num_aug=3, batch_size=2))  # type: ignore[list-item]
    result = tta.segment_crop(image, (1, 1, 1), rng)
    assert plain.uncertainty is None and result.n_predictions == 4
    np.testing.assert_array_equal(result.label_map, plain.label_map)
    np.testing.assert_array_equal(result.uncertainty, 0.0)


def test_each_model_gets_the_padding_it_was_trained_with() -> None:
    """hsftrain models: padded with the normalised minimum; others (HSF's): with zeros."""
    image = np.random.default_rng(0).normal(size=(13, 16, 16)).astype(np.float32)
    ours, hsf = VoxelwiseEngine(True), VoxelwiseEngine(False)
    Segmenter([ours, hsf]).segment_crop(image, (1, 1, 1), np.random.default_rng(0))  # type: ignore[list-item]
    (a,), (b,) = ours.inputs[0][:, 0], hsf.inputs[0][:, 0]
    assert a.shape == b.shape == (16, 16, 16)
    normalized = (image - image.mean()) / image.std()
    np.testing.assert_allclose(a[1:14], normalized, rtol=1e-5)
    np.testing.assert_array_equal(a[1:14], b[1:14])
    assert np.allclose(a[[0, 14, 15]], normalized.min()) and not b[[0, 14, 15]].any()


@pytest.mark.parametrize("ca_mode", ["", "1/2/3", "1/23", "123", "whole"])
def test_ca_mode_merges_subfields(subfield_model: Path, ca_mode: str) -> None:
    engine = OnnxEngine(subfield_model)
    assert engine.labels_names == list(SUBFIELDS)
    image = np.random.default_rng(0).normal(size=(16, 24, 16)).astype(np.float32)
    seg = Segmenter([engine], SegmenterOptions(ca_mode=ca_mode)).segment_crop(
        image, (1, 1, 1), np.random.default_rng(0)
    )
    x = (image - image.mean()) / image.std()
    probs = engine.predict(x[None, None])[0]
    expected = merge_probs(probs, list(SUBFIELDS), ca_mode).argmax(axis=0)
    np.testing.assert_array_equal(seg.label_map, expected)
    values = set(np.unique(seg.label_map).tolist())
    names = Segmenter([engine], SegmenterOptions(ca_mode=ca_mode)).names
    if ca_mode == "1/23":
        assert 4 not in values and names[3] == "CA2/3" and names[4] == ""
    if ca_mode == "123":
        assert values.isdisjoint({3, 4}) and names[2] == "CA"
    if ca_mode == "whole":
        assert values <= {0, 1} and names[1] == "hippocampus"


def test_settings_validation_names_the_key(
    crops: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = base(crops, [tiny_model])
    settings = settings_from_config(compose("segment", good))
    assert settings.num_aug == 4  # custom preset: augmentation.test_time_num_aug
    assert settings.volumes_csv == crops / "volumes.csv"
    bad = {
        "segmentation.ca_mode=12": "segmentation.ca_mode",
        "segmentation.fusion=median": "segmentation.fusion",
        "roiloc.mode=sometimes": "roiloc.mode",
        "hardware.engine=deepsparse": "hardware.engine",
        "segmentation.test_time_num_aug=-1": "test_time_num_aug",
        "segmentation.tta=maybe": "segmentation.tta",
        "files.pattern=null": "files.pattern",
    }
    for override, key in bad.items():
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            settings_from_config(compose("segment", [*good, override]))
    with pytest.raises(ValueError, match=r"files\.path"):
        settings_from_config(compose("segment", ["segmentation=single_fast"]))
    # tta=flip: one deterministic mirror along the training flip axes, nothing random
    flip = settings_from_config(compose("segment", [*good, "segmentation.tta=flip"]))
    spec = flip.augmentation
    assert flip.num_aug == 1 and [name for name, t in spec.transforms.items() if t.on] == ["flip"]
    assert spec["flip"].p == 1.0 and spec["flip"]["axes"] == ("LR",)
    with caplog.at_level(logging.WARNING):  # two views of one model: a vote would tie
        settings_from_config(
            compose("segment", [*good, "segmentation.tta=flip", "segmentation.fusion=vote"])
        )
        assert "fusion=mean" in caplog.text
        caplog.clear()
        settings_from_config(
            compose("segment", [*good, "segmentation.tta=flip", "segmentation.fusion=mean"])
        )
        assert "fusion=mean" not in caplog.text
    assert (
        settings_from_config(compose("segment", [*good, "segmentation.ca_mode=123"])).ca_mode
        == "123"
    )


@pytest.mark.slow
@pytest.mark.skipif(not ORIENTATIONS.is_dir(), reason="shared orientation images missing")
def test_whole_head_outputs_come_back_on_each_input_grid(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = compose(
        "segment",
        [
            f"files.path={ORIENTATIONS}",
            "files.pattern=*.nii.gz",
            f"files.output_dir={out}",
            "segmentation=custom",
            f"model_paths=[{tiny_model}]",
            "segmentation.tta=false",
            "qc=false",
        ],
    )
    before = digest(ORIENTATIONS)
    paths = segment(cfg)
    assert digest(ORIENTATIONS) == before
    canonical = {}
    for path in paths:
        name = path.name.split("_")[0]
        image = nib.load(str(ORIENTATIONS / f"{name}.nii.gz"))
        seg = nib.load(str(path))
        assert seg.shape == image.shape, name
        np.testing.assert_array_equal(seg.affine, image.affine)
        assert nib.aff2axcodes(seg.affine) == tuple(name)
        assert (np.asarray(seg.dataobj) > 0).sum() > 0
        canonical[name] = np.asarray(nib.as_closest_canonical(seg).dataobj)
        for side in ("left", "right"):
            crop = nib.load(str(out / f"{name}_hippocampus_seg_crop_{side}.nii.gz"))
            assert nib.aff2axcodes(crop.affine) == ("R", "A", "S")
            assert all(
                s <= d
                for s, d in zip(crop.shape, nib.as_closest_canonical(image).shape, strict=True)
            )
    # the four files hold one image: the same segmentation, whatever the storage order
    for name, seg in canonical.items():
        np.testing.assert_array_equal(seg, canonical["RAS"], err_msg=name)
    rows = read_volumes(out / "volumes.csv")
    assert {(r["subject"], r["side"]) for r in rows} == {
        (n, s) for n in canonical for s in ("left", "right")
    }


def test_preset_file_with_verified_paths(
    crops: Path, tiny_models: list[Path], tmp_path: Path
) -> None:
    """``segmentation=<file.yaml>`` (e.g. written by an ensemble run): paths + xxh3_64."""
    import yaml

    models = {
        f"m{i}.onnx": {"path": str(m), "xxh3_64": xxhash.xxh3_64_hexdigest(m.read_bytes())}
        for i, m in enumerate(tiny_models)
    }
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        yaml.safe_dump(
            {"description": "t", "ca_mode": "", "models_path": None, "models": models, "tta": False}
        )
    )
    cfg = compose("segment", [f"files.path={crops}", PATTERN, f"segmentation={preset}", "qc=false"])
    assert len(segment(cfg)) == 2
    models["m0.onnx"]["xxh3_64"] = "0" * 16
    preset.write_text(yaml.safe_dump({"models": models, "tta": False}))
    cfg = compose(
        "segment",
        [f"files.path={crops}", PATTERN, f"segmentation={preset}", "files.overwrite=true"],
    )
    with pytest.raises(ValueError, match=r"segmentation\.models\.m0\.onnx.*xxh3_64"):
        segment(cfg)


def test_elastic_inverse_is_shared_by_the_ensemble(monkeypatch: pytest.MonkeyPatch) -> None:
    from hsftrain.inference import tta

    calls = []
    original = tta.invert_displacement
    monkeypatch.setattr(tta, "invert_displacement", lambda d: calls.append(1) or original(d))
    elastic = {
        "flip": {"p": 0},
        "affine": {"p": 0},
        "elastic": {"p": 1.0, "num_control_points": 4, "max_displacement": 2},
    }
    engines = [VoxelwiseEngine() for _ in range(3)]
    image = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    result = Segmenter(engines, SegmenterOptions(elastic, num_aug=2)).segment_crop(  # type: ignore[arg-type]
        image, (1, 1, 1), np.random.default_rng(0)
    )
    assert result.n_predictions == 9 and len(calls) == 2  # one per elastic view, not per model


def test_largest_component_setting(crops: Path, tiny_model: Path) -> None:
    on = settings_from_config(compose("segment", base(crops, [tiny_model])))
    off = settings_from_config(
        compose("segment", base(crops, [tiny_model], "segmentation.largest_component=false"))
    )
    assert on.largest_component and not off.largest_component
    engines = [VoxelwiseEngine()]
    assert Segmenter.from_settings(engines, on).largest_component  # type: ignore[arg-type]
    assert not Segmenter.from_settings(engines, off).largest_component  # type: ignore[arg-type]


def test_tta_volumes_do_not_depend_on_file_name_or_orientation(
    tiny_model: Path, tmp_path: Path
) -> None:
    """One image, two names and storage orders, identical volumes."""
    ras = write_crop(tmp_path / "in" / "sub-01_T1w.nii.gz", seed=3)
    image = nib.load(str(ras))
    flipped = np.asarray(image.dataobj)[::-1, :, ::-1].transpose(1, 0, 2)  # LPI-like, permuted
    affine = image.affine @ np.array(
        [[0, -1, 0, 19], [1, 0, 0, 0], [0, 0, -1, 19], [0, 0, 0, 1]], dtype=float
    )
    other = tmp_path / "in" / "renamed_other_scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(flipped), affine), str(other))
    assert nib.aff2axcodes(affine) != ("R", "A", "S")
    cfg = compose(
        "segment",
        [
            f"files.path={tmp_path / 'in'}",
            "files.pattern=*.nii.gz",
            f"model_paths=[{tiny_model}]",
            "segmentation.tta=true",
            "segmentation.test_time_num_aug=3",
            "augmentation.affine.p=1",
            "qc=false",
        ],
    )
    segment(cfg)
    rows = read_volumes(tmp_path / "in" / "volumes.csv")
    volumes = {}
    for row in rows:
        volumes.setdefault(row["subject"], []).append(row["voxel_count"])
    assert volumes["sub-01_T1w"] == volumes["renamed_other_scan"]
    assert sum(int(v) for v in volumes["sub-01_T1w"]) > 0


def test_a_flipped_view_is_padded_like_the_plain_one() -> None:
    """Each view is augmented before padding: with an odd padding (13 -> 16: 1 voxel
    before, 2 after) the mirrored crop gets its padding on the same sides as the plain
    one, not mirrored with it (which shifted the anatomy by a voxel on the network's grid)."""
    image = np.random.default_rng(0).normal(size=(13, 16, 16)).astype(np.float32)
    engine = VoxelwiseEngine(True)
    flip = {"flip": {"p": 1.0, "axes": ["LR"]}, "affine": {"p": 0}, "elastic": {"p": 0}}
    segmenter = Segmenter([engine], SegmenterOptions(flip, num_aug=1, batch_size=2))  # type: ignore[list-item]
    segmenter.segment_crop(image, (1, 1, 1), np.random.default_rng(0))
    plain, mirrored = engine.inputs[0][:, 0]
    minimum = plain.min()
    for view in (plain, mirrored):
        assert (view[0] == minimum).all() and (view[14:] == minimum).all()
    np.testing.assert_array_equal(mirrored[1:14], plain[1:14][::-1])
