"""Fusing predictions (test-time augmentations x ensemble members) and their uncertainty.

* ``vote``: plurality vote of the predictions' label maps (each prediction's arg-max).
  Ties are broken by the higher mean probability, then by the smaller label value.
* ``mean``: arg-max of the mean probability.

The uncertainty is the normalised Shannon entropy of the vote fractions (how often each
class was predicted), in [0, 1]: 0 where every prediction agrees, 1 where the votes are
spread evenly over all classes. It measures disagreement, whatever the fusion method, so
identical predictions give 0 everywhere.
"""

from __future__ import annotations

import numpy as np

from hsftrain.core.errors import UserError

FUSIONS: tuple[str, ...] = ("vote", "mean")


class FusionError(UserError, ValueError):
    """Predictions that cannot be fused (unknown method, mismatched shapes)."""


def normalized_entropy(dist: np.ndarray, axis: int = 0) -> np.ndarray:
    """Shannon entropy of the distributions along ``axis``, divided by ``log(n)``.

    Args:
        dist: non-negative values summing to 1 along ``axis`` (``n`` classes, n >= 2).

    Returns:
        float32 array without ``axis``, values in [0, 1].
    """
    n = dist.shape[axis]
    if n < 2:
        return np.zeros(np.delete(dist.shape, axis), dtype=np.float32)
    p = np.clip(dist.astype(np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return (terms.sum(axis=axis) / np.log(n)).astype(np.float32)


def first_argmax(probs: np.ndarray) -> np.ndarray:
    """``probs.argmax(axis=0)`` (the first class on ties) of ``(C, ...)`` scores, one pass per
    class (faster than numpy's arg-max across a leading axis of a few classes).

    Example:
        >>> first_argmax(np.array([[0.2, 0.5], [0.7, 0.5], [0.1, 0.0]])).tolist()
        [1, 0]
    """
    best = probs[0].copy()
    label = np.zeros(best.shape, dtype=np.intp)
    for c in range(1, len(probs)):
        higher = probs[c] > best
        label[higher] = c
        np.maximum(best, probs[c], out=best)
    return label


class Fusion:
    """Accumulates class probabilities ``(C, X, Y, Z)`` one prediction at a time.

    Memory stays at two ``(C, X, Y, Z)`` arrays whatever the number of predictions.
    """

    def __init__(self, method: str = "vote") -> None:
        if method not in FUSIONS:
            raise FusionError(
                f"unknown segmentation.fusion {method!r}: use one of {', '.join(FUSIONS)}"
            )
        self.method = method
        self.count = 0
        self._votes: np.ndarray | None = None
        self._prob_sum: np.ndarray | None = None

    def add(self, probs: np.ndarray) -> None:
        """Add one prediction's probabilities ``(C, X, Y, Z)``."""
        if self._votes is None:
            self._votes = np.zeros(probs.shape, dtype=np.int32)
            self._prob_sum = np.zeros(probs.shape, dtype=np.float64)
        elif probs.shape != self._votes.shape:
            raise FusionError(f"prediction shape {probs.shape} != {self._votes.shape}")
        label_map = first_argmax(probs)
        votes = self._votes.reshape(len(probs), -1)
        votes[label_map.ravel(), np.arange(votes.shape[1])] += 1  # one vote per voxel
        self._prob_sum += probs
        self.count += 1

    def _require(self) -> tuple[np.ndarray, np.ndarray]:
        if self._votes is None or self._prob_sum is None:
            raise FusionError("no prediction was added")
        return self._votes, self._prob_sum

    def mean_probs(self) -> np.ndarray:
        """Mean probability ``(C, X, Y, Z)`` over the predictions."""
        _, prob_sum = self._require()
        return (prob_sum / self.count).astype(np.float32)

    def vote_fractions(self) -> np.ndarray:
        """Fraction of predictions voting for each class ``(C, X, Y, Z)``."""
        votes, _ = self._require()
        return (votes / self.count).astype(np.float32)

    def label_map(self) -> np.ndarray:
        """Fused ``(X, Y, Z)`` uint8 label map."""
        votes, prob_sum = self._require()
        if self.method == "mean":
            score = prob_sum
        else:  # votes are integers: adding < 1 only breaks ties
            score = votes + 0.5 * prob_sum / self.count
        return score.argmax(axis=0).astype(np.uint8)

    def uncertainty(self) -> np.ndarray:
        """Normalised entropy of the vote fractions ``(X, Y, Z)``, in [0, 1]."""
        return normalized_entropy(self.vote_fractions())


def keep_largest_component(label_map: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected foreground component of a one-hippocampus crop.

    The hippocampus of one side is a single connected structure; islands elsewhere in the
    crop (a neighbouring structure the model mistook for it) are set to background. Labels
    inside the kept component are unchanged.
    """
    from scipy import ndimage

    foreground = label_map > 0
    components, n = ndimage.label(foreground, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return label_map
    sizes = np.bincount(components.ravel())[1:]
    return np.where(components == 1 + int(sizes.argmax()), label_map, 0).astype(label_map.dtype)
