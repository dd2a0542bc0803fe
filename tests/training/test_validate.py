"""Up-front checks of a train / finetune configuration: every shipped option passes, bad
values name the key, the network's depth fits the data."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsftrain.config.compose import ConfigError, compose, group_options
from hsftrain.training.depth import check_depth, deepest_voxels, max_levels
from hsftrain.training.validate import validate_training


@pytest.mark.parametrize("group", ["datasets", "models", "lightning", "logger", "compression"])
def test_every_shipped_option_is_valid(group: str, tmp_path: Path) -> None:
    for option in group_options()[group]:
        overrides = [f"{group}={option}", f"datasets.output_path={tmp_path}"]
        if group == "datasets" and option == "folder":
            overrides.append("datasets.path=x")
        validate_training(compose("config", overrides), finetune=True)


def test_depth_arithmetic() -> None:
    assert deepest_voxels((16, 20, 16), 5) == 2 and deepest_voxels((16, 20, 16), 6) == 1
    assert max_levels((16, 20, 16)) == 5 and max_levels((36, 50, 36)) == 6
    check_depth(5, [(16, 20, 16)], None)
    check_depth(7, [(8, 8, 8)], (64, 64, 65))  # the patch decides
    with pytest.raises(ConfigError, match="at most 5 levels"):
        check_depth(6, [(40, 40, 40), (16, 20, 16)], None)
