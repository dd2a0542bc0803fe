"""``hsftrain segment``: segment every MRI matching ``files.path``/``files.pattern``.

For each MRI: read it (canonical RAS), decide whether it is already a hippocampus crop or
a whole head (``roiloc.mode``), locate and crop both hippocampi in a whole head, then for
each crop z-normalise, pad to a multiple of 8, predict with every model of
``segmentation.models`` on the plain crop and on ``test_time_num_aug`` augmented copies
mapped back, merge subfields (``segmentation.ca_mode``), fuse (``segmentation.fusion``),
and write the results (see :mod:`hsftrain.inference.writer` for the file names) on the
input's own grid.

A subject whose native segmentation already exists is skipped unless ``files.overwrite``.
A subject that fails (corrupt or 4D file, ...) is logged with its file name and the run
goes on; failures are listed at the end and :func:`segment` then raises
:class:`SegmentError` (the command exits with status 1).
"""

from __future__ import annotations

import fnmatch
import logging
import re
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from hsftrain.config import ConfigError
from hsftrain.data.labels import CA_MERGES, CA_TYPES, merge_lut, merge_probs
from hsftrain.errors import UserError
from hsftrain.inference.engines import OnnxEngine, model_specs, parse_providers, resolve_model
from hsftrain.inference.fusion import FUSIONS, Fusion, keep_largest_component
from hsftrain.inference.image import InputError, Volume, load_volume, save_nifti, strip_extension
from hsftrain.inference.preprocess import pad_to_multiple, unpad, z_normalize
from hsftrain.inference.resample import MODES as RESAMPLE_MODES
from hsftrain.inference.resample import Plan, differs, model_spacing, plan, resample
from hsftrain.inference.roiloc import MODES, Box, is_crop, localize
from hsftrain.inference.tta import sample_augmentations
from hsftrain.inference.writer import (
    Outputs,
    failed_row,
    outputs_for,
    read_volumes,
    save_qc,
    volume_rows,
    write_volumes,
)

log = logging.getLogger(__name__)

_OWN_OUTPUT = re.compile(
    r"_hippocampus_(seg|crop|seg_crop|uncertainty|uncertainty_crop|qc|volumes)"
    r"(_(left|right))?\.(nii\.gz|png|csv)$"
)


class SegmentError(UserError, RuntimeError):
    """Some subjects could not be segmented (the message lists them and why)."""


