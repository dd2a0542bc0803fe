"""``hsftrain segment``: models that break their contract are refused at load, images with
nothing to segment fail with a row in volumes.csv, doubtful results are flagged."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.inference.conftest import MSD_NAMES, export_tiny, write_crop

from .conftest import assert_no_temporaries, assert_user_error, cli, files_below


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("model") / "tiny.onnx", 3, MSD_NAMES)


def _graph_model(path: Path, build: str, channels: int = 3, inputs: int = 1) -> Path:
    """A small ONNX model: ``nan`` outputs log(-1) everywhere, ``background`` makes the
    background win everywhere; ``inputs`` > 1 adds unused inputs."""
    import onnx
    from onnx import TensorProto, helper

    dims = ["b", 1, "x", "y", "z"]
    nodes = []
    names = []
    for c in range(channels):
        value = {"nan": -1.0, "background": 10.0 if c == 0 else 0.0}[build]
        k = helper.make_tensor(f"k{c}", TensorProto.FLOAT, [], [value])
        nodes.append(helper.make_node("Constant", [], [f"c{c}"], value=k))
        nodes.append(helper.make_node("Sub", ["input", "input"], [f"z{c}"]))  # zeros
        nodes.append(helper.make_node("Add", [f"z{c}", f"c{c}"], [f"a{c}"]))
        if build == "nan":
            nodes.append(helper.make_node("Log", [f"a{c}"], [f"y{c}"]))
        else:
            nodes.append(helper.make_node("Identity", [f"a{c}"], [f"y{c}"]))
        names.append(f"y{c}")
    nodes.append(helper.make_node("Concat", names, ["output"], axis=1))
    graph_inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)]
    graph_inputs += [
        helper.make_tensor_value_info(f"extra{i}", TensorProto.FLOAT, dims)
        for i in range(inputs - 1)
    ]
    graph = helper.make_graph(
        nodes,
        build,
        graph_inputs,
        [
            helper.make_tensor_value_info(
                "output", TensorProto.FLOAT, ["b", channels, "x", "y", "z"]
            )
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return path


def _segment(data: Path, *models: Path | str, extra: tuple[str, ...] = ()) -> list[str]:
    listed = ",".join(str(m) for m in models)
    return [
        "segment",
        f"files.path={data}",
        "files.pattern=**/*.nii.gz",
        f"model_paths=[{listed}]",
        "qc=false",
        *extra,
    ]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, data: np.ndarray, zooms: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([zooms, zooms, zooms, 1.0])
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return path


@pytest.mark.parametrize(
    "data, words",
    [
        (np.zeros((20, 28, 20)), ["is constant"]),
        (np.pad(np.ones((2, 2, 2)), ((0, 18), (0, 26), (0, 18))), ["nearly constant"]),
    ],
    ids=["constant", "nearly-constant"],
)
def test_image_with_nothing_to_segment_fails_with_a_row(
    data: np.ndarray, words: list[str], model: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    write_crop(root / "good.nii.gz")
    bad = _write(root / "blank.nii.gz", data)
    result = cli(*_segment(root, model))
    assert result.code == 1 and isinstance(result.exception, SystemExit)
    assert all("\n" not in e for e in result.errors) and "Traceback" not in result.output
    assert "1 of 2 MRI(s) failed" in result.errors[-1] and str(bad) in result.errors[-1]
    rows = {r["subject"]: r for r in _rows(root / "volumes.csv")}
    assert rows["blank"]["volume_mm3"] == "" and rows["blank"]["flag"].startswith("failed: ")
    for word in words:
        assert word in rows["blank"]["flag"]
    assert rows["good"]["flag"] == ""
    assert not list(root.glob("blank_hippocampus_*"))
    assert (root / "good_hippocampus_seg.nii.gz").is_file()


def test_model_naming_more_classes_than_it_outputs(tmp_path: Path) -> None:
    wrong = export_tiny(tmp_path / "m" / "wrong.onnx", 3, [*MSD_NAMES, "extra1", "extra2"])
    root = tmp_path / "data"
    write_crop(root / "a.nii.gz")
    result = cli(*_segment(root, wrong))
    assert_user_error(result, "wrong.onnx", "names 5 classes", "outputs 3", "wrong names")
    assert files_below(root) == {"a.nii.gz"}


def test_model_with_nan_output_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    bad = _graph_model(tmp_path / "m" / "nan.onnx", "nan")
    root = tmp_path / "data"
    write_crop(root / "a.nii.gz")
    result = cli(*_segment(root, bad))
    assert_user_error(result, "nan.onnx", "NaN/Inf")
    assert files_below(root) == {"a.nii.gz"}


def test_model_with_two_inputs_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    bad = _graph_model(tmp_path / "m" / "two.onnx", "background", inputs=2)
    root = tmp_path / "data"
    write_crop(root / "a.nii.gz")
    assert_user_error(cli(*_segment(root, bad)), "two.onnx", "2 inputs")
    assert files_below(root) == {"a.nii.gz"}


def test_file_that_is_not_a_model(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    root = tmp_path / "data"
    write_crop(root / "a.nii.gz")
    assert_user_error(cli(*_segment(root, junk)), "junk.onnx", "onnxruntime")
    assert files_below(root) == {"a.nii.gz"}


def test_model_with_a_wrong_hash(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_crop(root / "a.nii.gz")
    cache = tmp_path / "cache"
    spec = f"segmentation.models={{m: {{url: '{model.as_uri()}', xxh3_64: '0000000000000000'}}}}"
    result = cli(
        "segment",
        f"files.path={root}",
        "files.pattern=*.nii.gz",
        "segmentation=custom",
        spec,
        f"segmentation.models_path={cache}",
    )
    assert_user_error(result, "xxh3_64 mismatch")
    assert files_below(cache) == set() and files_below(root) == {"a.nii.gz"}


def test_empty_segmentation_is_flagged(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    background = _graph_model(tmp_path / "m" / "bg.onnx", "background")
    root = tmp_path / "data"
    write_crop(root / "a.nii.gz")
    result = cli(*_segment(root, background))
    assert result.code == 0, result.output[-2000:]
    rows = _rows(root / "volumes.csv")
    assert rows and all("no hippocampus found in the crop crop" in r["flag"] for r in rows)
    assert any("flagged" in w for w in result.warnings)


def test_nan_voxels_in_the_input_are_flagged(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    path = write_crop(root / "a.nii.gz")
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[0, 0, :3] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    assert cli(*_segment(root, model)).code == 0
    assert all("3 NaN/Inf voxels read as 0" in r["flag"] for r in _rows(root / "volumes.csv"))


def test_something_that_is_not_a_head_is_flagged(model: Path, tmp_path: Path) -> None:
    """A 192 mm cube of noise: treated as a whole head, the registration finds no head."""
    root = tmp_path / "data"
    noise = np.random.default_rng(0).normal(100, 10, (64, 64, 64))
    _write(root / "noise.nii.gz", noise, zooms=3.0)
    result = cli(*_segment(root, model))
    assert result.code == 0, result.output[-2000:]
    rows = _rows(root / "volumes.csv")
    assert {r["side"] for r in rows} == {"left", "right"}
    assert all("registration quality" in r["flag"] for r in rows)
    assert "flagged" in result.output


def test_ca_mode_that_cannot_apply_is_a_warning(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_crop(root / "a.nii.gz")
    result = cli(*_segment(root, model, extra=("segmentation.ca_mode=1/23",)))
    assert result.code == 0, result.output[-2000:]
    assert any("ca_mode='1/23' cannot apply" in w for w in result.warnings)


@pytest.mark.parametrize(
    "key, make, words",
    [
        ("files.output_dir", "file", ["files.output_dir", "is a file"]),
        ("files.volumes_csv", "folder", ["files.volumes_csv", "is a folder"]),
        ("files.path", "absent", ["files.path", "does not exist"]),
    ],
)
def test_bad_paths(key: str, make: str, words: list[str], model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_crop(root / "a.nii.gz")
    target = tmp_path / "target"
    if make == "file":
        target.write_text("x")
    elif make == "folder":
        target.mkdir()
    args = _segment(root, model, extra=(f"{key}={target}",))
    if key == "files.path":
        args[1] = f"files.path={target}"
    assert_user_error(cli(*args), *words)
    assert files_below(root) == {"a.nii.gz"}
    assert_no_temporaries(root, tmp_path)
