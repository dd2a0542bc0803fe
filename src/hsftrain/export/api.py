"""``hsftrain export``: checkpoint -> verified ONNX model with metadata (optionally int8)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xxhash
from omegaconf import DictConfig

from hsftrain.config.compose import require
from hsftrain.config.values import plain
from hsftrain.core.errors import ConfigError, ExportError
from hsftrain.core.nonfinite import check_finite_state
from hsftrain.export.onnx import OnnxOptions, export_onnx
from hsftrain.training.checkpoint import load_network

log = logging.getLogger(__name__)

QUANTIZE = ("int8",)


def config_hash(config: Mapping[str, Any]) -> str:
    """xxh3_64 of the training config (sorted JSON), stored in exported models."""
    return xxhash.xxh3_64_hexdigest(json.dumps(config, sort_keys=True, default=str).encode())


def fp32_companion(out: Path) -> Path:
    """Where the fp32 model of an int8 export goes: a name derived from ``out``,
    ``m.int8.onnx`` -> ``m.int8.fp32.onnx``, ``m.onnx`` -> ``m.fp32.onnx`` (never the name of
    the run's own ``model.onnx``, which the fp32 model of another checkpoint would replace)."""
    return out.with_name(out.name.removesuffix(".onnx") + ".fp32.onnx")


def check_companion_free(out: Path) -> Path:
    """The fp32 companion of an int8 export to ``out``, which must not exist yet: an export
    never replaces a model it was not asked to write.

    Raises:
        ConfigError: the companion exists (names it, and ``out`` to choose another).
    """
    companion = fp32_companion(out)
    if companion.exists():
        raise ConfigError(
            f"{companion} exists: an int8 export to out={out} writes its fp32 model there and "
            "does not replace a file; move that file away, or choose another out="
        )
    return companion


def export_checkpoint(
    ckpt: str | Path,
    out: str | Path | None = None,
    quantize: str | None = None,
    calibration: Mapping[str, Any] | None = None,
    verify: Mapping[str, Any] | None = None,
    quantization: Mapping[str, Any] | None = None,
    weights: str = "float32",
) -> Path:
    """Export an hsftrain checkpoint to ONNX, verified; optionally int8-quantized.

    Args:
        ckpt: checkpoint written by ``hsftrain train`` / ``finetune``.
        out: the model to write. Default: next to the checkpoint, ``<ckpt>.onnx`` (fp32)
            or ``<ckpt>.int8.onnx`` (int8).
        quantize: ``None`` (fp32) or ``"int8"``: static post-training quantization; the
            fp32 model is written too, to a name that must be free (:func:`fp32_companion`).
        calibration, quantization: the ``calibration`` and ``quantization`` keys (see
            :class:`hsftrain.compression.quantize.QuantConfig`).
        verify: ``num_images`` / ``min_agreement`` / ``max_mean_abs_diff`` of the int8 check.
        weights: ``float32`` or ``float16`` (weights stored in half precision, half the file,
            computed in float32; not with ``quantize``).

    Returns:
        The path of the requested model (the int8 one when quantizing).

    Raises:
        ConfigError: unknown ``quantize``, bad calibration settings, or (int8) an existing
            file where the fp32 model would go.
        NonFiniteError: the checkpoint holds NaN/Inf weights (nothing is written).
        ExportError: the exported model does not match PyTorch (fp32: max abs difference
            above :data:`~hsftrain.export.onnx.FLOAT_ATOL`) or the fp32 model (int8: see
            :func:`hsftrain.compression.quantize.verify_quantized`).
    """
    _check_formats(quantize, weights)
    ckpt = Path(ckpt)
    default_suffix = ".int8.onnx" if quantize else ".onnx"
    out = Path(out) if out else ckpt.with_name(ckpt.name.removesuffix(ckpt.suffix) + default_suffix)
    if quantize:
        check_companion_free(out)  # refused before the (slow) export
    net, info = load_network(ckpt)
    check_finite_state(net.state_dict(), ckpt)
    metadata = _model_metadata(ckpt, info)
    if not quantize:
        path = export_onnx(
            net, out, metadata, options=OnnxOptions(half_weights=weights == "float16")
        )
        log.info("exported %s -> %s", ckpt, path)
        return path
    from hsftrain.compression.quantize import QuantConfig

    calib = QuantConfig.from_mappings(quantization, calibration)
    return _export_int8(ckpt, (net, info), out, metadata, calib, verify)


def _check_formats(quantize: str | None, weights: str) -> None:
    """``quantize`` and ``weights``: known values, not both set.

    Raises:
        ConfigError: an unknown value, or float16 weights with int8.
    """
    if quantize is not None and str(quantize) not in QUANTIZE:
        raise ConfigError(f"quantize={quantize!r}: use null (fp32) or one of {list(QUANTIZE)}")
    if weights not in ("float32", "float16"):
        raise ConfigError(f"weights={weights!r}: use float32 or float16")
    if weights == "float16" and quantize:
        raise ConfigError(
            "weights=float16 with quantize=int8: int8 stores its own weights; drop one"
        )


def _model_metadata(ckpt: Path, info: Any) -> dict[str, Any]:
    """What the exported model records about its training (classes, network, spacing,
    training contract, field of view)."""
    metadata = {
        "labels_names": info.class_names,
        "num_classes": len(info.class_names),
        "ca_mode": info.ca_mode,
        "model_name": info.name,
        "config_hash": config_hash(info.config),
        "f_maps": info.hparams.get("f_maps"),
    }
    from hsftrain.export.spacing import spacing_metadata

    metadata.update(spacing_metadata(ckpt, info.config))  # spacing_mm, spacing_mm_counts
    from hsftrain.export.contract import training_contract

    # contrasts, intensity_fingerprint, volume_range_mm3
    metadata.update(training_contract(ckpt, info.config, info.class_names))
    from hsftrain.export.field_of_view import field_of_view_metadata

    metadata.update(field_of_view_metadata(ckpt, info.config))  # field_of_view_mm
    return metadata


def _export_int8(
    ckpt: Path,
    loaded: tuple[Any, Any],
    out: Path,
    metadata: dict[str, Any],
    calib: Any,
    verify: Mapping[str, Any] | None,
) -> Path:
    """The fp32 model beside ``out``, then its int8 quantization at ``out``, checked
    against it (the int8 file is removed when the check fails).

    Raises:
        ConfigError: no calibration images, or a file where the fp32 model would go.
        ExportError: the int8 model disagrees with the fp32 one.
    """
    from hsftrain.compression.quantize import quantize_int8, verify_quantized
    from hsftrain.export.calibration import glob_images, pick, run_training_images

    net, info = loaded
    # Find the calibration images before the (slower) export, to fail early.
    if calib.path:
        candidates = glob_images(calib.path, calib.pattern)
    else:
        candidates = run_training_images(ckpt, info.config)
    images = pick(candidates, calib.num_images)
    fp32_path = export_onnx(net, check_companion_free(out), metadata)  # still free
    log.info("exported %s -> %s (fp32)", ckpt, fp32_path)
    path = quantize_int8(fp32_path, out, images, calib)
    v = dict(verify or {})
    try:
        verify_quantized(
            fp32_path,
            path,
            pick(images, int(v.get("num_images") or 2)),
            min_agreement=float(v.get("min_agreement", 0.98)),
            max_mean_abs_diff=float(v.get("max_mean_abs_diff", 0.02)),
        )
    except ExportError:
        path.unlink(missing_ok=True)
        raise
    log.info("quantized %s -> %s (int8)", fp32_path, path)
    return path


def _mapping(cfg: DictConfig, key: str) -> dict[str, Any]:
    value = plain(cfg.get(key))
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    raise ConfigError(f"`{key}` must be a mapping, not {value!r}")


def export(cfg: DictConfig) -> Path:
    """CLI entry: ``hsftrain export ckpt=PATH [out=FILE] [quantize=int8]``.

    Raises:
        ConfigError: ``ckpt`` unset or a folder, ``out`` a folder or not writable.
        FileNotFoundError: no checkpoint at ``ckpt``.
        ExportError, NonFiniteError: see :func:`export_checkpoint`.
    """
    ckpt = Path(
        str(require(cfg, "ckpt", "the .ckpt to export, e.g. ckpt=runs/x/checkpoints/last.ckpt"))
    )
    if ckpt.is_dir():
        raise ConfigError(
            f"ckpt={ckpt} is a folder: give the checkpoint file, e.g. "
            f"ckpt={ckpt / 'checkpoints' / 'last.ckpt'}"
        )
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt={ckpt}: no such checkpoint")
    quantize = cfg.get("quantize")
    out = cfg.get("out")
    from hsftrain.config.checks import check_output_file

    if out is not None:
        check_output_file(str(out), "out", example="model.onnx")
    else:
        check_output_file(ckpt.with_suffix(".onnx"), "out (default: next to ckpt)")
    return export_checkpoint(
        ckpt,
        out,
        quantize=str(quantize) if quantize else None,
        calibration=_mapping(cfg, "calibration"),
        verify=_mapping(cfg, "verify"),
        quantization=_mapping(cfg, "quantization"),
        weights=str(cfg.get("weights") or "float32"),
    )