@dataclass
class Settings:
    """The validated ``segment`` configuration."""

    root: Path
    pattern: str | None
    mask_patterns: list[str]
    output_dir: Path | None
    overwrite: bool
    volumes_csv: Path
    roiloc: dict[str, Any]
    models: list[tuple[str, Any]]
    models_path: str | None
    ca_mode: str
    fusion: str
    num_aug: int
    augmentation: dict[str, Any]
    providers: list[Any]
    batch_size: int
    intra_op_num_threads: int
    inter_op_num_threads: int
    seed: int = 0
    qc: bool = True
    save_crops: bool = True
    largest_component: bool = True
    resample_mode: str = "auto"
    resample_tolerance: float = 0.25


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """Value at dotted ``key``; ``???`` and absent keys give ``default``."""
    if OmegaConf.is_missing(cfg, key.split(".")[0]):
        return default
    value = OmegaConf.select(cfg, key, default=default, throw_on_missing=False)
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def settings_from_config(cfg: DictConfig) -> Settings:
    """Check the ``segment`` config and gather what a run needs.

    Raises:
        ConfigError: a missing or invalid key (the message names it).
    """
    root = _get(cfg, "files.path")
    if not root:
        raise ConfigError("`files.path` must be set: the folder (or file) of MRIs to segment")
    root_path = Path(str(root)).expanduser()
    pattern = _get(cfg, "files.pattern")
    if root_path.is_dir() and not pattern:
        raise ConfigError(
            "`files.pattern` must be set: a glob below files.path, e.g. files.pattern='**/*T1w.nii.gz'"
        )
    masks = _get(cfg, "files.mask_pattern") or []
    masks = [masks] if isinstance(masks, str) else [str(m) for m in masks]
    output_dir = _get(cfg, "files.output_dir")
    out = Path(str(output_dir)).expanduser() if output_dir else None
    base = out if out else (root_path if root_path.is_dir() else root_path.parent)
    volumes_csv = _get(cfg, "files.volumes_csv")
    volumes = Path(str(volumes_csv)).expanduser() if volumes_csv else base / "volumes.csv"
    from hsftrain.validate import check_output_dir, check_output_file

    if out is not None:
        check_output_dir(out, "files.output_dir")
    if volumes_csv:
        check_output_file(volumes, "files.volumes_csv", example="volumes.csv")
    elif not out:  # results go next to the inputs
        check_output_dir(base, "files.output_dir (unset: results go next to the MRIs)")

    roiloc = _get(cfg, "roiloc", {}) or {}
    mode = str(roiloc.get("mode", "auto"))
    if mode not in MODES:
        raise ConfigError(f"roiloc.mode={mode!r}: use one of {', '.join(MODES)}")

    shortcut = _get(cfg, "model_paths")
    models = model_specs(shortcut if shortcut else _get(cfg, "segmentation.models"))
    ca_mode = _get(cfg, "segmentation.ca_mode", "")
    ca_mode = "" if ca_mode is None else str(ca_mode)
    if ca_mode not in ("", *CA_TYPES):
        raise ConfigError(
            f"segmentation.ca_mode={ca_mode!r}: use one of '', {', '.join(map(repr, CA_TYPES))}"
        )
    fusion = str(_get(cfg, "segmentation.fusion", "vote"))
    if fusion not in FUSIONS:
        raise ConfigError(f"segmentation.fusion={fusion!r}: use one of {', '.join(FUSIONS)}")
    num_aug = _get(cfg, "segmentation.test_time_num_aug")
    if num_aug is None:
        num_aug = _get(cfg, "augmentation.test_time_num_aug", 0)
    num_aug = int(num_aug or 0) if _get(cfg, "segmentation.tta", True) else 0
    if num_aug < 0:
        raise ConfigError(f"segmentation.test_time_num_aug={num_aug}: must be >= 0")

    resample_mode = str(_get(cfg, "resample.mode", "auto"))
    if resample_mode not in RESAMPLE_MODES:
        raise ConfigError(
            f"resample.mode={resample_mode!r}: use one of {', '.join(RESAMPLE_MODES)}"
        )
    tolerance = float(_get(cfg, "resample.tolerance", 0.25))
    if not tolerance >= 0:
        raise ConfigError(f"resample.tolerance={tolerance}: must be >= 0 (e.g. 0.25)")

    engine = str(_get(cfg, "hardware.engine", "onnxruntime"))
    if engine != "onnxruntime":
        raise ConfigError(f"hardware.engine={engine!r}: only onnxruntime is supported")
    settings = _get(cfg, "hardware.engine_settings", {}) or {}
    batch_size = int(settings.get("batch_size", 1) or 1)
    if batch_size < 1:
        raise ConfigError("hardware.engine_settings.batch_size must be >= 1")
    return Settings(
        root=root_path,
        pattern=str(pattern) if pattern else None,
        mask_patterns=masks,
        output_dir=out,
        overwrite=bool(_get(cfg, "files.overwrite", False)),
        volumes_csv=volumes,
        roiloc=roiloc,
        models=models,
        models_path=_get(cfg, "segmentation.models_path"),
        ca_mode=ca_mode,
        fusion=fusion,
        num_aug=num_aug,
        augmentation=_get(cfg, "augmentation", {}) or {},
        providers=parse_providers(settings.get("execution_providers")),
        batch_size=batch_size,
        intra_op_num_threads=int(settings.get("intra_op_num_threads", 0) or 0),
        inter_op_num_threads=int(settings.get("inter_op_num_threads", 0) or 0),
        seed=int(_get(cfg, "seed", 0) or 0),
        qc=bool(_get(cfg, "qc", True)),
        save_crops=bool(_get(cfg, "save_crops", True)),
        largest_component=bool(_get(cfg, "segmentation.largest_component", True)),
        resample_mode=resample_mode,
        resample_tolerance=tolerance,
    )


