"""Test-time augmentation: drawing, applying and inverting augmentations."""

from __future__ import annotations

import numpy as np
import pytest

from hsftrain.inference.tta import (
    Augmentation,
    affine_matrix,
    elastic_displacement,
    invert_displacement,
    sample_augmentation,
    sample_augmentations,
)

AUG = {
    "flip": {"p": 0.5, "axes": ["LR"]},
    "affine": {"p": 0.5, "scales": [0.9, 1.1], "degrees": 10, "translation": 3},
    "elastic": {"p": 0.3, "num_control_points": 5, "max_displacement": 2},
}


def voxelwise_model(image: np.ndarray) -> np.ndarray:
    """A 'model' that commutes with flips: softmax of (x, -x, 0) per voxel -> (3, X, Y, Z)."""
    logits = np.stack([image, -image, np.zeros_like(image)])
    e = np.exp(logits - logits.max(axis=0))
    return (e / e.sum(axis=0)).astype(np.float32)


def smooth_image(shape=(24, 32, 24)) -> np.ndarray:
    grid = np.indices(shape).astype(np.float32)
    return np.sin(grid[0] / 5) + np.cos(grid[1] / 7) + 0.05 * grid[2]


@pytest.mark.parametrize("axes", [(0,), (1,), (0, 2), (0, 1, 2)])
def test_flip_inverse_restores_the_plain_prediction_exactly(axes: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(8, 12, 10)).astype(np.float32)
    plain = voxelwise_model(image)
    aug = Augmentation(flip_axes=axes)
    back = aug.invert(voxelwise_model(aug.apply(image)))
    np.testing.assert_array_equal(back, plain)


def test_flip_inverse_of_arbitrary_probabilities_is_exact() -> None:
    rng = np.random.default_rng(1)
    probs = rng.random((3, 6, 7, 8)).astype(np.float32)
    aug = Augmentation(flip_axes=(0,))
    np.testing.assert_array_equal(aug.invert(np.flip(probs, 1)), probs)


def test_affine_inverse_restores_a_smooth_prediction() -> None:
    image = smooth_image()
    matrix = affine_matrix(image.shape, (1.0, 1.0, 1.2), (1.05, 0.95, 1.0), (5, -4, 8), (1, -2, 1))
    aug = Augmentation(matrix=matrix)
    plain = voxelwise_model(image)
    back = aug.invert(voxelwise_model(aug.apply(image)))
    inner = (slice(None), slice(6, -6), slice(8, -8), slice(6, -6))
    assert np.abs(back[inner] - plain[inner]).max() < 0.05
    np.testing.assert_allclose(back.sum(axis=0), 1.0, atol=1e-5)


def test_identity_affine_matrix() -> None:
    np.testing.assert_allclose(affine_matrix((10, 12, 14), (1.0, 2.0, 1.5)), np.eye(4), atol=1e-12)


def test_elastic_inverse_field_composes_to_identity() -> None:
    rng = np.random.default_rng(2)
    shape = (20, 24, 20)
    u = elastic_displacement(shape, (1.0, 1.0, 1.0), rng, num_control_points=5, max_displacement=3)
    assert np.abs(u).max() > 0.5
    for axis_slice in (u[:, 0], u[:, -1], u[:, :, 0], u[:, :, -1]):  # borders are locked
        assert np.abs(axis_slice).max() < 1e-4
    v = invert_displacement(u)
    from scipy import ndimage

    grid = np.indices(shape, dtype=np.float32)
    # warping by u then by v: x -> x + v(x) + u(x + v(x)) should be x
    coords = grid + v
    u_at = np.stack([ndimage.map_coordinates(c, coords, order=1, mode="nearest") for c in u])
    assert np.abs(v + u_at).max() < 0.1


def test_elastic_inverse_restores_a_smooth_prediction() -> None:
    rng = np.random.default_rng(3)
    image = smooth_image((20, 24, 20))
    u = elastic_displacement(image.shape, (1.0, 1.0, 1.0), rng, 5, 2.0)
    aug = Augmentation(displacement=u)
    plain = voxelwise_model(image)
    back = aug.invert(voxelwise_model(aug.apply(image)))
    assert np.abs(back - plain).max() < 0.1


