"""``hsftrain hub publish``: what HSF's hub needs to list a model.

From a run directory (``model.onnx``, ``config.yaml``, ``plan.yaml``, ``metrics.json``) or
an ONNX file, writes beside it (or into ``out``):

* ``<stem>.preset.yaml``: a segmentation preset (``hsftrain segment
  segmentation=<that file>``) naming the model by ``{url, xxh3_64}``, or, without a URL,
  by ``{path, xxh3_64}`` relative to the preset (runs locally; upload the file and publish
  again with ``url``);
* ``<stem>.card.md``: a model card (data and its fingerprint from the ONNX metadata,
  classes, training settings or plan, validation / test scores, intended use, licence, and
  the entry for the hub's ``models.yaml``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hsftrain.config.keys import value_as_written
from hsftrain.core.atomic import write_text_atomic
from hsftrain.core.errors import UserError
from hsftrain.core.onnx_metadata import read_metadata
from hsftrain.hub.fetch import file_hash

log = logging.getLogger(__name__)

#: ONNX metadata keys shown as the model's data fingerprint, in this order.
FINGERPRINT_KEYS: tuple[str, ...] = (
    "spacing_mm",
    "field_of_view_mm",
    "contrasts",
    "intensity_fingerprint",
    "volume_range_mm3",
    "spacing_mm_counts",
)
#: Training settings of a run's ``config.yaml`` shown in the card (dotted keys).
TRAINING_KEYS: tuple[str, ...] = (
    "models.name",
    "models.hparams.f_maps",
    "models.hparams.num_levels",
    "models.hparams.layer_order",
    "models.lr",
    "models.use_forgiving_loss",
    "datasets.batch_size",
    "datasets.patch_size",
    "lightning.max_epochs",
    "budget",
    "seed",
)
NO_LICENSE = "not stated (hsftrain hub publish --license ...)"
DEFAULT_USE = (
    "Segmenting the hippocampus in MRI crops like those of its training data (contrast, voxel "
    "size and field of view above); check its results (hsftrain segment's flags and QC "
    "figures) before using them. Not a medical device."
)
#: Test-time settings of a published preset (the bundled msd preset's).
PRESET_SETTINGS: dict[str, Any] = {
    "tta": "flip",
    "test_time_num_aug": 1,
    "fusion": "mean",
    "largest_component": True,
}


class PublishError(UserError, ValueError):
    """A run or model that cannot be published as it is."""


def find_model(source: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """The ONNX file of ``source`` (a run directory or a ``.onnx`` file) and its run
    directory (None when the file is not in one).

    Raises:
        PublishError: no such file or folder, or a run without ``model.onnx``.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model.onnx").is_file():
            raise PublishError(
                f"{path}: no model.onnx in this run directory; export it first "
                "(hsftrain export ckpt=<run>/checkpoints/last.ckpt out=<run>/model.onnx)"
            )
        return path / "model.onnx", path
    if not path.is_file() or not path.name.endswith(".onnx"):
        raise PublishError(f"{path}: no such run directory or .onnx file")
    run = path.parent if (path.parent / "config.yaml").is_file() else None
    return path, run


@dataclass(frozen=True)
class PublishOptions:
    """What ``hsftrain hub publish`` is told besides the model (its options).

    Attributes:
        url: where the model file is uploaded (None: the preset names it by a path).
        license: the model's licence (the card says none was given when None).
        out: folder to write into (None: beside the model).
        name: model name (None: the run's or the file's name).
        description: one line on the model (None: its classes and network).
        intended_use: the card's intended use (None: a default text).
        overwrite: replace a preset or card whose content differs.
        segmentation: a packaged preset that already runs the model.
    """

    url: str | None = None
    license: str | None = None
    out: str | os.PathLike[str] | None = None
    name: str | None = None
    description: str | None = None
    intended_use: str | None = None
    overwrite: bool = False
    segmentation: str | None = None


@dataclass(frozen=True)
class _Published:
    """The model a card describes."""

    name: str
    description: str
    path: Path
    digest: str
    spec: dict[str, Any]
    metadata: Mapping[str, Any]
    run: Path | None


def publish(
    source: str | os.PathLike[str], options: PublishOptions | None = None
) -> tuple[Path, Path]:
    """Write the preset YAML and the model card of ``source``; returns their paths.

    ``segmentation``: a packaged preset that already runs the model (the card names it, and
    its ``model_metadata`` for the file fill in what the file's metadata lacks).

    Raises:
        PublishError: see :func:`find_model`; an unknown ``segmentation``; a URL that is not http(s) or file; a preset
            or card already there with other content (without ``overwrite``).
    """
    options = options or PublishOptions()
    url, segmentation = options.url, options.segmentation
    model, run = find_model(source)
    if url is not None and not url.startswith(("http://", "https://", "file://")):
        raise PublishError(f"--url {url}: give an http(s):// or file:// URL of the uploaded file")
    folder = Path(options.out).expanduser() if options.out else model.parent
    stem = model.name.removesuffix(".onnx")
    name = options.name or (run.name if run is not None and stem == "model" else stem)
    digest = file_hash(model)
    metadata = {**_preset_metadata(segmentation, model.name), **read_metadata(model)}
    description = options.description or (
        f"{name}: {_classes_text(metadata)} ({metadata.get('model_name', 'ONNX')})"
    )
    if url is not None:
        spec: dict[str, Any] = {"url": url, "xxh3_64": digest}
    else:
        spec = {
            "path": Path(os.path.relpath(model.resolve(), folder.resolve())).as_posix(),
            "xxh3_64": digest,
        }
    preset_path = folder / f"{stem}.preset.yaml"
    card_path = folder / f"{stem}.card.md"
    published = _Published(name, description, model, digest, spec, metadata, run)
    texts = {
        preset_path: _preset_text(name, description, model.name, spec, url),
        card_path: _card(published, options, segmentation or preset_path.name),
    }
    changed = [p for p, t in texts.items() if p.is_file() and p.read_text() != t]
    if changed and not options.overwrite:
        raise PublishError(
            f"{', '.join(map(str, changed))}: already written with other content (edited, or "
            "another model or URL); nothing was written; add --overwrite to replace it"
        )
    for path, text in texts.items():
        write_text_atomic(path, text)
    log.info(
        "wrote %s (hsftrain segment segmentation=%s ...) and the model card %s%s",
        preset_path,
        preset_path,
        card_path,
        "" if url else "; upload the model and publish again with --url for others to use it",
    )
    return preset_path, card_path