def find_mris(root: Path, pattern: str | None, mask_patterns: Sequence[str] = ()) -> list[Path]:
    """MRIs under ``root`` matching ``pattern``, minus ``mask_patterns`` and our own outputs.

    ``mask_patterns`` are globs matched against the file name and against its path relative
    to ``root``. Files written by ``hsftrain segment`` and temporary files are always left out.

    Raises:
        ConfigError: an absolute ``pattern``.
        FileNotFoundError: ``root`` does not exist, or nothing matches.
    """
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"files.path={root} does not exist")
    if pattern and Path(pattern).is_absolute():
        raise ConfigError(
            f"files.pattern={pattern!r} must be relative to files.path (e.g. '**/*T1w.nii.gz')"
        )
    found = []
    for path in sorted(root.glob(pattern or "*")):
        if not path.is_file() or path.name.startswith(".") or _OWN_OUTPUT.search(path.name):
            continue
        relative = path.relative_to(root).as_posix()
        if any(
            fnmatch.fnmatch(path.name, m) or fnmatch.fnmatch(relative, m) for m in mask_patterns
        ):
            continue
        found.append(path)
    if not found:
        masks = f" (excluding {list(mask_patterns)})" if mask_patterns else ""
        raise FileNotFoundError(
            f"no MRI matches files.pattern={pattern!r} under files.path={root}{masks}"
        )
    return found


@dataclass
class CropResult:
    """Fused segmentation of one crop."""

    label_map: np.ndarray  # (X, Y, Z) uint8
    uncertainty: np.ndarray | None  # (X, Y, Z) float32 in [0, 1], None for one prediction
    n_predictions: int


def _ca_names(ca_mode: str) -> set[str]:
    """Class names a granularity merges or produces (``CA2``, ``CA3``, ``CA2/3`` for 1/23)."""
    table = CA_MERGES.get(ca_mode, {})
    return set(table) | set(table.values())


class Segmenter:
    """Models + test-time augmentation + subfield merging + fusion, for one crop at a time.

    Args:
        engines: loaded models, all with the same class names.
        augmentation: the ``augmentation`` config (flip/affine/elastic).
        num_aug: augmented predictions per model, on top of the plain one.
        fusion: "vote" or "mean".
        ca_mode: subfield granularity ("" keeps the model's classes).
        batch_size: augmented copies stacked per model call.
        largest_component: keep only the largest connected foreground component of each
            crop (one hippocampus per crop).

    Raises:
        ConfigError: the models disagree on their classes.
    """

    def __init__(
        self,
        engines: Sequence[OnnxEngine],
        augmentation: Mapping[str, Any] | None = None,
        num_aug: int = 0,
        fusion: str = "vote",
        ca_mode: str = "",
        batch_size: int = 1,
        largest_component: bool = False,
    ) -> None:
        self.engines = list(engines)
        names = self.engines[0].labels_names
        for engine in self.engines[1:]:
            if engine.labels_names != names:
                raise ConfigError(
                    f"segmentation.models disagree on their classes: {self.engines[0].path.name} "
                    f"has {names}, {engine.path.name} has {engine.labels_names}"
                )
        self.model_names = list(names)
        self.ca_mode = ca_mode
        lut, merged = merge_lut(self.model_names, ca_mode or "1/2/3")
        self.names = list(merged) if ca_mode else list(names)
        # "" or a granularity that merges nothing here: no work per prediction
        self.merges = bool(ca_mode) and bool((lut != np.arange(len(lut))).any())
        if CA_MERGES.get(ca_mode) and not self.merges and not set(names) & _ca_names(ca_mode):
            log.warning(
                "segmentation.ca_mode=%r cannot apply to the classes of %s (%s): nothing is "
                "merged, the model's own classes are written",
                ca_mode,
                self.engines[0].path.name,
                ", ".join(n for n in names[1:]),
            )
        self.augmentation = dict(augmentation or {})
        self.num_aug = int(num_aug)
        self.fusion = fusion
        self.batch_size = max(1, int(batch_size))
        self.largest_component = bool(largest_component)
        #: voxel size (mm, RAS axes) the models were trained at; None: unknown
        self.spacing = model_spacing([getattr(e, "metadata", {}) or {} for e in self.engines])

    @classmethod
    def from_settings(cls, engines: Sequence[OnnxEngine], settings: Settings) -> Segmenter:
        """The segmenter a ``segment`` run uses: its TTA, fusion, ca_mode and batch size."""
        return cls(
            engines,
            settings.augmentation,
            settings.num_aug,
            settings.fusion,
            settings.ca_mode,
            settings.batch_size,
            settings.largest_component,
        )

    @property
    def predictions_per_crop(self) -> int:
        return len(self.engines) * (1 + self.num_aug)

    def segment_crop(
        self,
        image: np.ndarray,
        zooms: Sequence[float],
        rng: np.random.Generator,
        advance: Callable[[int], None] | None = None,
    ) -> CropResult:
        """Segment a canonical ``(X, Y, Z)`` crop (raw intensities)."""
        normalized = z_normalize(image)
        # each model gets the padding it was trained with: the image minimum for hsftrain
        # models (hsftrain.data.transforms.fit_shape), zeros for others (HSF's models)
        padded = {}
        for by_minimum in {e.pads_with_minimum for e in self.engines}:
            value = float(normalized.min()) if by_minimum else 0.0
            padded[by_minimum], crop = pad_to_multiple(normalized, 8, value)
        shape = next(iter(padded.values())).shape
        augmentations = sample_augmentations(self.augmentation, self.num_aug, shape, zooms, rng)
        fusion = Fusion(self.fusion)
        for start in range(0, len(augmentations), self.batch_size):
            chunk = augmentations[start : start + self.batch_size]
            inputs = {
                key: np.stack([a.apply(volume) for a in chunk])[:, None]
                for key, volume in padded.items()
            }
            for engine in self.engines:
                probs = engine.predict(inputs[engine.pads_with_minimum])
                for augmentation, p in zip(chunk, probs, strict=True):
                    back = unpad(augmentation.invert(p), crop)
                    if self.merges:
                        back = merge_probs(back, self.model_names, self.ca_mode)
                    fusion.add(back)
                if advance:
                    advance(len(chunk))
        uncertainty = fusion.uncertainty() if fusion.count > 1 else None
        label_map = fusion.label_map()
        if self.largest_component:
            label_map = keep_largest_component(label_map)
        return CropResult(label_map, uncertainty, fusion.count)


