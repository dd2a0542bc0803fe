"""int8 static post-training quantization (ONNX Runtime, QDQ) of an exported fp32 model.

The fp32 ONNX model is pre-processed (``quant_pre_process``: graph optimisation and shape
inference), then ``quantize_static`` inserts QuantizeLinear/DequantizeLinear pairs around
the convolutions, with per-channel int8 weights and activation ranges measured by running
the model on calibration images (which ones: :mod:`hsftrain.export.calibration`); they are
pre-processed as in training and inference: canonical (RAS+) orientation,
z-normalisation, padding to a multiple of 8, then padded to the largest shape of the set
(every calibration method needs one shape).

Verification compares the int8 model with the fp32 one on calibration images. int8 cannot
reproduce fp32 to 1e-4, so the check is on what a segmentation uses: the fraction of voxels
whose argmax (label) agrees must be at least ``min_agreement`` (default 0.98), and the mean
absolute probability difference at most ``max_mean_abs_diff`` (default 0.02); the largest
difference is logged.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hsftrain.core.atomic import atomic_path
from hsftrain.core.errors import ConfigError, ExportError
from hsftrain.core.onnx_metadata import INPUT_NAME, OUTPUT_NAME, proto_metadata, write_metadata
from hsftrain.data.intensity import pad_to_multiple, z_normalize

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")


ACTIVATIONS = ("uint8", "int8")


@dataclass
class QuantConfig:
    """The ``quantization`` and ``calibration`` keys of ``hsftrain export quantize=int8``.

    Attributes:
        path: folder (with ``pattern``) or glob of NIfTI calibration images; ``None``: the
            run's training subjects (checkpoint config + ``split.json``).
        pattern: glob inside ``path`` when it is a folder.
        num_images: calibration images used, evenly spaced over the sorted list.
        method: ``minmax`` (per-image min/max reduced on the fly: little memory), or
            ``entropy`` / ``percentile`` (histograms of every activation: these keep all
            activations of all calibration images in memory, use few images).
        activations: ``uint8`` (U8S8: ONNX Runtime fuses QDQ Conv3d into QLinearConv on
            x86) or ``int8`` (S8S8).
        per_channel: per-output-channel weight scales.
        op_types: ONNX op types quantized.
    """

    path: str | None = None
    pattern: str = "*.nii.gz"
    num_images: int = 16
    method: str = "minmax"
    activations: str = "uint8"
    per_channel: bool = True
    op_types: tuple[str, ...] = ("Conv",)

    @classmethod
    def from_mappings(
        cls,
        quantization: Mapping[str, Any] | None = None,
        calibration: Mapping[str, Any] | None = None,
    ) -> QuantConfig:
        """Build from the ``quantization`` and ``calibration`` config mappings.

        Raises:
            ConfigError: a bad value (the key is named).
        """
        q, c = dict(quantization or {}), dict(calibration or {})
        out = cls(
            path=str(c["path"]) if c.get("path") else None,
            pattern=str(c.get("pattern") or "*.nii.gz"),
            num_images=int(c.get("num_images") or 16),
            method=str(c.get("method") or "minmax").lower(),
            activations=str(q.get("activations") or "uint8").lower(),
            per_channel=bool(q.get("per_channel", True)),
            op_types=tuple(q.get("op_types") or ("Conv",)),
        )
        if out.num_images < 1:
            raise ConfigError(f"calibration.num_images={out.num_images}: must be at least 1")
        if out.method not in METHODS:
            raise ConfigError(f"calibration.method={out.method!r}: use one of {', '.join(METHODS)}")
        if out.activations not in ACTIVATIONS:
            raise ConfigError(
                f"quantization.activations={out.activations!r}: use one of {', '.join(ACTIVATIONS)}"
            )
        return out


def preprocess(path: str | Path) -> np.ndarray:
    """One image as the network sees it in training and inference: ``(1, 1, X, Y, Z)``
    float32, RAS+, z-normalised, padded evenly with its minimum to a multiple of 8
    (:mod:`hsftrain.data.intensity`).

    Raises:
        DataError: the file is missing, unreadable or not 3D.
    """
    from hsftrain.data.nifti import load_volume

    data, _ = load_volume(path, np.float32, canonical=True)
    image = z_normalize(data)
    padded, _ = pad_to_multiple(image, 8, float(image.min()))
    return padded[None, None]


def pad_to_shape(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Pad a ``(1, 1, X, Y, Z)`` volume evenly (centred) to ``shape`` with its minimum,
    as training pads its volumes."""
    pads = [(0, 0)] * (volume.ndim - 3)
    for size, target in zip(volume.shape[-3:], shape[-3:], strict=True):
        extra = max(int(target) - size, 0)
        pads.append((extra // 2, extra - extra // 2))
    return np.pad(volume, pads, mode="constant", constant_values=float(volume.min()))


class VolumeCalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over pre-processed volumes, one
    image per batch, every image padded to the largest shape of the set.

    ONNX Runtime's histogram calibrators (``entropy``, ``percentile``) stack the
    activations of all calibration images into one array, which needs one shape; real
    crops differ in size. The volumes are read once, on the first :meth:`get_next`.
    """

    def __init__(self, paths: Sequence[str | Path], input_name: str = INPUT_NAME) -> None:
        self.paths = [Path(p) for p in paths]
        self.input_name = input_name
        self._volumes: list[np.ndarray] | None = None
        self._next = 0

    def volumes(self) -> list[np.ndarray]:
        """The pre-processed volumes, ``(1, 1, X, Y, Z)`` each, all of one shape."""
        if self._volumes is None:
            raw = []
            for path in self.paths:
                log.debug("calibration image %s", path)
                raw.append(preprocess(path))
            shape = tuple(max(v.shape[i] for v in raw) for i in range(5)) if raw else ()
            if len({v.shape for v in raw}) > 1:
                log.info("calibration images padded to one shape %s", shape[2:])
            self._volumes = [pad_to_shape(v, shape) for v in raw]
        return self._volumes

    def get_next(self) -> dict[str, np.ndarray] | None:
        volumes = self.volumes()
        if self._next >= len(volumes):
            return None
        self._next += 1
        return {self.input_name: volumes[self._next - 1]}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self.paths)


def _reader(paths: Sequence[Path]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(VolumeCalibrationReader, CalibrationDataReader):
        pass

    return Reader(paths)


def quantize_int8(
    fp32_path: str | Path,
    out: str | Path,
    images: Sequence[str | Path],
    calibration: QuantConfig | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Static int8 quantization (QDQ, int8 weights and activations) of an fp32 ONNX model.

    Args:
        fp32_path: the verified fp32 model written by :func:`export_onnx`.
        out: the int8 model to write (atomically).
        images: calibration images (NIfTI), pre-processed as in training.
        calibration: options (method, activation type, per-channel, op types).
        metadata: extra metadata; the fp32 model's metadata is kept, with
            ``quantization: int8`` and the calibration details added.

    Raises:
        ConfigError: ``out`` is ``fp32_path`` (the source is never replaced).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = calibration or QuantConfig()
    out = Path(out)
    if out.resolve() == Path(fp32_path).resolve():
        raise ConfigError(f"{out}: the int8 model would replace its fp32 source; give another out")
    out.parent.mkdir(parents=True, exist_ok=True)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[calibration.method]
    fp32_meta = proto_metadata(onnx.load(str(fp32_path)))
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Symbolic shape inference cannot resolve the padding arithmetic of the dynamic
        # spatial axes (and then writes debug files into the working directory); ONNX
        # shape inference and graph optimisation are what matter for a conv net.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantized = Path(tmp) / "int8.onnx"
        log.info(
            "calibrating int8 ranges (%s) on %d image(s), quantizing %s",
            calibration.method,
            len(images),
            ", ".join(calibration.op_types),
        )
        quantize_static(
            str(pre),
            str(quantized),
            _reader([Path(p) for p in images]),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(calibration.op_types),
            per_channel=calibration.per_channel,
            activation_type=QuantType.QUInt8
            if calibration.activations == "uint8"
            else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
        )
        proto = onnx.load(str(quantized))
        meta: dict[str, Any] = dict(fp32_meta)
        meta.update(
            {
                "quantization": "int8",
                "quantization_format": "QDQ",
                "quantization_activations": calibration.activations,
                "calibration_method": calibration.method,
                "calibration_images": len(images),
                **(metadata or {}),
            }
        )
        write_metadata(proto, meta)
        with atomic_path(out) as final:
            onnx.save(proto, str(final))
    return out


@dataclass
class QuantCheck:
    """fp32 vs int8 on some volumes: argmax agreement and probability differences."""

    agreement: float
    mean_abs_diff: float
    max_abs_diff: float


def compare_models(
    fp32_path: str | Path, int8_path: str | Path, volumes: Sequence[np.ndarray]
) -> QuantCheck:
    """Run both models on ``volumes`` (each ``(1, 1, X, Y, Z)``) and compare outputs."""
    import onnxruntime as ort

    sessions = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        for p in (fp32_path, int8_path)
    ]
    agree = total = 0
    abs_sum = 0.0
    worst = 0.0
    count = 0
    for x in volumes:
        ref, got = (s.run([OUTPUT_NAME], {INPUT_NAME: x})[0] for s in sessions)
        agree += int((ref.argmax(1) == got.argmax(1)).sum())
        total += ref.shape[0] * int(np.prod(ref.shape[2:]))
        diff = np.abs(ref - got)
        abs_sum += float(diff.sum())
        count += diff.size
        worst = max(worst, float(diff.max()))
    return QuantCheck(agree / max(total, 1), abs_sum / max(count, 1), worst)


def verify_quantized(
    fp32_path: str | Path,
    int8_path: str | Path,
    images: Sequence[str | Path],
    min_agreement: float = 0.98,
    max_mean_abs_diff: float = 0.02,
) -> QuantCheck:
    """Check the int8 model against the fp32 one on (pre-processed) ``images``.

    Raises:
        ExportError: argmax agreement below ``min_agreement`` or mean absolute probability
            difference above ``max_mean_abs_diff``.
    """
    check = compare_models(fp32_path, int8_path, [preprocess(p) for p in images])
    log.info(
        "int8 check on %d image(s): argmax agreement %.4f, mean |int8 - fp32| = %.2e, max %.2e",
        len(images),
        check.agreement,
        check.mean_abs_diff,
        check.max_abs_diff,
    )
    if check.agreement < min_agreement or check.mean_abs_diff > max_mean_abs_diff:
        raise ExportError(
            f"{int8_path}: int8 model agrees with fp32 on {check.agreement:.2%} of voxels "
            f"(needs >= {min_agreement:.2%}) with mean |diff| {check.mean_abs_diff:.3g} (needs <= "
            f"{max_mean_abs_diff:g}); try calibration.method=percentile or more "
            "calibration.num_images, or lower verify.min_agreement"
        )
    return check
