"""The command line itself: user errors are one line, internal errors keep their traceback
(with what to try for out-of-memory), Ctrl+C outside training exits 130."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hsftrain.evaluation import api as evaluation_api

from .conftest import assert_user_error, cli


def _pairs(tmp_path: Path) -> list[str]:
    import nibabel as nib
    import numpy as np

    for side in ("pred", "ref"):
        (tmp_path / side).mkdir()
        data = np.zeros((6, 6, 6), np.uint8)
        data[1:4, 1:4, 1:4] = 1
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / side / "s1.nii.gz"))
    return ["evaluate", f"pred={tmp_path / 'pred'}", f"ref={tmp_path / 'ref'}", "plots=false"]


def _raise(err: BaseException):  # type: ignore[no-untyped-def]
    def boom(*args: object, **kwargs: object) -> None:
        raise err

    return boom


def test_internal_error_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluation_api, "evaluate_pair", _raise(RuntimeError("boom")))
    result = cli(*_pairs(tmp_path))
    assert result.code == 1
    assert isinstance(result.exception, RuntimeError)  # not turned into one line
    assert any("internal error (RuntimeError: boom)" in e for e in result.errors)


def test_out_of_memory_says_what_to_try(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(evaluation_api, "evaluate_pair", _raise(oom))
    result = cli(*_pairs(tmp_path))
    assert isinstance(result.exception, torch.OutOfMemoryError)
    assert any("out of memory" in e and "batch_size" in e for e in result.errors)


def test_library_value_error_is_not_passed_off_as_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    def broken(*args: object, **kwargs: object) -> None:
        np.zeros(3) + np.zeros(4)  # a bug: numpy raises ValueError

    monkeypatch.setattr(evaluation_api, "evaluate_pair", broken)
    result = cli(*_pairs(tmp_path))
    assert isinstance(result.exception, ValueError)
    assert any("internal error" in e for e in result.errors)


def test_ctrl_c_outside_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluation_api, "evaluate_pair", _raise(KeyboardInterrupt()))
    assert_user_error(cli(*_pairs(tmp_path)), "interrupted", code=130)


def test_unknown_config_key_is_one_line(tmp_path: Path) -> None:
    result = cli("train", "models.nonsense=1", f"datasets.output_path={tmp_path / 'runs'}")
    assert_user_error(result, "nonsense")
    assert not (tmp_path / "runs").exists()
