import numpy as np
import torch

from hsftrain.data.intensity import z_normalize
from hsftrain.data.transforms import augmentation, fit_shape, postprocess


def test_postprocess_z_normalizes_as_the_cache_and_inference_do():
    image = torch.arange(10.0).reshape(1, 10, 1, 1)
    out, _ = postprocess(image, torch.zeros(10, 1, 1, dtype=torch.long), [10, 1, 1])
    np.testing.assert_array_equal(out.numpy(), z_normalize(image.numpy()))


def test_fit_shape_pads_evenly_to_multiple_of_8():
    image = torch.ones(1, 9, 16, 3)
    label = torch.ones(9, 16, 3, dtype=torch.long)
    img, lbl = fit_shape(image, label, None)
    assert img.shape == (1, 16, 16, 8) and lbl.shape == (16, 16, 8)
    assert lbl[3:12, :, 2:5].all() and lbl.sum() == 9 * 16 * 3  # 7 = 3 + 4, 5 = 2 + 3


def test_fit_shape_centre_crops_and_pads_to_patch():
    image = torch.arange(10.0).reshape(1, 10, 1, 1).expand(1, 10, 4, 4).clone()
    label = torch.ones(10, 4, 4, dtype=torch.long)
    img, lbl = fit_shape(image, label, [6, 8, 4])
    assert img.shape == (1, 6, 8, 4)
    assert img[0, :, 2, 0].tolist() == [2, 3, 4, 5, 6, 7]  # centre crop along X
    assert lbl[:, :2].sum() == 0 and lbl[:, 2:6].all()  # centred padding along Y


def test_augmentation_from_config_and_disabled():
    cfg = {"flip": {"p": 1.0, "axes": ["LR"]}, "affine": {"p": 0}}
    assert len(augmentation(cfg).transforms) == 1
    assert augmentation({"flip": {"p": 0}}) is None


def test_augmentation_keeps_the_order_and_reads_each_parameter():
    import torchio as tio

    cfg = {
        "gamma": {"p": 0.5, "log_gamma": [-0.1, 0.1]},
        "flip": {"p": 1.0, "axes": None},  # null: the default axes
        "blur": {"p": 0.25},
    }
    transforms = augmentation(cfg).transforms
    assert [type(t) for t in transforms] == [tio.RandomFlip, tio.RandomBlur, tio.RandomGamma]
    assert [t.probability for t in transforms] == [1.0, 0.25, 0.5]
    assert transforms[0].axes == ("LR",)
    assert transforms[2].log_gamma_range == (-0.1, 0.1)


def test_postprocess_noise_is_seeded():
    image = torch.zeros(1, 8, 8, 8) + torch.arange(8.0)
    label = torch.zeros(8, 8, 8, dtype=torch.long)
    noise = {"p": 1.0, "std": [0.1, 0.1]}
    a, _ = postprocess(image, label, None, noise, torch.Generator().manual_seed(0))
    b, _ = postprocess(image, label, None, noise, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, torch.from_numpy(z_normalize(image.numpy())))
