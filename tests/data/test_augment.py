"""Batched tensor augmentation (augmentation.backend=torch), checked against torchio."""

from __future__ import annotations

import math

import pytest
import torch
import torchio as tio

from hsftrain.data.augment import BatchAugment, flip_dims, gaussian_blur, rotation_matrices


def _phantom(shape=(24, 24, 24)) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, 1, X, Y, Z)`` image and ``(1, X, Y, Z)`` label with two asymmetric blocks."""
    label = torch.zeros(shape, dtype=torch.long)
    label[8:16, 10:14, 6:18] = 1
    label[4:8, 4:8, 4:8] = 2
    image = label.float() + 0.1 * torch.arange(shape[0]).float()[:, None, None]
    return image[None, None], label[None]


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * ((a > 0) & (b > 0)).sum() / ((a > 0).sum() + (b > 0).sum()))


def test_flip_is_exact_and_matches_torchio_lr_flip() -> None:
    image, label = _phantom()
    aug = BatchAugment({"flip": {"p": 1.0, "axes": ["LR"]}})
    out_image, out_label = aug(image, label)
    assert torch.equal(out_image, image.flip(2)) and torch.equal(out_label, label.flip(1))
    ref = tio.RandomFlip(axes=("LR",), flip_probability=1.0)(
        tio.Subject(im=tio.ScalarImage(tensor=image[0]), lb=tio.LabelMap(tensor=label))
    )
    assert torch.equal(out_image[0], ref["im"].data) and torch.equal(out_label, ref["lb"].data)


@pytest.mark.parametrize(
    ("torchio_args", "ours"),
    [
        ({"scales": (1.3,) * 6}, {"scales": [1.3, 1.3]}),
        ({"degrees": (20, 20, 0, 0, 0, 0)}, {"degrees": [20, 20, 0, 0, 0, 0]}),
        ({"degrees": (0, 0, 20, 20, 0, 0)}, {"degrees": [0, 0, 20, 20, 0, 0]}),
        ({"degrees": (0, 0, 0, 0, -15, -15)}, {"degrees": [0, 0, 0, 0, -15, -15]}),
        ({"translation": (3, 3, -2, -2, 1, 1)}, {"translation": [3, 3, -2, -2, 1, 1]}),
    ],
)
def test_affine_follows_torchio_conventions(torchio_args: dict, ours: dict) -> None:
    """Same parameters, same result as torchio's RandomAffine (nearest, labels)."""
    image, label = _phantom()
    base = {"scales": (1,) * 6, "degrees": 0, "translation": 0}
    ref = tio.RandomAffine(**{**base, **torchio_args}, image_interpolation="nearest")(
        tio.LabelMap(tensor=label)
    )
    cfg = {"p": 1.0, "scales": [1, 1], "degrees": [0, 0], "translation": [0, 0], **ours}
    _, out = BatchAugment({"affine": cfg})(image, label)
    assert _dice(out[0], ref.data[0]) > 0.99
    assert not torch.equal(out, label)


def test_spatial_transforms_are_in_millimetres() -> None:
    """A 4 mm shift moves 2 voxels along a 2 mm axis and 4 along a 1 mm axis."""
    image, label = _phantom()
    shift = {"p": 1.0, "scales": [1, 1], "degrees": [0, 0], "translation": [4, 4, 4, 4, 0, 0]}
    spacing = torch.tensor([[2.0, 1.0, 1.0]])
    _, out = BatchAugment({"affine": shift})(image, label, spacing)
    expected = torch.zeros_like(label)
    expected[:, 2:, 4:] = label[:, :-2, :-4]
    assert torch.equal(out, expected)


