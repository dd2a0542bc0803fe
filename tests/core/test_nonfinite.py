"""Finding NaN/Inf in tensors and refusing state dicts that hold them."""

from __future__ import annotations

import pytest
import torch

from hsftrain.core.errors import NonFiniteError, UserError
from hsftrain.core.nonfinite import check_finite_state, nonfinite_tensors


def test_nonfinite_tensors_names_the_bad_ones() -> None:
    state = {
        "a": torch.ones(3),
        "b": torch.tensor([1.0, float("nan")]),
        "c": torch.tensor([float("-inf")]),
        "steps": torch.tensor([3]),  # integers are skipped
        "empty": torch.zeros(0),
    }
    assert nonfinite_tensors(state) == ["b", "c"]
    assert nonfinite_tensors([("a", torch.ones(2))]) == []
    check_finite_state({"a": torch.ones(2)}, "ok.ckpt")
    with pytest.raises(NonFiniteError, match=r"m.ckpt: .*\(b, c\)") as err:
        check_finite_state(state, "m.ckpt")
    assert isinstance(err.value, UserError) and err.value.exit_code == 1