@dataclass
class SubjectReport:
    subject: str
    mri: Path
    status: str  # done | flagged | skipped | failed
    seconds: float = 0.0
    sides: list[str] = field(default_factory=list)
    volumes_mm3: dict[str, float] = field(default_factory=dict)
    error: str = ""
    flags: list[str] = field(default_factory=list)


class ProgressHook:
    """Progress callbacks: a new crop starts (``start``), predictions are done (``advance``)."""

    def __init__(self, progress: Any, task: Any) -> None:
        self.progress = progress
        self.task = task

    def start(self, description: str, total: int) -> None:
        self.progress.reset(self.task, total=total, description=f"predictions {description}")

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)


def subject_name(mri: Path, root: Path) -> str:
    """Subject id in volumes.csv: the path below ``files.path``, without extension."""
    try:
        relative = mri.relative_to(root) if root.is_dir() else Path(mri.name)
    except ValueError:
        relative = Path(mri.name)
    return (relative.parent / strip_extension(relative.name)).as_posix()


def _rng(seed: int, side: str) -> np.random.Generator:
    """The TTA random generator of one crop: from ``seed`` and the side only, never the
    file's name or orientation, so that the same image gives the same volumes however its
    file is named or its axes are stored."""
    return np.random.default_rng([seed, zlib.crc32(side.encode())])


def _resampling(
    image: np.ndarray, zooms: Any, segmenter: Segmenter, settings: Settings, where: str
) -> Plan | None:
    """The grid a crop is segmented on when its voxel size is far from the models'."""
    spacing = segmenter.spacing
    if settings.resample_mode == "off" or not differs(zooms, spacing, settings.resample_tolerance):
        return None
    sizes = "x".join(f"{z:.2g}" for z in zooms)
    model = "x".join(f"{z:.2g}" for z in spacing or ())
    if settings.resample_mode == "warn":
        log.warning(
            "%s: voxel size %s mm, the model was trained at %s mm: segmenting as it is "
            "(resample.mode=auto resamples to the model's voxel size and back)",
            where,
            sizes,
            model,
        )
        return None
    target = plan(image.shape, zooms, spacing)  # type: ignore[arg-type]
    log.info(
        "%s: voxel size %s mm, the model was trained at %s mm: segmenting on a %s grid, "
        "result mapped back (resample.mode=warn to segment as it is)",
        where,
        sizes,
        model,
        "x".join(map(str, target.shape)),
    )
    return target