def test_labels_keep_their_values_and_dtype_under_every_transform() -> None:
    image, label = _phantom()
    image, label = image.repeat(4, 1, 1, 1, 1), label.repeat(4, 1, 1, 1).to(torch.uint8)
    cfg = {
        "flip": {"p": 0.5},
        "affine": {"p": 1.0, "scales": [0.8, 1.2], "degrees": 15, "translation": 3},
        "elastic": {"p": 1.0, "num_control_points": 5, "max_displacement": 4},
        "motion": {"p": 1.0, "degrees": 5, "translation": 5, "num_transforms": 2},
        "blur": {"p": 1.0, "std": [0.5, 1.0]},
        "gamma": {"p": 1.0, "log_gamma": [-0.3, 0.3]},
        "noise": {"p": 1.0, "std": [0.05, 0.05]},
    }
    out_image, out_label = BatchAugment(cfg, seed=3)(image, label)
    assert out_label.dtype == torch.uint8 and out_image.dtype == torch.float32
    assert set(out_label.unique().tolist()) <= {0, 1, 2}
    assert torch.isfinite(out_image).all()
    assert out_image.shape == image.shape and out_label.shape == label.shape


def test_intensity_transforms_keep_each_patch_mean_and_std() -> None:
    torch.manual_seed(0)
    image = torch.randn(3, 1, 16, 16, 16) * 1.5 + 0.3
    label = torch.zeros(3, 16, 16, 16, dtype=torch.long)
    cfg = {"gamma": {"p": 1.0, "log_gamma": [0.5, 0.5]}, "blur": {"p": 1.0, "std": [1, 1]}}
    out, _ = BatchAugment(cfg)(image, label)
    assert not torch.allclose(out, image)
    dims = (1, 2, 3, 4)
    assert torch.allclose(out.mean(dims), image.mean(dims), atol=1e-4)
    assert torch.allclose(out.std(dims), image.std(dims), atol=1e-4)


def test_probabilities_and_parameter_ranges_are_honoured() -> None:
    aug = BatchAugment(
        {"affine": {"p": 0.25, "scales": [0.9, 1.1], "degrees": 10, "translation": 3}}, seed=0
    )
    chosen = torch.cat([aug._chosen(aug.affine, 1000) for _ in range(4)])
    assert abs(float(chosen.float().mean()) - 0.25) < 0.03
    scales = torch.stack([aug._uniform_axes([0.9, 1.1], 1, False)[0] for _ in range(500)])
    assert scales.min() >= 0.9 and scales.max() <= 1.1 and scales.std() > 0.05
    image = torch.zeros(2, 1, 8, 8, 8)
    noisy, _ = BatchAugment({"noise": {"p": 1.0, "std": [0.2, 0.2]}})(
        image, torch.zeros(2, 8, 8, 8, dtype=torch.long)
    )
    assert float(noisy.std()) == pytest.approx(0.2, rel=0.1)


def test_same_seed_same_augmentation() -> None:
    image, label = _phantom()
    cfg = {
        "affine": {"p": 1.0, "degrees": 10},
        "elastic": {"p": 1.0},
        "noise": {"p": 1.0, "std": [0.1, 0.1]},
    }
    a = BatchAugment(cfg, seed=1)(image, label)
    b = BatchAugment(cfg, seed=1)(image, label)
    c = BatchAugment(cfg, seed=2)(image, label)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_disabled_augmentation_is_the_identity() -> None:
    image, label = _phantom()
    aug = BatchAugment({"flip": {"p": 0}, "affine": {"p": 0.0}})
    assert not aug.enabled
    out_image, out_label = aug(image, label)
    assert torch.equal(out_image, image) and torch.equal(out_label, label)


def test_helpers() -> None:
    assert flip_dims(["LR", "si", 1]) == [0, 1, 2]
    with pytest.raises(ValueError, match="flip.axes"):
        flip_dims(["up"])
    r = rotation_matrices(torch.tensor([[0.0, 0.0, math.pi / 2]], dtype=torch.float64))[0]
    assert torch.allclose(
        r @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
        torch.tensor([0.0, 1, 0], dtype=torch.float64),
        atol=1e-12,
    )
    impulse = torch.zeros(1, 1, 21, 9, 21)
    impulse[0, 0, 10, 4, 10] = 1
    blurred = gaussian_blur(impulse, [1.0, 0.0, 2.0])
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-5)
    assert blurred[0, 0, 10, 3, 10] == 0  # no blur along the second axis
