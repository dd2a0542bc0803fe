"""Training patches and validation volumes from the prepared-data cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hsftrain.config.compose import ConfigError, compose
from hsftrain.data.cache import prepare
from hsftrain.data.datamodule import SegmentationDataModule, patch_size
from hsftrain.data.dataset import (
    PatchDataset,
    VolumeDataset,
    auto_patch_size,
    crop_pad,
    patch_start,
)
from hsftrain.data.discovery import discover


@pytest.fixture(scope="module")
def prepared(phantoms: Path, tmp_path_factory: pytest.TempPathFactory):
    cfg = compose("config", ["datasets=synth", f"datasets.main_path={phantoms}"])
    found = discover(cfg.datasets)
    return prepare(found, tmp_path_factory.mktemp("cache"), progress=False)


def test_auto_patch_size_is_the_median_rounded_up() -> None:
    assert auto_patch_size([(35, 50, 36), (36, 51, 30), (40, 49, 33)], 8) == (40, 56, 40)
    assert patch_size(None, [(300, 300, 300)], 16) == (128, 128, 128)
    assert patch_size([32, 32, 16], [(300, 300, 300)], 16) == (32, 32, 16)
    with pytest.raises(ConfigError, match="datasets.patch_size"):
        patch_size([32, 32], [], 8)


def test_crop_pad_and_patch_start() -> None:
    array = np.arange(24).reshape(2, 3, 4)
    out = crop_pad(array, [-1, 1, 2], [4, 2, 2], fill=-7)
    assert out.shape == (4, 2, 2)
    assert (out[0] == -7).all() and (out[3] == -7).all()
    assert out[1].tolist() == array[0, 1:3, 2:4].tolist()
    rng = np.random.default_rng(0)
    starts = {patch_start(10, 4, rng) for _ in range(200)}
    assert starts == set(range(7))
    assert {patch_start(3, 5, rng) for _ in range(200)} == {-2, -1, 0}
    assert patch_start(10, 4, rng, centre=9) == 6 and patch_start(10, 4, rng, centre=0) == 0


def test_patches_have_one_shape_and_foreground_oversampling_works(prepared) -> None:
    torch.manual_seed(0)
    always = PatchDataset(prepared, (8, 8, 8), foreground_ratio=1.0)
    never = PatchDataset(prepared, (8, 8, 8), foreground_ratio=0.0)
    fg_always = [float((always[i % len(prepared)]["label"] > 0).float().mean()) for i in range(40)]
    fg_never = [float((never[i % len(prepared)]["label"] > 0).float().mean()) for i in range(40)]
    assert np.mean(fg_always) > np.mean(fg_never)
    assert all(v > 0 for v in fg_always)
    item = always[0]
    assert item["image"].shape == (1, 8, 8, 8) and item["image"].dtype == torch.float32
    assert item["label"].shape == (8, 8, 8) and item["label"].dtype == torch.uint8
    assert item["spacing"].shape == (3,)


def test_a_patch_larger_than_the_volume_is_padded_with_its_minimum(prepared) -> None:
    big = PatchDataset(prepared[:1], (24, 24, 24), foreground_ratio=0.0)[0]
    image, label = prepared[0].arrays()
    assert big["image"].shape == (1, 24, 24, 24)
    assert int((big["label"] > 0).sum()) == int((label > 0).sum())  # nothing cropped
    assert float(big["image"].min()) == pytest.approx(prepared[0].minimum)


def test_validation_volumes_are_whole_and_padded_to_the_multiple(prepared) -> None:
    item = VolumeDataset(prepared, multiple=8)[0]
    _, label = prepared[0].arrays()
    assert all(s % 8 == 0 for s in item["image"].shape[1:])
    assert int((item["label"] > 0).sum()) == int((label > 0).sum())


@pytest.mark.parametrize("backend", ["torch", "torchio"])
def test_datamodule_batches_have_one_shape_with_either_backend(prepared, backend) -> None:
    cfg = compose("config", [f"augmentation.backend={backend}", "augmentation.device=cpu"])
    data = SegmentationDataModule(
        prepared[:6], prepared[6:], (16, 16, 16), cfg.datasets, cfg.augmentation, seed=0
    )
    shapes = {tuple(b["image"].shape) for b in data.train_dataloader()}
    assert shapes == {(2, 1, 16, 16, 16)}
    val = next(iter(data.val_dataloader()))
    assert val["image"].shape[2:] == (16, 24, 16)


def test_datamodule_refuses_unknown_backend_and_missing_cuda(prepared) -> None:
    cfg = compose("config", [])
    bad = {**cfg.augmentation, "backend": "kornia"}
    with pytest.raises(ConfigError, match="augmentation.backend"):
        SegmentationDataModule(prepared, prepared, (8, 8, 8), cfg.datasets, bad)
    if not torch.cuda.is_available():
        cuda = {**cfg.augmentation, "device": "cuda"}
        with pytest.raises(ConfigError, match="augmentation.device=cuda"):
            SegmentationDataModule(prepared, prepared, (8, 8, 8), cfg.datasets, cuda)