def locate(volume: Volume, settings: Settings) -> tuple[list[Box], str]:
    """The crops of ``volume`` (the whole image for a crop input, else both hippocampi)
    and why the whole-head localisation looks wrong ("" when it looks fine)."""
    roiloc = settings.roiloc
    if is_crop(volume, str(roiloc.get("mode", "auto")), float(roiloc.get("crop_max_fov_mm", 80))):
        return [Box("crop", (0, 0, 0), volume.array.shape)], ""  # type: ignore[arg-type]
    found = localize(volume, roiloc, seed=settings.seed)
    return found.boxes, found.problem


def image_problem(array: np.ndarray) -> str:
    """Why an image holds nothing to segment: constant, or nearly (99% of its voxels one
    value); "" otherwise."""
    if not array.size:
        return "is empty"
    lo, hi = float(array.min()), float(array.max())
    if hi - lo <= 0:
        return f"is constant (every voxel is {lo:g})"
    p_lo, p_hi = (float(v) for v in np.percentile(array, [0.5, 99.5]))
    if p_hi - p_lo <= 1e-6 * max(abs(p_lo), abs(p_hi), 1.0):
        return f"is nearly constant (99% of its voxels are {p_lo:g})"
    return ""


def segment_subject(
    mri: Path,
    outputs: Outputs,
    subject: str,
    segmenter: Segmenter,
    settings: Settings,
    bar: ProgressHook | None = None,
) -> SubjectReport:
    """Segment one MRI and write its outputs (the native segmentation last).

    Results that should not be trusted as they are (NaN voxels in the input, a poor
    whole-head registration, a crop where no hippocampus was found) are written with the
    reason in the ``flag`` column of their volumes and the status ``flagged``.

    Raises:
        InputError: unreadable, non-3D, constant or nearly constant input, or a constant
            crop (before anything is written).
    """
    start = time.perf_counter()
    for stale in outputs.stale_temporaries():
        stale.unlink(missing_ok=True)
    volume = load_volume(mri)
    problem = image_problem(volume.array)
    if problem:
        raise InputError(
            f"{mri}: the image {problem}: there is nothing to segment; check the file, or "
            "leave it out with files.mask_pattern"
        )
    flags = []
    if volume.nonfinite_voxels:
        flags.append(f"{volume.nonfinite_voxels} NaN/Inf voxels read as 0")
    boxes, where = locate(volume, settings)
    if where:
        flags.append(where)
    for box in boxes:
        problem = image_problem(volume.array[box.slices])
        if problem and box.side != "crop":
            raise InputError(
                f"{mri}: the {box.side} hippocampus crop {problem}: the box missed the "
                "head; check the image and the roiloc settings (roiloc.mode=crop for crops)"
            )
    crop_input = boxes[0].side == "crop"
    voxel_mm3 = float(abs(np.linalg.det(volume.affine[:3, :3])))
    canonical = np.zeros(volume.array.shape, dtype=np.uint8)
    rows: list[dict[str, object]] = []
    report = SubjectReport(subject, mri, "done", flags=list(flags))
    for box in boxes:
        image = volume.array[box.slices]
        if bar:
            bar.start(f"{subject} {box.side}", segmenter.predictions_per_crop)
        grid = _resampling(image, volume.zooms, segmenter, settings, f"{subject} {box.side}")
        result = segmenter.segment_crop(
            resample(image, grid.shape, 1) if grid else image,
            grid.zooms if grid else volume.zooms,
            _rng(settings.seed, box.side),
            bar.advance if bar else None,
        )
        if grid:
            result = CropResult(
                resample(result.label_map, image.shape, 0),
                None
                if result.uncertainty is None
                else resample(result.uncertainty, image.shape, 1),
                result.n_predictions,
            )
        labels = result.label_map
        affine = box.affine(volume.affine)
        if not crop_input:
            if settings.save_crops:
                save_nifti(image.astype(np.float32), affine, outputs.image_crop(box.side))
            save_nifti(labels, affine, outputs.segmentation_crop(box.side))
        if result.uncertainty is not None:
            if crop_input:
                save_nifti(
                    volume.native(result.uncertainty),
                    volume.native_affine,
                    outputs.uncertainty(box.side),
                    volume.codes,
                )
            else:
                save_nifti(result.uncertainty, affine, outputs.uncertainty(box.side))
        if settings.qc:
            save_qc(
                image,
                labels,
                volume.zooms,
                outputs.qc(box.side),
                f"{subject} ({box.side})",
                segmenter.names,
            )
        side_flags = list(flags)
        if not (labels > 0).any():
            side_flags.append(f"no hippocampus found in the {box.side} crop")
            report.flags.append(side_flags[-1])
        side_rows = volume_rows(
            subject, box.side, labels, segmenter.names, voxel_mm3, "; ".join(side_flags)
        )
        rows += side_rows
        report.sides.append(box.side)
        report.volumes_mm3[box.side] = float(sum(float(r["volume_mm3"]) for r in side_rows))  # type: ignore[arg-type]
        region = canonical[box.slices]
        free = (labels > 0) & (region == 0)  # overlapping boxes: the first side keeps its labels
        region[free] = labels[free]
    write_volumes(rows, outputs.volumes)
    save_nifti(volume.native(canonical), volume.native_affine, outputs.segmentation, volume.codes)
    report.seconds = time.perf_counter() - start
    if report.flags:
        report.status = "flagged"
        log.warning("%s: flagged: %s", mri, "; ".join(report.flags))
    return report


