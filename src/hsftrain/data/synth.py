"""Synthetic hippocampus-like phantoms with subfield labels, for tests and demos.

A phantom is a curved, tapering tube (the hippocampus) along the anterior-posterior axis:
the anterior third is HEAD, the posterior fifth TAIL, and the body in between is split
into a DG core and a shell of CA1, CA2, CA3 and SUB sectors around it. The image has a
different mean intensity per structure, a smooth bias field and Gaussian noise. Labels
follow :data:`hsftrain.data.labels.SUBFIELDS` (1 DG, 2 CA1, 3 CA2, 4 CA3, 5 SUB, 6 HEAD,
7 TAIL).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hsftrain.data.nifti import save_volume

#: Mean intensity per label value (background first), T2-like contrast.
INTENSITIES = np.array([20.0, 80.0, 60.0, 70.0, 50.0, 40.0, 65.0, 55.0], dtype=np.float32)


def make_phantom(
    shape: tuple[int, int, int] = (32, 40, 32), rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: ``(image float32, label_map uint8)`` of ``shape``."""
    rng = rng or np.random.default_rng(0)
    x, y, z = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
    sx, sy, sz = shape
    t = y / (sy - 1)  # 0 posterior .. 1 anterior
    bend = rng.uniform(-0.15, 0.15) * sx
    cx = sx / 2 + rng.uniform(-1.5, 1.5) + bend * np.sin(np.pi * t)
    cz = sz / 2 + rng.uniform(-1.5, 1.5) - 0.1 * sz * (t - 0.5)
    radius = (0.17 + 0.1 * t) * min(sx, sz) * rng.uniform(0.9, 1.1)
    dx, dz = x - cx, z - cz
    r = np.sqrt(dx**2 + (dz * 1.3) ** 2)
    inside = (r < radius) & (t > 0.08) & (t < 0.92)
    label = np.zeros(shape, dtype=np.uint8)
    head = inside & (t > 0.66)
    tail = inside & (t < 0.26)
    body = inside & ~head & ~tail
    angle = np.arctan2(dz, dx)  # -pi..pi
    core = body & (r < 0.45 * radius)
    shell = body & ~core
    label[core] = 1  # DG
    sectors = np.digitize(angle, np.linspace(-np.pi, np.pi, 5)[1:-1])  # 0..3
    for sector, value in zip(range(4), (2, 3, 4, 5), strict=True):  # CA1, CA2, CA3, SUB
        label[shell & (sectors == sector)] = value
    label[head] = 6
    label[tail] = 7
    bias = 1 + 0.1 * np.sin(x / sx * np.pi + rng.uniform(0, np.pi)) * np.cos(z / sz * np.pi)
    image = INTENSITIES[label] * bias + rng.normal(0, 6.0, shape)
    return image.astype(np.float32), label


def write_phantoms(
    out: str | Path,
    n: int = 20,
    shape: tuple[int, int, int] = (32, 40, 32),
    seed: int = 0,
    spacing: float = 1.0,
) -> list[tuple[Path, Path]]:
    """Write ``n`` phantoms as ``sub-XXX_img.nii.gz`` / ``sub-XXX_lbl.nii.gz`` in ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    paths = []
    for i in range(n):
        image, label = make_phantom(shape, rng)
        img_path = save_volume(image, affine, out / f"sub-{i:03d}_img.nii.gz")
        lbl_path = save_volume(label, affine, out / f"sub-{i:03d}_lbl.nii.gz")
        paths.append((img_path, lbl_path))
    return paths
