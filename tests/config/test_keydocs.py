"""Key descriptions come from the packaged YAML comments."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsftrain.config.keydocs import key_docs, yaml_comments

COMMANDS = ["config", "export", "segment", "evaluate"]


def test_comments_are_read_inline_above_and_below(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(
        "# file header, not a key's description\n"
        "a: 1          # inline\n"
        "b:            # a mapping\n"
        "  c: 'x # y'  # quoted hash kept\n"
        "  d: null     # first line\n"
        "              # second line\n"
        "# above e\n"
        "e: 2\n"
        "f: {p: 0.5, q: [1]}  # flow mapping\n"
    )
    docs = yaml_comments(path)
    assert docs["a"] == "inline"
    assert docs["b"] == "a mapping"
    assert docs["b.c"] == "quoted hash kept"
    assert docs["b.d"] == "first line second line"
    assert docs["e"] == "above e"
    assert docs["f.p"] == docs["f.q"] == "flow mapping"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_key_of_every_command_has_a_description(command: str) -> None:
    docs = key_docs(command)
    assert docs
    missing = [d.key for d in docs if not d.description]
    assert not missing, f"add a `# description` to these keys' YAML lines: {missing}"


def test_defaults_are_shown() -> None:
    docs = {d.key: d for d in key_docs("export")}
    assert docs["calibration.num_images"].default == "16"
    assert docs["quantize"].default == "null"
    segment = {d.key: d for d in key_docs("segment")}
    assert segment["segmentation.models"].default == "{...}"  # one row for the mapping