def load_engines(settings: Settings) -> list[OnnxEngine]:
    """Resolve (download if needed) and load every configured model."""
    engines = []
    for name, spec in settings.models:
        path = resolve_model(name, spec, settings.models_path)
        engine = OnnxEngine(
            path,
            settings.providers,
            batch_size=settings.batch_size,
            intra_op_num_threads=settings.intra_op_num_threads,
            inter_op_num_threads=settings.inter_op_num_threads,
        )
        log.info("model %s: %s on %s", name, path, ", ".join(engine.providers))
        engines.append(engine)
    return engines


def rebuild_volumes(reports: Sequence[SubjectReport], settings: Settings) -> Path | None:
    """Gather the per-subject tables of every finished subject into ``volumes.csv``, and
    one ``failed: <why>`` row (no volumes) per failed subject."""
    rows: list[dict[str, object]] = []
    for report in reports:
        if report.status == "failed":
            rows.append(failed_row(report.subject, report.error))
            continue
        if report.status not in ("done", "flagged", "skipped"):
            continue
        table = outputs_for(report.mri, settings.root, settings.output_dir).volumes
        if table.is_file():
            rows += read_volumes(table)
        else:
            log.warning(
                "%s: %s is missing, its volumes are left out of volumes.csv (rerun with "
                "files.overwrite=true to rebuild them)",
                report.mri,
                table.name,
            )
    if not rows:
        return None
    return write_volumes(rows, settings.volumes_csv)


def _failure(mri: Path, err: Exception) -> str:
    """One line saying why ``mri`` failed: the error's own message (naming the file) for
    a user error; for anything else its type too, and what to try for out-of-memory."""
    from hsftrain.errors import is_out_of_memory

    text = " ".join(str(err).split())
    if not isinstance(err, UserError | OSError):
        hint = (
            ": out of memory, try hardware.engine_settings.batch_size=1 or fewer models/views"
            if is_out_of_memory(err)
            else " (internal error: a bug, please report it with the traceback)"
        )
        text = f"{type(err).__name__}: {text}{hint}"
    return text if str(mri) in text else f"{mri}: {text}"


