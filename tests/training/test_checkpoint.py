"""hsftrain.training.checkpoint: what a checkpoint that cannot be used says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hsftrain.training.checkpoint import read_checkpoint


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "half.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"half\.ckpt: cannot be read as a PyTorch checkpoint"):
        read_checkpoint(bad)


def test_hsf_train_checkpoint_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "arunet.ckpt"
    state = {"_model.final_conv.weight": torch.zeros(6, 64, 1, 1, 1)}
    torch.save({"state_dict": state, "hyper_parameters": {}}, path)
    with pytest.raises(ValueError, match=r"arunet\.ckpt: an hsf_train \(HSF\) checkpoint"):
        read_checkpoint(path)


def test_other_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"net.w": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match=r"other\.ckpt: not an hsftrain checkpoint"):
        read_checkpoint(path)
