"""Fusion of predictions (vote / mean) and uncertainty, on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from hsftrain.inference.fusion import (
    Fusion,
    FusionError,
    keep_largest_component,
    normalized_entropy,
)


def onehot(label_map: list[int], c: int = 3) -> np.ndarray:
    """(C, X, 1, 1) probabilities that put 0.8 on the given labels."""
    lm = np.asarray(label_map)
    probs = np.full((c, lm.size), 0.2 / (c - 1), dtype=np.float32)
    probs[lm, np.arange(lm.size)] = 0.8
    return probs.reshape(c, lm.size, 1, 1)


def fuse_probs(probs: list[np.ndarray], method: str = "vote") -> np.ndarray:
    """The fused label map of ``probs``, one :meth:`Fusion.add` each."""
    fusion = Fusion(method)
    for p in probs:
        fusion.add(p)
    return fusion.label_map()


def test_fusion_vote_is_a_plurality_of_argmaxes() -> None:
    preds = [onehot([0, 1, 2, 2]), onehot([0, 1, 1, 2]), onehot([1, 2, 1, 0])]
    np.testing.assert_array_equal(fuse_probs(preds, "vote").ravel(), [0, 1, 1, 2])
    # a three-way tie with equal mean probabilities goes to the smallest label
    three_way = [onehot([2]), onehot([1]), onehot([0])]
    assert fuse_probs(three_way, "vote").item() == 0


def test_vote_ties_are_broken_by_mean_probability() -> None:
    a = np.array([0.1, 0.9, 0.0], dtype=np.float32).reshape(3, 1, 1, 1)  # votes 1 (0.9)
    b = np.array([0.0, 0.4, 0.6], dtype=np.float32).reshape(3, 1, 1, 1)  # votes 2 (0.6)
    assert fuse_probs([a, b], "vote").item() == 1  # 1 vote each; class 1 has mean 0.65


def test_mean_fusion_differs_from_vote() -> None:
    # two confident votes for 1 (0.55), one very confident vote for 2 (1.0)
    p1 = np.array([0.0, 0.55, 0.45], dtype=np.float32).reshape(3, 1, 1, 1)
    p2 = np.array([0.0, 0.0, 1.0], dtype=np.float32).reshape(3, 1, 1, 1)
    assert fuse_probs([p1, p1, p2], "vote").item() == 1
    assert fuse_probs([p1, p1, p2], "mean").item() == 2  # means: 0.37 vs 0.63


def test_uncertainty_of_identical_predictions_is_zero() -> None:
    fusion = Fusion("mean")
    p = onehot([0, 1, 2, 1])
    for _ in range(4):
        fusion.add(p)
    np.testing.assert_array_equal(fusion.uncertainty(), 0.0)


def test_uncertainty_of_an_even_split_is_one() -> None:
    fusion = Fusion()
    for label in (0, 1, 2):
        fusion.add(onehot([label]))
    np.testing.assert_allclose(fusion.uncertainty(), 1.0, atol=1e-6)
    np.testing.assert_allclose(fusion.vote_fractions().ravel(), [1 / 3] * 3, atol=1e-6)


def test_normalized_entropy() -> None:
    dist = np.array([[1.0, 0.5], [0.0, 0.5]])
    np.testing.assert_allclose(normalized_entropy(dist), [0.0, 1.0], atol=1e-7)


def test_fusion_errors() -> None:
    with pytest.raises(FusionError, match="segmentation.fusion"):
        Fusion("median")
    with pytest.raises(FusionError, match="no prediction"):
        Fusion().label_map()
    fusion = Fusion()
    fusion.add(onehot([0, 1]))
    with pytest.raises(FusionError, match="shape"):
        fusion.add(onehot([0, 1, 2]))


def test_keep_largest_component() -> None:
    seg = np.zeros((12, 12, 12), np.uint8)
    seg[1:6, 1:6, 1:6] = 1  # 125 voxels, two labels touching
    seg[1:6, 1:6, 6:8] = 2
    seg[9:11, 9:11, 9:11] = 2  # an island of 8 voxels
    seg[7, 7, 8] = 1  # touches the big component diagonally only (26-connectivity)
    seg[6, 6, 7] = 1
    kept = keep_largest_component(seg)
    assert kept.dtype == seg.dtype
    assert not kept[9:11, 9:11, 9:11].any()
    np.testing.assert_array_equal(kept[:9, :9, :9], seg[:9, :9, :9])
    one = np.zeros_like(seg)
    one[2:4, 2:4, 2:4] = 3
    np.testing.assert_array_equal(keep_largest_component(one), one)
    np.testing.assert_array_equal(keep_largest_component(np.zeros_like(seg)), 0)


def test_first_argmax_is_numpys_argmax_ties_included() -> None:
    from hsftrain.inference.fusion import first_argmax

    rng = np.random.default_rng(2)
    probs = rng.integers(0, 3, size=(6, 9, 7, 5)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(first_argmax(probs), probs.argmax(axis=0))
    probs = rng.random((8, 10, 12, 4)).astype(np.float32)
    np.testing.assert_array_equal(first_argmax(probs), probs.argmax(axis=0))