def _summary(reports: Sequence[SubjectReport], volumes: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="hsftrain segment")
    for column in ("subject", "status", "sides", "volume (mm3)", "seconds"):
        table.add_column(column, justify="right" if column in ("seconds",) else "left")
    style = {"done": "green", "flagged": "yellow", "skipped": "yellow", "failed": "red"}
    for r in reports:
        volumes_text = ", ".join(f"{s} {v:.0f}" for s, v in r.volumes_mm3.items())
        table.add_row(
            r.subject,
            f"[{style[r.status]}]{r.status}[/]",
            ", ".join(r.sides),
            volumes_text,
            f"{r.seconds:.1f}" if r.status in ("done", "flagged") else "",
        )
    console = Console()
    console.print(table)
    counts = {
        s: sum(r.status == s for r in reports) for s in ("done", "flagged", "skipped", "failed")
    }
    flagged = (
        f", {counts['flagged']} flagged (segmented, but see why in the flag column of volumes.csv)"
        if counts["flagged"]
        else ""
    )
    console.print(
        f"{counts['done']} segmented{flagged}, {counts['skipped']} skipped (already segmented; "
        f"files.overwrite=true to redo), {counts['failed']} failed"
        + (f"; volumes: {volumes}" if volumes else "")
    )


def segment(cfg: DictConfig) -> list[Path]:
    """Segment every MRI matching ``files.path``/``files.pattern`` (the HSF workflow).

    Returns:
        the native-space segmentation of every finished subject (segmented now or skipped
        because already done), in the order the files were found.

    Raises:
        ConfigError: invalid configuration (names the key).
        FileNotFoundError: no MRI matches ``files.pattern`` under ``files.path``.
        SegmentError: some subjects failed (the others are written).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    settings = settings_from_config(cfg)
    mris = find_mris(settings.root, settings.pattern, settings.mask_patterns)
    reports: list[SubjectReport] = []
    todo: list[tuple[Path, Outputs, str]] = []
    for mri in mris:
        outputs = outputs_for(mri, settings.root, settings.output_dir)
        subject = subject_name(mri, settings.root)
        if outputs.segmentation.is_file() and not settings.overwrite:
            log.info("%s: already segmented (%s), skipping", mri, outputs.segmentation.name)
            reports.append(SubjectReport(subject, mri, "skipped"))
        else:
            todo.append((mri, outputs, subject))
    log.info(
        "%d MRI(s) found under %s: %d to segment, %d already done",
        len(mris),
        settings.root,
        len(todo),
        len(mris) - len(todo),
    )
    if todo:
        views = 1 + settings.num_aug
        log.info(
            "about to run %d model(s) x %d view(s) = %d predictions per crop (%s)%s",
            len(settings.models),
            views,
            len(settings.models) * views,
            _get(cfg, "segmentation.description", "") or "segmentation.models",
            "; segmentation.tta=false for one view per model" if views > 1 else "",
        )
        engines = load_engines(settings)
        segmenter = Segmenter.from_settings(engines, settings)
        log.info(
            "%d model(s) x %d view(s) (test_time_num_aug=%d), fusion=%s, ca_mode=%r, classes %s",
            len(engines),
            1 + settings.num_aug,
            settings.num_aug,
            settings.fusion,
            settings.ca_mode,
            [n for n in segmenter.names if n],
        )
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns) as progress:
            subjects_task = progress.add_task("subjects", total=len(todo))
            hook = ProgressHook(progress, progress.add_task("predictions", total=None))
            for mri, outputs, subject in todo:
                try:
                    report = segment_subject(mri, outputs, subject, segmenter, settings, hook)
                except Exception as err:  # keep going: report every failure at the end
                    report = SubjectReport(subject, mri, "failed", error=_failure(mri, err))
                    internal = not isinstance(err, UserError | OSError)
                    log.error("%s", report.error, exc_info=internal)
                reports.append(report)
                progress.advance(subjects_task)
    order = {m: i for i, m in enumerate(mris)}
    reports.sort(key=lambda r: order[r.mri])
    volumes = rebuild_volumes(reports, settings)
    _summary(reports, volumes)
    failed = [r for r in reports if r.status == "failed"]
    if failed:
        why = "; ".join(r.error for r in failed)
        raise SegmentError(
            f"{len(failed)} of {len(reports)} MRI(s) failed (the others are written; each "
            f"failure has a row in {settings.volumes_csv.name}): {' '.join(why.split())}"
        )
    return [outputs_for(r.mri, settings.root, settings.output_dir).segmentation for r in reports]