def test_sampling_is_deterministic_and_starts_with_the_plain_view() -> None:
    shape, zooms = (16, 16, 16), (1.0, 1.0, 1.0)
    a = sample_augmentations(AUG, 6, shape, zooms, np.random.default_rng(5))
    b = sample_augmentations(AUG, 6, shape, zooms, np.random.default_rng(5))
    assert len(a) == 7 and a[0].is_identity
    assert not any(x.is_identity for x in a[1:])  # draws without a transform are redrawn
    assert [x.describe() for x in a] == [x.describe() for x in b]
    for x, y in zip(a, b, strict=True):
        if x.matrix is not None:
            np.testing.assert_array_equal(x.matrix, y.matrix)


def test_no_probability_means_no_augmentation() -> None:
    cfg = {"flip": {"p": 0.0}, "affine": {"p": 0.0}, "elastic": {"p": 0.0}}
    aug = sample_augmentation(cfg, (8, 8, 8), (1, 1, 1), np.random.default_rng(0))
    assert aug.is_identity


def test_unknown_flip_axis_is_rejected() -> None:
    with pytest.raises(ValueError, match="flip.axes"):
        sample_augmentation(
            {"flip": {"p": 1.0, "axes": ["XY"]}}, (8, 8, 8), (1, 1, 1), np.random.default_rng(0)
        )


def test_pull_operator_interpolates_as_scipy_with_edges_replicated() -> None:
    from scipy import ndimage

    from hsftrain.inference.tta import pull_operator

    rng = np.random.default_rng(3)
    for shape in [(7, 9, 5), (1, 6, 4)]:  # a one-voxel axis too
        image = rng.normal(size=shape).astype(np.float32)
        # points inside, on the edges and outside the grid on every side
        coords = rng.uniform(-2, 1, size=(3, 500)) * 1.5 + np.array(shape)[:, None] * rng.uniform(
            0, 1.2, size=(3, 500)
        )
        expected = ndimage.map_coordinates(image, coords, order=1, mode="nearest")
        got = pull_operator(coords, shape) @ image.ravel()
        np.testing.assert_allclose(got, expected, atol=1e-5)


def _scipy_invert(aug: Augmentation, probs: np.ndarray) -> np.ndarray:
    """The inversion as one scipy resampling per class (the reference)."""
    from scipy import ndimage

    out = probs
    if aug.displacement is not None:
        inverse = invert_displacement(aug.displacement)
        grid = np.indices(probs.shape[1:], dtype=np.float32)
        out = np.stack(
            [ndimage.map_coordinates(c, grid + inverse, order=1, mode="nearest") for c in out]
        )
    if aug.matrix is not None:
        m = np.linalg.inv(aug.matrix)
        out = np.stack(
            [
                ndimage.affine_transform(c, m[:3, :3], offset=m[:3, 3], order=1, mode="nearest")
                for c in out
            ]
        )
    if aug.flip_axes:
        out = np.flip(out, tuple(a + 1 for a in aug.flip_axes))
    return out


def test_inverting_several_models_at_once_equals_each_class_resampled_alone() -> None:
    shape = (12, 16, 10)
    rng = np.random.default_rng(5)
    matrix = affine_matrix(
        shape, (1.0, 1.0, 1.2), (0.95, 1.05, 1.0), (8.0, -5.0, 3.0), (1.0, -2.0, 0.5)
    )
    field = elastic_displacement(shape, (1.0, 1.0, 1.2), rng, 5, 2.0)
    aug = Augmentation((0,), matrix, field)
    probs = rng.dirichlet(np.ones(4), size=(3, *shape)).transpose(0, 4, 1, 2, 3).astype(np.float32)
    together = aug.invert(probs)  # (models, classes, X, Y, Z) in one call
    assert together.shape == probs.shape and together.dtype == np.float32
    for model in range(3):
        alone = aug.invert(probs[model])
        np.testing.assert_allclose(together[model], alone, atol=1e-6)
        np.testing.assert_allclose(alone, _scipy_invert(aug, probs[model]), atol=1e-5)
    np.testing.assert_allclose(together.sum(axis=1), 1.0, atol=1e-5)  # still probabilities
