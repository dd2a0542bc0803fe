"""hsftrain.config.values: OmegaConf values as plain Python, dotted keys of nested mappings."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from hsftrain.config.values import leaves, plain, plain_dict


def test_plain_resolves_containers_and_leaves_the_rest() -> None:
    cfg = OmegaConf.create({"a": {"b": [1, "${c}"]}, "c": 2})
    assert plain(cfg.a) == {"b": [1, 2]} and type(plain(cfg.a)) is dict
    assert plain(cfg.a.b) == [1, 2] and type(plain(cfg.a.b)) is list
    mapping = {"x": 1}
    assert plain(mapping) is mapping and plain(3) == 3 and plain(None) is None


def test_plain_dict() -> None:
    assert plain_dict(OmegaConf.create({1: "a"})) == {"1": "a"}
    with pytest.raises(TypeError, match="mapping"):
        plain_dict([1, 2])


def test_leaves_with_collapsed_and_empty_mappings() -> None:
    tree = {"a": {"b": 1, "c": {"d": 2}}, "e": {}, "f": {"g": {"h": 3}}}
    assert list(leaves(tree)) == [("a.b", 1), ("a.c.d", 2), ("e", {}), ("f.g.h", 3)]
    assert list(leaves(tree, "", ("f.g",))) == [
        ("a.b", 1),
        ("a.c.d", 2),
        ("e", {}),
        ("f.g", {"h": 3}),
    ]
    assert list(leaves(tree["a"], "a")) == [("a.b", 1), ("a.c.d", 2)]
