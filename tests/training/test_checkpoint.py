"""hsftrain.training.checkpoint: what a checkpoint that cannot be used says."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from hsftrain.config.compose import compose
from hsftrain.models import HSFResidualUNet3D
from hsftrain.training.checkpoint import load_network, read_checkpoint


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "half.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"half\.ckpt: cannot be read as a PyTorch checkpoint"):
        read_checkpoint(bad)


def test_hsf_train_checkpoint_of_another_network_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unet.ckpt"
    state = {"_model.final_conv.weight": torch.zeros(6, 64, 1, 1, 1)}
    torch.save({"state_dict": state, "hyper_parameters": {}}, path)
    with pytest.raises(ValueError, match=r"unet\.ckpt: an hsf_train \(HSF\) checkpoint, but not"):
        read_checkpoint(path)


def _hsf_checkpoint(path: Path, f_maps: int = 4, out_channels: int = 6) -> Path:
    """A small hsf_train-style checkpoint: ``_model.`` weights, no hyper_parameters."""
    torch.manual_seed(0)
    net = HSFResidualUNet3D(f_maps=f_maps, num_levels=2, out_channels=out_channels)
    state = {f"_model.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, "pytorch-lightning_version": "2.1.0"}, path)
    return path


def test_hsf_train_checkpoint_reads_as_hsf_arunet(tmp_path: Path) -> None:
    path = _hsf_checkpoint(tmp_path / "arunet.ckpt")
    state, info = read_checkpoint(path)
    assert info.name == "HSFResidualUNet3D" and info.ca_mode == "1/2/3"
    assert info.class_names == ["background", "DG", "CA1", "CA2", "CA3", "SUB"]
    # shapes from the weights, the rest from the published settings (models=hsf_arunet)
    assert info.hparams == {
        "in_channels": 1,
        "out_channels": 6,
        "f_maps": 4,
        "num_levels": 2,
        "layer_order": "cgs",
        "conv_kernel_size": 3,
        "use_attention": True,
    }
    assert not any(k.startswith("_model.") for k in state)
    net, _ = load_network(path)
    assert isinstance(net, HSFResidualUNet3D) and not net.training
    torch.testing.assert_close(net.state_dict(), state)


def test_hsf_train_hparams_from_the_models_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _hsf_checkpoint(tmp_path / "arunet.ckpt", out_channels=4)
    models = compose("config", ["models=hsf_arunet", "models.hparams.layer_order=cls"]).models
    with caplog.at_level(logging.WARNING):
        _, info = read_checkpoint(path, models)
    assert info.hparams["layer_order"] == "cls"  # not fixed by the weights: from the config
    assert info.hparams["f_maps"] == 4  # the weights win over the config's 64 ...
    assert "the weights have f_maps=4; models.hparams.f_maps=64 is ignored" in caplog.text
    assert info.class_names == ["background", "label_1", "label_2", "label_3"]
    # hsftrain's own models config (the default) does not apply to hsf_train's network
    _, info = read_checkpoint(path, compose("config").models)
    assert info.hparams["layer_order"] == "cgs" and "skip" not in info.hparams


def test_other_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"net.w": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match=r"other\.ckpt: not an hsftrain checkpoint"):
        read_checkpoint(path)
