"""Multispectral segmentation: a subject's T1 and T2, segmented and fused into one label map.

With ``files.t2_pattern``, each T1 (``files.pattern``) is paired with the T2 next to it
(:func:`hsftrain.inference.discovery.pair_t2`), and for every subject:

1. the T2 is registered to the T1 with a rigid transform (SimpleITK, Mattes mutual
   information, both images block-averaged to ``multispectral.registration_mm``; started
   from the scanner coordinates of both files, which is right for scans of one session);
2. each T1 crop (whole head: both hippocampi located as usual) is segmented by the T1
   models on its working grid (its own, or the models' voxel size: ``resample``);
3. the T2 region covering that crop is cut from the T2 (its own voxels: nothing is
   resampled before the models see it) and segmented by the T2 models (the same models
   unless ``multispectral.t2_model_paths``) on its own working grid;
4. the predictions are fused on the crop's *fusion grid*: the crop's field of view at
   the finer of the two working voxel sizes along each (RAS) axis, so that a fine T2 is
   not coarsened to a coarse T1's voxels; T1 predictions are resampled onto it, every T2
   prediction is mapped onto it (trilinear, through the rigid transform), and they are
   fused voxel by voxel by ``segmentation.fusion``
   (vote or mean), counting at each voxel only the predictions that cover it (a T2 slab
   covers part of a T1 crop), each T2 prediction with ``multispectral.t2_weight`` (T1
   predictions: 1); the uncertainty is the normalised entropy of those votes;
5. the consensus is written in the T1 space (the usual outputs of the T1), and with
   ``multispectral.t2_space`` also on the T2's own grid (``<T2 stem>_hippocampus_seg`` and
   ``_uncertainty``), mapped there from the consensus scores.

A T1 without a T2, or with a T2 that does not overlap it in scanner coordinates, is
segmented from the T1 alone and flagged; several T2 candidates for one T1 are an error of
that subject. A registration whose quality (the final mutual information) is below
``multispectral.min_quality`` is flagged, and so is a T2 crop whose contrast is not the T2
models' (:mod:`hsftrain.inference.contract`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hsftrain.config.compose import ConfigError
from hsftrain.inference.alignment import (
    NoOverlapError,
    box_corners,
    covering_box,
    grid_affine,
    map_onto,
    register_rigid,
)
from hsftrain.inference.fusion import normalized_entropy
from hsftrain.inference.image import InputError, Volume, save_nifti
from hsftrain.inference.pipeline import (
    PlainCrops,
    image_problem,
    read_checked,
    side_rng,
    working_grid,
)
from hsftrain.inference.resample import plan, resample
from hsftrain.inference.roiloc import Box
from hsftrain.inference.segmenter import CropResult, ProgressHook, Segmenter
from hsftrain.inference.settings import Settings
from hsftrain.inference.settings_parts import Multispectral
from hsftrain.inference.writer import Outputs, outputs_for

log = logging.getLogger(__name__)


def check_same_classes(t1: Segmenter, t2: Segmenter) -> None:
    """Refuse T1 and T2 models whose (merged) classes differ: their votes cannot be fused.

    Raises:
        ConfigError: the classes differ (both lists named).
    """
    if t1.names != t2.names:
        raise ConfigError(
            f"multispectral.t2_model_paths give classes {[n for n in t2.names if n]} but the "
            f"T1 models {[n for n in t1.names if n]}: fusion needs the same classes (a "
            "segmentation.ca_mode both can be merged to, or models trained on the same labels)"
        )


class CoverageFusion:
    """Fusion of predictions that each cover part of the grid (``segmentation.fusion``).

    Like :class:`hsftrain.inference.fusion.Fusion`, but every voxel counts only the
    predictions covering it, each with its weight: ``vote`` takes the (weighted) plurality
    of their arg-max (ties: the higher weighted mean probability), ``mean`` the arg-max of
    their weighted mean probability; the uncertainty is the normalised entropy of their
    weighted vote fractions. With weights 1 and full coverage it is ``Fusion``.
    """

    def __init__(self, method: str = "vote") -> None:
        self.method = method
        self.predictions = 0
        self.count: np.ndarray | None = None
        self.votes: np.ndarray | None = None
        self.prob_sum: np.ndarray | None = None

    def add(
        self, probs: np.ndarray, covered: np.ndarray | None = None, weight: float = 1.0
    ) -> None:
        """Add one prediction ``(C, X, Y, Z)`` with ``weight``, valid where ``covered``
        (default: everywhere)."""
        if self.votes is None:
            self.count = np.zeros(probs.shape[1:], dtype=np.float64)
            self.votes = np.zeros(probs.shape, dtype=np.float64)
            self.prob_sum = np.zeros(probs.shape, dtype=np.float64)
        assert self.count is not None and self.prob_sum is not None
        mask = np.ones(probs.shape[1:], dtype=bool) if covered is None else covered
        label_map = probs.argmax(axis=0)
        onehot = label_map[None] == np.arange(probs.shape[0])[:, None, None, None]
        self.votes += weight * (onehot & mask)
        self.prob_sum += weight * np.where(mask, probs, 0.0)
        self.count += weight * mask
        self.predictions += 1

    def score(self) -> np.ndarray:
        """``(C, X, Y, Z)`` float32 whose arg-max is the fused label map."""
        assert self.votes is not None and self.prob_sum is not None and self.count is not None
        n = np.where(self.count > 0, self.count, 1.0)[None]
        mean = self.prob_sum / n
        if self.method == "mean":
            return mean.astype(np.float32)
        return ((self.votes + 0.5 * mean) / n).astype(np.float32)

    def uncertainty(self) -> np.ndarray:
        """Normalised entropy of the vote fractions ``(X, Y, Z)``, in [0, 1]."""
        assert self.votes is not None and self.count is not None
        return normalized_entropy(self.votes / np.where(self.count > 0, self.count, 1.0)[None])


@dataclass
class SideConsensus:
    """One crop's consensus, kept for the T2-space outputs."""

    side: str
    score: np.ndarray  # (C, X, Y, Z) on the T1 working grid
    uncertainty: np.ndarray | None
    affine: np.ndarray  # voxel -> RAS mm of the T1 working grid


