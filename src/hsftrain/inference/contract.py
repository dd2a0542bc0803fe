"""Is a result one to trust? Each crop and subject compared with what the models were trained
on (their ONNX metadata, :mod:`hsftrain.export.contract`) and with plain anatomy.

A result that fails a check is still written, with the reason in the ``flag`` column of
its volumes and the status ``flagged`` (never ``done``):

* **contrast**: the crop's :func:`~hsftrain.data.contrast.contrast_index` lies beyond the
  training range by more than ``checks.contrast_tolerance``, towards the other contrast (a
  T2 crop given to a model trained on T1 only, or the reverse);
* **volume**: a class, or the whole hippocampus, below ``1 / checks.volume_factor`` of the
  training's 1st percentile or above ``checks.volume_factor`` times its 99th;
* **empty class**: a class of the model with no voxel in a crop that holds a hippocampus
  (``checks.empty_class``);
* **uncertainty**: mean uncertainty inside the hippocampus above
  ``checks.max_uncertainty`` (only when several predictions were fused);
* **asymmetry**: left and right whole hippocampi of one head differing by more than
  ``checks.max_asymmetry`` of their mean.

Models without these metadata keys (HSF's, or exported before they existed) get only the
checks that need none (empty class, uncertainty, asymmetry); a preset can supply the keys
for its models (``segmentation.model_metadata``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hsftrain.core.onnx_metadata import CONTRASTS_KEY, FINGERPRINT_KEY, VOLUME_RANGE_KEY, WHOLE
from hsftrain.data.contrast import contrast_index


@dataclass(frozen=True)
class Checks:
    """Thresholds of the checks (the ``checks`` keys; None turns a check off)."""

    contrast_tolerance: float | None = 0.5
    volume_factor: float | None = 3.0
    max_asymmetry: float | None = 0.5
    max_uncertainty: float | None = 0.3
    empty_class: bool = True


def _pair(value: Any) -> tuple[float, float] | None:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (lo, hi) if np.isfinite([lo, hi]).all() and lo <= hi else None


@dataclass(frozen=True)
class Contract:
    """What the models of a run were trained on, from their metadata (several models: the
    union of their contrasts and ranges; a key no model has: unknown, its check skipped)."""

    contrasts: tuple[str, ...] = ()
    #: 1st and 99th percentile of the training crops' contrast index
    contrast_range: tuple[float, float] | None = None
    #: per class name (and ``hippocampus``): 1st and 99th percentile of the volumes, mm3
    volume_range: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, metadata: Sequence[Mapping[str, Any]]) -> Contract:
        """The contract of models with these (decoded) metadata; malformed keys are ignored."""
        contrasts: set[str] = set()
        lows: list[float] = []
        highs: list[float] = []
        volumes: dict[str, tuple[float, float]] = {}
        for meta in metadata:
            found = meta.get(CONTRASTS_KEY)
            if isinstance(found, list):
                contrasts |= {str(c).upper() for c in found}
            fingerprint = meta.get(FINGERPRINT_KEY)
            index = fingerprint.get("contrast_index") if isinstance(fingerprint, Mapping) else None
            if isinstance(index, list) and len(index) == 3:
                pair = _pair((index[0], index[2]))
                if pair:
                    lows.append(pair[0])
                    highs.append(pair[1])
            ranges = meta.get(VOLUME_RANGE_KEY)
            for name, value in ranges.items() if isinstance(ranges, Mapping) else ():
                pair = _pair(value)
                if pair:
                    old = volumes.get(str(name), pair)
                    volumes[str(name)] = (min(old[0], pair[0]), max(old[1], pair[1]))
        return cls(
            tuple(sorted(contrasts)),
            (min(lows), max(highs)) if lows else None,
            volumes,
        )

    def contrast_flag(
        self, image: np.ndarray, zooms: Sequence[float], checks: Checks, where: str
    ) -> str:
        """Why ``image`` (a raw crop) does not look like the training crops' contrast; ""
        when it does, or when the models' contrast or fingerprint is unknown."""
        tolerance = checks.contrast_tolerance
        if tolerance is None or self.contrast_range is None or len(self.contrasts) != 1:
            return ""
        index = contrast_index(image, zooms)
        if index is None:
            return ""
        lo, hi = self.contrast_range
        trained = self.contrasts[0]
        if trained == "T1" and index > hi + tolerance:
            limit, looks = hi + tolerance, "T2"
        elif trained == "T2" and index < lo - tolerance:
            limit, looks = lo - tolerance, "T1"
        else:
            return ""
        return (
            f"{where}: contrast index {index:+.2f} looks {looks}-weighted, the models were "
            f"trained on {trained} ({lo:+.2f} to {hi:+.2f}, flagged beyond {limit:+.2f}: "
            "checks.contrast_tolerance)"
        )

    def crop_flags(
        self,
        label_map: np.ndarray,
        uncertainty: np.ndarray | None,
        names: Sequence[str],
        voxel_mm3: float,
        checks: Checks,
        where: str,
    ) -> list[str]:
        """Why the segmentation of one crop looks wrong: empty classes, volumes far outside
        the training range, high uncertainty (nothing for a crop without hippocampus:
        that has its own flag)."""
        foreground = label_map > 0
        if not foreground.any():
            return []
        counts = np.bincount(label_map.ravel().astype(np.int64), minlength=len(names))
        flags = []
        present = [(v, n) for v, n in enumerate(names) if v and n]
        empty = [n for v, n in present if not counts[v]]
        if checks.empty_class and empty:
            flags.append(f"{where}: no {', '.join(empty)} voxel (checks.empty_class)")
        volumes = {n: float(counts[v]) * voxel_mm3 for v, n in present if counts[v]}
        volumes[WHOLE] = float(counts[1:].sum()) * voxel_mm3
        factor = checks.volume_factor
        for name, volume in volumes.items():
            known = self.volume_range.get(name)
            if factor is None or known is None:
                continue
            lo, hi = known
            if volume < lo / factor or volume > hi * factor:
                flags.append(
                    f"{where}: {name} {volume:.0f} mm3, outside {lo / factor:.0f}-"
                    f"{hi * factor:.0f} mm3 (training {lo:.0f}-{hi:.0f} mm3, "
                    f"checks.volume_factor {factor:g})"
                )
        limit = checks.max_uncertainty
        if limit is not None and uncertainty is not None:
            mean = float(uncertainty[foreground].mean())
            if mean > limit:
                flags.append(
                    f"{where}: mean uncertainty {mean:.2f} inside the hippocampus > "
                    f"checks.max_uncertainty {limit:g}"
                )
        return flags


def asymmetry_flag(volumes_mm3: Mapping[str, float], checks: Checks) -> str:
    """Why the left and right hippocampi of one head differ too much ("" when they do not,
    or when a side is missing)."""
    limit = checks.max_asymmetry
    if limit is None or not {"left", "right"} <= set(volumes_mm3):
        return ""
    left, right = float(volumes_mm3["left"]), float(volumes_mm3["right"])
    mean = (left + right) / 2
    if mean <= 0:
        return ""
    asymmetry = abs(left - right) / mean
    if asymmetry <= limit:
        return ""
    return (
        f"left and right hippocampus {left:.0f} / {right:.0f} mm3 differ by "
        f"{100 * asymmetry:.0f}% of their mean (> checks.max_asymmetry {limit:g})"
    )
