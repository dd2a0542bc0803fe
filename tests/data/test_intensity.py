"""hsftrain.data.intensity: z-normalisation and padding to a multiple of 8."""

from __future__ import annotations

import numpy as np

from hsftrain.data.intensity import pad_to_multiple, unpad, z_normalize


def test_z_normalize() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) * 3 + 7
    z = z_normalize(x)
    assert abs(float(z.mean())) < 1e-6 and abs(float(z.std()) - 1) < 1e-6
    np.testing.assert_array_equal(z_normalize(np.full((2, 2, 2), 5.0)), 0.0)


def test_pad_to_multiple_and_back() -> None:
    x = np.random.default_rng(0).random((2, 13, 16, 9)).astype(np.float32)
    padded, crop = pad_to_multiple(x, 8)
    assert padded.shape == (2, 16, 16, 16)
    assert crop[0] == slice(1, 14) and crop[1] == slice(0, 16) and crop[2] == slice(3, 12)
    np.testing.assert_array_equal(unpad(padded, crop), x)
    assert padded[:, 0].max() == 0.0  # padding value
