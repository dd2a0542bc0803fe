"""Training augmentation as batched tensor operations, on whatever device the batch is on.

``augmentation.backend=torch`` (the default) runs :class:`BatchAugment` on whole batches:
on the GPU right after the batch is transferred (``augmentation.device=auto`` or ``cuda``), or
on the CPU in the data-loader workers (``augmentation.device=cpu``). It reads the
:class:`~hsftrain.data.augmentation_spec.AugmentationSpec` (keys, probabilities and defaults)
that the torchio backend (:mod:`hsftrain.data.transforms`) and test-time augmentation read:

- spatial: ``flip`` (exact, by index), then ``affine`` (scales, rotation in degrees,
  translation in mm) and ``elastic`` (a smooth random displacement of at most
  ``max_displacement`` mm on a ``num_control_points`` grid), composed into ONE sampling grid
  per batch and applied with ``grid_sample``: images trilinear, labels nearest (never a new
  label value). Transforms are built in millimetres, so anisotropic voxels are rotated and
  deformed as the anatomy is, not as the voxel grid is.
- intensity: ``motion`` (k-space mixing of rigidly moved copies, ghosting-like), ``blur``
  (Gaussian, std in mm), ``gamma`` (on intensities rescaled to [0, 1]); afterwards each
  augmented patch gets back its own mean and standard deviation, so the z-normalisation the
  model sees at inference is kept; then ``noise`` (Gaussian, std in normalised units).

Random parameters are drawn on the CPU from a seeded generator (so which sample gets which
transform is known on the host without waiting for the device); full-size random fields
(noise) are drawn on the batch's device. Same seed, same batches: same augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from hsftrain.data.augmentation_spec import AugmentationSpec, Transform, flip_dims

__all__ = ["BatchAugment", "flip_dims", "gaussian_blur", "rotation_matrices"]


def _pair(value: Any, symmetric: bool = True) -> tuple[float, float]:
    """``(low, high)`` from a number (``(-v, v)`` or ``(v, v)``) or a 2-list."""
    if isinstance(value, int | float):
        return (-float(value), float(value)) if symmetric else (float(value), float(value))
    low, high = (float(v) for v in value)
    return low, high


def _per_axis(value: Any, symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low (3,), high (3,))`` from a number, a ``(low, high)`` pair for every axis, or six
    values ``(x_low, x_high, y_low, y_high, z_low, z_high)`` (as torchio accepts).

    Raises:
        ValueError: another number of values.
    """
    values = [value] if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) == 1:
        low, high = _pair(values[0], symmetric)
        pairs = [(low, high)] * 3
    elif len(values) == 2:
        pairs = [(values[0], values[1])] * 3
    elif len(values) == 6:
        pairs = [(values[2 * i], values[2 * i + 1]) for i in range(3)]
    else:
        raise ValueError(
            f"augmentation: {value!r}: give one value, a [low, high] pair or six values"
        )
    low_t, high_t = zip(*pairs, strict=True)
    return torch.tensor(low_t, dtype=torch.float64), torch.tensor(high_t, dtype=torch.float64)


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` rotations from ``(B, 3)`` angles in radians about dims 0, 1, 2."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def mat(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    r0 = mat([[one, zero, zero], [zero, c[:, 0], -s[:, 0]], [zero, s[:, 0], c[:, 0]]])
    r1 = mat([[c[:, 1], zero, s[:, 1]], [zero, one, zero], [-s[:, 1], zero, c[:, 1]]])
    r2 = mat([[c[:, 2], -s[:, 2], zero], [s[:, 2], c[:, 2], zero], [zero, zero, one]])
    return r2 @ r1 @ r0


class BatchAugment:
    """Random augmentation of ``(image (B, 1, X, Y, Z), label (B, X, Y, Z))`` batches.

    Args:
        cfg: the ``augmentation`` config group or its spec (a missing transform or
            ``p: 0`` disables it; :mod:`hsftrain.data.augmentation_spec`).
        seed: seeds the generator of the random parameters.
    """

    def __init__(self, cfg: Mapping[str, Any] | AugmentationSpec, seed: int = 0) -> None:
        spec = AugmentationSpec.from_config(cfg)
        self.flip, self.affine, self.elastic = spec["flip"], spec["affine"], spec["elastic"]
        self.motion, self.blur, self.gamma = spec["motion"], spec["blur"], spec["gamma"]
        self.noise = spec["noise"]
        self.flip_dims = flip_dims(self.flip["axes"]) if self.flip.on else []
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self._worker: int | None = None

    def reseed(self, offset: int) -> None:
        """Start this copy's random stream at ``seed + offset`` (e.g. the process rank)."""
        self.generator.manual_seed(self.seed + 1000003 * int(offset))

    def __getstate__(self) -> dict[str, Any]:
        # a torch.Generator does not cross process boundaries: keep its state as bytes
        state = dict(self.__dict__)
        state["generator"] = self.generator.get_state().numpy().tobytes()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import numpy as np

        raw = np.frombuffer(state.pop("generator"), dtype=np.uint8).copy()
        self.__dict__.update(state)
        self.generator = torch.Generator()
        self.generator.set_state(torch.from_numpy(raw))

    @property
    def enabled(self) -> bool:
        """Whether any transform is on."""
        transforms = (self.flip, self.affine, self.elastic, self.motion, self.blur, self.gamma)
        return any(t.on for t in (*transforms, self.noise))

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, dtype=torch.float64)

    def _uniform(self, low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * self._rand(*shape)

    def _uniform_axes(self, value: Any, batch: int, symmetric: bool = True) -> torch.Tensor:
        """``(B, 3)`` draws, each axis in its own range (see :func:`_per_axis`)."""
        low, high = _per_axis(value, symmetric)
        return low + (high - low) * self._rand(batch, 3)

    def _chosen(self, transform: Transform, batch: int) -> torch.Tensor:
        """``(B,)`` bool on the CPU: which items get this transform."""
        if not transform.on:
            return torch.zeros(batch, dtype=torch.bool)
        return self._rand(batch) < transform.p

    def _reseed_in_worker(self) -> None:
        """Data-loader workers hold copies of this object: give each its own stream."""
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker != info.id:
            self._worker = info.id
            self.reseed(info.seed % 1000003)

    @torch.no_grad()
    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, spacing: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch.

        Args:
            image: ``(B, 1, X, Y, Z)`` float, z-normalised.
            label: ``(B, X, Y, Z)`` integer label map.
            spacing: ``(B, 3)`` voxel sizes in mm (1 mm when None).

        Returns:
            The augmented image (same dtype) and label map (same dtype, values a subset of
            the input's).
        """
        self._reseed_in_worker()
        batch = image.shape[0]
        device = image.device
        if spacing is None:
            spacing = torch.ones(batch, 3, dtype=torch.float64)
        spacing = spacing.detach().to("cpu", torch.float64)
        image, label = self._flip(image, label)
        image, label = self._spatial(image, label, spacing)
        before = image.mean((1, 2, 3, 4), keepdim=True), image.std((1, 2, 3, 4), keepdim=True)
        changed = torch.zeros(batch, dtype=torch.bool)
        for transform in (self._motion, self._blur, self._gamma):
            image, hit = transform(image, spacing)
            changed |= hit
        if bool(changed.any()):
            mean, std = (
                image.mean((1, 2, 3, 4), keepdim=True),
                image.std((1, 2, 3, 4), keepdim=True),
            )
            restored = (image - mean) / std.clamp_min(1e-6) * before[1] + before[0]
            image = torch.where(_items(changed, device), restored, image)
        image = self._noise(image)
        return image, label

    def _flip(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self._chosen(self.flip, image.shape[0])
        if not self.flip_dims or not bool(chosen.any()):
            return image, label
        where = _items(chosen, image.device)
        image_dims = [d + 2 for d in self.flip_dims]
        label_dims = [d + 1 for d in self.flip_dims]
        image = torch.where(where, image.flip(image_dims), image)
        label = torch.where(where[:, 0], label.flip(label_dims), label)
        return image, label

    def _spatial(
        self, image: torch.Tensor, label: torch.Tensor, spacing: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, shape = image.shape[0], image.shape[2:]
        affine = self._chosen(self.affine, batch)
        elastic = self._chosen(self.elastic, batch)
        # parameters are drawn for every item (a fixed number of draws per batch)
        matrices, shifts = self._affine_params(batch)
        displacement = self._elastic_params(batch)
        chosen = affine | elastic
        if not bool(chosen.any()):
            return image, label
        # normalised coordinates u in [-1, 1] <-> millimetres from the centre: u * half
        sizes = torch.tensor([float(s) for s in shape], dtype=torch.float64)
        half = (sizes - 1).clamp_min(1) * spacing / 2  # (B, 3)
        eye = torch.eye(3, dtype=torch.float64).expand(batch, 3, 3)
        matrices = torch.where(affine[:, None, None], matrices, eye)
        shifts = torch.where(affine[:, None], shifts, torch.zeros_like(shifts))
        theta = matrices * half[:, None, :] / half[:, :, None]  # H^-1 M H
        offset = shifts / half
        # grid_sample orders coordinates (dim 2, dim 1, dim 0): reverse both axes
        theta = torch.cat([theta.flip(1).flip(2), offset.flip(1)[:, :, None]], dim=2)
        dtype = image.dtype if image.dtype in (torch.float32, torch.float64) else torch.float32
        grid = F.affine_grid(theta.to(image.device, dtype), [batch, 1, *shape], align_corners=True)
        if bool(elastic.any()):
            field = displacement * elastic[:, None, None, None, None]  # (B, 3, n, n, n) mm
            field = field / half[:, :, None, None, None]
            field = F.interpolate(
                field.to(image.device, dtype), size=shape, mode="trilinear", align_corners=True
            )
            grid = grid + field.flip(1).permute(0, 2, 3, 4, 1)
        low = image.amin((1, 2, 3, 4), keepdim=True)
        warped = (
            F.grid_sample((image - low).to(dtype), grid, mode="bilinear", align_corners=True).to(
                image.dtype
            )
            + low
        )
        warped_label = (
            F.grid_sample(label[:, None].to(dtype), grid, mode="nearest", align_corners=True)[:, 0]
            .round()
            .to(label.dtype)
        )
        where = _items(chosen, image.device)
        return torch.where(where, warped, image), torch.where(where[:, 0], warped_label, label)

    def _affine_params(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, 3)`` matrices and ``(B, 3)`` shifts (mm) mapping output to input."""
        a = self.affine
        if not a.on:
            return torch.eye(3, dtype=torch.float64).repeat(batch, 1, 1), torch.zeros(batch, 3)
        scale_range = a["scales"]
        if isinstance(scale_range, int | float):  # torchio: d means U(1 - d, 1 + d)
            scale_range = (1 - float(scale_range), 1 + float(scale_range))
        scales = self._uniform_axes(scale_range, batch, symmetric=False)
        degrees = self._uniform_axes(a["degrees"], batch)
        shifts = self._uniform_axes(a["translation"], batch)
        # the forward transform (torchio's convention: scales > 1 enlarge, positive shifts
        # move the anatomy towards +axis) is x -> R S x + t; grid_sample needs its inverse
        rotation = rotation_matrices(degrees * math.pi / 180)
        inverse = rotation.transpose(1, 2) / scales[:, :, None]  # S^-1 R^T
        return inverse, -(inverse @ shifts[:, :, None])[:, :, 0]

    def _elastic_params(self, batch: int) -> torch.Tensor:
        """``(B, 3, n, n, n)`` control-point displacements in mm, zero on the border."""
        e = self.elastic
        if not e.on:
            return torch.zeros(batch, 3, 1, 1, 1, dtype=torch.float64)
        n = max(int(e["num_control_points"]), 4)
        limit = float(e["max_displacement"])
        field = self._uniform(-limit, limit, batch, 3, n, n, n)
        inner = torch.zeros_like(field)
        inner[:, :, 1:-1, 1:-1, 1:-1] = 1
        return field * inner

    def _motion(
        self, image: torch.Tensor, spacing: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """k-space segments taken from rigidly moved copies (ghosting-like)."""
        chosen = self._chosen(self.motion, image.shape[0])
        m = self.motion
        if not bool(chosen.any()):
            return image, chosen
        moves = max(int(m["num_transforms"]), 1)
        degrees, shift = _pair(m["degrees"]), _pair(m["translation"])
        out = image.clone()
        for b in torch.nonzero(chosen).flatten().tolist():
            angles = self._uniform(*degrees, moves, 3) * math.pi / 180
            shifts = self._uniform(*shift, moves, 3)
            cuts = sorted(self._rand(moves).tolist())
            single = image[b : b + 1]
            spectrum = torch.fft.fftn(single.float(), dim=(2, 3, 4))
            length = single.shape[-1]
            size = torch.tensor([float(s) for s in single.shape[2:]], dtype=torch.float64)
            half = (size - 1).clamp_min(1) * spacing[b] / 2
            for k in range(moves):
                theta = rotation_matrices(angles[k : k + 1])[0] * half[None, :] / half[:, None]
                theta = torch.cat([theta.flip(0).flip(1), (shifts[k] / half).flip(0)[:, None]], 1)
                grid = F.affine_grid(
                    theta[None].to(image.device, torch.float32), list(single.shape), True
                )
                moved = F.grid_sample(
                    single.float(), grid, align_corners=True, padding_mode="border"
                )
                start = int(cuts[k] * length)
                part = torch.fft.fftn(moved, dim=(2, 3, 4))
                spectrum[..., start:] = part[..., start:]
            out[b : b + 1] = torch.fft.ifftn(spectrum, dim=(2, 3, 4)).real.to(image.dtype)
        return out, chosen

    def _blur(
        self, image: torch.Tensor, spacing: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self._chosen(self.blur, image.shape[0])
        stds = self._uniform(*_pair(self.blur["std"], False), image.shape[0], 3)
        if not bool(chosen.any()):
            return image, chosen
        out = image.clone()
        for b in torch.nonzero(chosen).flatten().tolist():
            out[b : b + 1] = gaussian_blur(image[b : b + 1], (stds[b] / spacing[b]).tolist())
        return out, chosen

    def _gamma(
        self, image: torch.Tensor, spacing: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self._chosen(self.gamma, image.shape[0])
        log_gamma = self._uniform(*_pair(self.gamma["log_gamma"]), image.shape[0])
        if not bool(chosen.any()):
            return image, chosen
        gamma = log_gamma.exp().to(image.device, image.dtype)[:, None, None, None, None]
        low = image.amin((1, 2, 3, 4), keepdim=True)
        span = (image.amax((1, 2, 3, 4), keepdim=True) - low).clamp_min(1e-6)
        powered = ((image - low) / span).clamp(0, 1) ** gamma * span + low
        return torch.where(_items(chosen, image.device), powered, image), chosen

    def _noise(self, image: torch.Tensor) -> torch.Tensor:
        chosen = self._chosen(self.noise, image.shape[0])
        stds = self._uniform(*_pair(self.noise["std"], False), image.shape[0])
        if not bool(chosen.any()):
            return image
        seed = int(torch.randint(2**62, (), generator=self.generator))
        device_gen = torch.Generator(device=image.device).manual_seed(seed)
        noise = torch.randn(
            image.shape, generator=device_gen, device=image.device, dtype=image.dtype
        )
        scale = (stds * chosen).to(image.device, image.dtype)[:, None, None, None, None]
        return image + noise * scale


def gaussian_blur(image: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, X, Y, Z)`` with one std (in voxels) per axis."""
    out = image
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0.05:
            continue
        radius = max(int(math.ceil(3 * sigma)), 1)
        x = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel = kernel / kernel.sum()
        shape = [1, 1, 1, 1, 1]
        shape[axis + 2] = kernel.numel()
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        channels = out.shape[1]
        weight = kernel.reshape(shape).repeat(channels, 1, 1, 1, 1)
        out = F.conv3d(F.pad(out, pad, mode="replicate"), weight, groups=channels)
    return out


def _items(chosen: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``(B,)`` bool -> ``(B, 1, 1, 1, 1)`` on ``device`` (broadcasts over images)."""
    return chosen.to(device)[:, None, None, None, None]