class T1T2Crops:
    """Crops of a T1 segmented together with the registered T2 (a :class:`CropMethod`).

    Use :meth:`for_subject`; ``t2`` None means that the subject has no T2 (T1 alone,
    flagged).
    """

    def __init__(
        self,
        t1_segmenter: Segmenter,
        t2_segmenter: Segmenter,
        settings: Settings,
        subject: str,
        t2: Volume | None,
        t2_outputs: Outputs | None,
        flags: list[str],
    ) -> None:
        self.t1_segmenter = t1_segmenter
        self.t2_segmenter = t2_segmenter
        self.settings = settings
        self.options: Multispectral = settings.multispectral  # type: ignore[assignment]
        self.subject = subject
        self.t2 = t2
        #: the T2 -> T1 registration, made on the first crop (:meth:`_register`)
        self.t2_to_t1: np.ndarray | None = None
        self.t2_outputs = t2_outputs
        self.flags = flags
        self.sides: list[SideConsensus] = []
        self.plain = PlainCrops(t1_segmenter, settings, subject)

    @classmethod
    def for_subject(
        cls,
        mri: Path,
        outputs: Outputs,
        subject: str,
        t1_segmenter: Segmenter,
        t2_segmenter: Segmenter,
        settings: Settings,
        candidates: Sequence[Path],
    ) -> T1T2Crops:
        """Find, read and register the subject's T2.

        Raises:
            InputError: several T2 candidates, or an unusable T2 (named).
        """
        options = settings.multispectral
        assert options is not None
        if len(candidates) > 1:
            raise InputError(
                f"{mri}: {len(candidates)} files match files.t2_pattern={options.t2_pattern!r} "
                f"next to it ({', '.join(p.name for p in candidates)}): make the pattern match "
                "one T2 per T1"
            )
        if not candidates:
            flag = f"no T2 matches files.t2_pattern={options.t2_pattern!r}: segmented from the T1 alone"
            return cls(t1_segmenter, t2_segmenter, settings, subject, None, None, [flag])
        t2 = read_checked(candidates[0])
        t2_outputs = outputs_for(candidates[0], settings.root, settings.output_dir)
        return cls(t1_segmenter, t2_segmenter, settings, subject, t2, t2_outputs, [])

    def _register(self, t1: Volume) -> None:
        """Register the T2 to ``t1`` (once per subject); flags a poor registration, and a T2
        that does not overlap the T1 (then dropped: the T1 is segmented alone)."""
        assert self.t2 is not None
        if self.t2_to_t1 is None:
            options = self.options
            try:
                self.t2_to_t1, quality = register_rigid(
                    self.t2, t1, options.registration_mm, options.iterations, self.settings.seed
                )
            except NoOverlapError as err:
                self.flags.append(
                    f"the T2 {err}: segmented from the T1 alone (check that the T2 is this "
                    "subject's, from the same session)"
                )
                self.t2, self.t2_outputs = None, None
                return
            log.info(
                "%s: T2 %s registered to the T1 (rigid, quality %.3f, %.1f mm from the "
                "scanner coordinates)",
                self.subject,
                self.t2.path.name,
                quality,
                float(np.linalg.norm(self.t2_to_t1[:3, 3])),
            )
            if quality < options.min_quality:
                self.flags.append(
                    f"T2 registration quality {quality:.3f} < multispectral.min_quality "
                    f"{options.min_quality:g}: check that the T2 shows the same head"
                )

    def segment_box(self, volume: Volume, box: Box, bar: ProgressHook | None) -> CropResult:
        """T1 and T2 predictions of one crop, fused on the crop's fusion grid (the T1
        working grid, refined along the axes where the T2 is finer), mapped back onto the
        crop's grid."""
        if self.t2 is not None:
            self._register(volume)
        if self.t2 is None or self.t2_to_t1 is None:
            return self.plain.segment_box(volume, box, bar)
        t2_to_t1 = self.t2_to_t1
        image = volume.array[box.slices]
        where = f"{self.subject} {box.side}"
        crop_affine = box.affine(volume.affine)
        grid = working_grid(image, volume.zooms, self.t1_segmenter, self.settings, where)
        work_image = resample(image, grid.shape, 1) if grid else image
        work_zooms = tuple(float(z) for z in (grid.zooms if grid else volume.zooms))
        t2_box = covering_box(box.side, box_corners(crop_affine, image.shape), self._t2_seen())
        t2_image = self.t2.array[t2_box.slices] if t2_box else None
        if t2_image is not None and image_problem(t2_image):
            t2_image = None
        if t2_image is None:
            self.flags.append(f"the T2 does not cover the {box.side} crop: T1 alone there")
        else:
            contract, checks = self.t2_segmenter.contract, self.settings.checks
            flag = contract.contrast_flag(t2_image, self.t2.zooms, checks, f"T2 {box.side} crop")
            if flag:
                self.flags.append(flag)
        total = self.t1_segmenter.predictions_per_crop + (
            self.t2_segmenter.predictions_per_crop if t2_image is not None else 0
        )
        if bar:
            bar.start(where, total)
        advance = bar.advance if bar else None
        t2_grid = None
        if t2_image is not None:
            t2_grid = working_grid(
                t2_image, self.t2.zooms, self.t2_segmenter, self.settings, f"{where} T2"
            )
            t2_zooms = tuple(float(z) for z in (t2_grid.zooms if t2_grid else self.t2.zooms))
            finest = [min(a, b) for a, b in zip(work_zooms, t2_zooms, strict=True)]
            fusion_shape = plan(image.shape, volume.zooms, finest).shape
        else:
            fusion_shape = work_image.shape
        fusion_affine = grid_affine(crop_affine, image.shape, fusion_shape)
        fusion = CoverageFusion(self.t1_segmenter.fusion)
        rng = side_rng(self.settings.seed, box.side)
        for probs in self.t1_segmenter.predictions(work_image, work_zooms, rng, advance):
            if fusion_shape != work_image.shape:
                probs = np.stack([resample(channel, fusion_shape, 1) for channel in probs])
            fusion.add(probs)
        if t2_image is not None and t2_box is not None:
            t2_work = resample(t2_image, t2_grid.shape, 1) if t2_grid else t2_image
            t2_affine = grid_affine(t2_box.affine(self.t2.affine), t2_image.shape, t2_work.shape)
            t1_to_t2 = np.linalg.inv(t2_to_t1)
            t2_rng = side_rng(self.settings.seed, f"{box.side}/t2")
            for probs in self.t2_segmenter.predictions(t2_work, t2_zooms, t2_rng, advance):
                mapped, covered = map_onto(probs, t2_affine, fusion_affine, fusion_shape, t1_to_t2)
                fusion.add(mapped, covered, self.options.t2_weight)
        score = fusion.score()
        label_map = self.t1_segmenter.finish(score.argmax(axis=0).astype(np.uint8))
        uncertainty = fusion.uncertainty() if fusion.predictions > 1 else None
        self.sides.append(SideConsensus(box.side, score, uncertainty, fusion_affine))
        if fusion_shape != image.shape:
            label_map = resample(label_map, image.shape, 0)
            if uncertainty is not None:
                uncertainty = resample(uncertainty, image.shape, 1)
        return CropResult(label_map, uncertainty, fusion.predictions)

    def _t2_seen(self) -> Volume:
        """The T2 volume as seen from the T1 space: same voxels, affine moved by the
        registration, so that T1 RAS points index it directly."""
        assert self.t2 is not None and self.t2_to_t1 is not None
        return Volume(
            array=self.t2.array,
            affine=self.t2_to_t1 @ self.t2.affine,
            path=self.t2.path,
            native_affine=self.t2.native_affine,
            native_shape=self.t2.native_shape,
            to_native=self.t2.to_native,
            codes=self.t2.codes,
        )

    def finish(self, volume: Volume, canonical: np.ndarray) -> None:
        """With ``multispectral.t2_space``: the consensus on the T2's own grid."""
        if not self.options.t2_space or self.t2 is None or self.t2_outputs is None:
            return
        assert self.t2_to_t1 is not None
        t2 = self.t2
        labels = np.zeros(t2.array.shape, dtype=np.uint8)
        uncertainty = np.zeros(t2.array.shape, dtype=np.float32)
        seen = self._t2_seen()
        for side in self.sides:
            corners = box_corners(side.affine, side.score.shape[1:])
            box = covering_box(side.side, corners, seen)
            if box is None:
                continue
            args: tuple[Any, ...] = (side.affine, box.affine(t2.affine), box.shape, self.t2_to_t1)
            score, covered = map_onto(side.score, *args)
            side_labels = np.where(covered, score.argmax(axis=0), 0).astype(np.uint8)
            side_labels = self.t1_segmenter.finish(side_labels)
            region = labels[box.slices]
            free = (side_labels > 0) & (region == 0)
            region[free] = side_labels[free]
            if side.uncertainty is not None:
                mapped, _ = map_onto(side.uncertainty, *args)
                uncertainty[box.slices] = np.maximum(uncertainty[box.slices], mapped)
        outputs = self.t2_outputs
        if any(s.uncertainty is not None for s in self.sides):
            save_nifti(
                t2.native(uncertainty), t2.native_affine, outputs.uncertainty("crop"), t2.codes
            )
        save_nifti(t2.native(labels), t2.native_affine, outputs.segmentation, t2.codes)