def _preset_metadata(segmentation: str | None, file: str) -> dict[str, Any]:
    """The ``model_metadata`` of ``file`` in the packaged preset ``segmentation``."""
    if segmentation is None:
        return {}
    from hsftrain.config.compose import CONF_DIR

    path = CONF_DIR / "segmentation" / f"{segmentation}.yaml"
    if not path.is_file():
        raise PublishError(f"--segmentation {segmentation}: no such packaged preset ({path})")
    entry = (_load_yaml(path).get("model_metadata") or {}).get(file) or {}
    return dict(entry) if isinstance(entry, dict) else {}


def _classes_text(metadata: Mapping[str, Any]) -> str:
    names = [str(n) for n in metadata.get("labels_names") or [] if n and n != "background"]
    return ", ".join(names) if names else "classes not recorded"


def _preset_text(
    name: str,
    description: str,
    file: str,
    spec: dict[str, Any],
    url: str | None,
) -> str:
    head = [
        f"# {name}: written by hsftrain hub publish (model card: {file.removesuffix('.onnx')}.card.md)."
    ]
    if url is None:
        head.append(
            "# The model is named by a path relative to this file (runs locally); upload it and run"
        )
        head.append("# hsftrain hub publish ... --url <its URL> to name it by {url, xxh3_64}.")
    preset: dict[str, Any] = {
        "description": description,
        "ca_mode": "",
        "models_path": None,
        "models": {file: spec},
        **PRESET_SETTINGS,
    }
    return "\n".join(head) + "\n" + yaml.safe_dump(preset, sort_keys=False)


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def _scores(run: Path | None) -> dict[str, float]:
    if run is None or not (run / "metrics.json").is_file():
        return {}
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except ValueError:
        return {}
    return {
        k: float(v)
        for k, v in metrics.items()
        if k.startswith(("val/", "test/")) and isinstance(v, int | float)
    }


def _card(published: _Published, options: PublishOptions, preset: str) -> str:
    """The model card (markdown) of ``published``."""
    name, description, model = published.name, published.description, published.path
    digest, spec, metadata, run = (
        published.digest,
        published.spec,
        published.metadata,
        published.run,
    )
    lines = [f"# {name}", "", description, "", "## Model", ""]
    lines += [
        f"- file: `{model.name}` ({model.stat().st_size / 1e6:.1f} MB), xxh3_64 `{digest}`",
        f"- network: {metadata.get('model_name', 'not recorded')}"
        + (f", f_maps {metadata['f_maps']}" if "f_maps" in metadata else ""),
        f"- hsftrain version: {metadata.get('hsftrain_version', 'not recorded')}",
        f"- use: `hsftrain segment segmentation={preset} files.path=... files.pattern=...`",
        "",
        "## Classes",
        "",
        "| value | name |",
        "| --- | --- |",
    ]
    names = metadata.get("labels_names") or []
    lines += [f"| {i} | {n} |" for i, n in enumerate(names)] or ["| - | not recorded |"]
    lines += ["", "## Data and its fingerprint", ""]
    fingerprint = [k for k in FINGERPRINT_KEYS if k in metadata]
    lines += [f"- `{k}`: `{json.dumps(metadata[k])}`" for k in fingerprint] or [
        "- not recorded in the model file (exported before these metadata keys)"
    ]
    cfg = _load_yaml(run / "config.yaml") if run is not None else {}
    datasets = value_as_written(cfg, "datasets.datasets")
    if isinstance(datasets, Mapping):
        lines.append(f"- training datasets: {', '.join(f'`{d}`' for d in datasets)}")
    lines += ["", "## Training", ""]
    if run is None:
        lines.append("- not recorded with this file (no run directory beside it)")
    else:
        settings = [(k, value_as_written(cfg, k)) for k in TRAINING_KEYS]
        lines += [f"- `{k}`: `{json.dumps(v)}`" for k, v in settings if v is not None]
        plan = _load_yaml(run / "plan.yaml")
        if plan:
            lines += ["", "Plan (`budget=`, plan.yaml):", "", "```yaml"]
            lines += [yaml.safe_dump(plan, sort_keys=False).rstrip(), "```"]
    lines += ["", "## Validation and test scores", ""]
    scores = _scores(run)
    lines += [f"- `{k}`: {v:.4f}" for k, v in scores.items()] or [
        "- not recorded (no metrics.json in a run directory)"
    ]
    lines += ["", "## Intended use", "", options.intended_use or DEFAULT_USE, ""]
    lines += ["## License", "", options.license or NO_LICENSE, ""]
    entry = {name: {"kind": "onnx", "description": description, **spec}}
    if "path" in spec:
        entry[name] = {
            "kind": "onnx",
            "description": description,
            "url": "<upload URL>",
            "xxh3_64": digest,
        }
    lines += [
        "## Hub entry",
        "",
        "For `hub/presets/models.yaml` (then `hsftrain hub list` shows it):",
        "",
        "```yaml",
        yaml.safe_dump(entry, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
