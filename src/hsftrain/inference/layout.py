"""Where ``hsftrain segment`` writes: the HSF layout or BIDS derivatives (``files.layout``).

* ``hsf`` (default for a folder + glob input): the file names of
  :class:`hsftrain.inference.writer.Outputs`, next to each MRI or mirrored below
  ``files.output_dir``.
* ``bids`` (default for a BIDS input, ``files.bids=true``): a BIDS derivatives dataset,
  ``<output_dir>/sub-<label>[/ses-<label>]/anat/`` (:class:`BidsOutputs`); the dataset-level
  files are written by :mod:`hsftrain.inference.derivatives`. For a folder input,
  ``sub-<label>`` is the subject name (path below ``files.path`` without extension) with
  every character that is not a letter or a digit dropped (``site1/s01_T1w`` ->
  ``sub-site1s01T1w``).

Entities of a BIDS output name (in the specification's order): those of the input
(``sub``, ``ses``, ``acq``, ``run``, ...), then ``space-T1w``/``space-T2w`` (the input's
suffix; for a folder input ``T2w`` when the file name holds ``T2``, else ``T1w``) and
``desc-``: ``hippocampus`` (on the input's grid) or ``hippocampuscrop`` (on the crop's
grid, same world coordinates), prefixed by ``left``/``right`` for each side of a whole
head (each side its own file). The side is in ``desc`` because the BIDS derivatives
specification (schema of bids-validator 3.0.2) allows ``hemi-`` on surfaces only, not on
volumetric ``dseg`` images; the volumes tables have a ``hemi`` column (``L``/``R``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsftrain.config.compose import ConfigError
from hsftrain.inference.bids import ENTITY_ORDER
from hsftrain.inference.discovery import subject_name
from hsftrain.inference.image import strip_extension
from hsftrain.inference.writer import Outputs, outputs_for

#: ``files.layout`` values.
LAYOUTS: tuple[str, ...] = ("hsf", "bids")
#: ``hemi`` entity of each side of a whole head.
HEMI: dict[str, str] = {"left": "L", "right": "R"}
#: The entities of an input name kept in its outputs' names.
_KEPT = tuple(e for e in ENTITY_ORDER if e not in ("hemi", "space", "label", "desc"))


def choose_layout(value: Any, bids_input: bool) -> str:
    """``files.layout``: null (``bids`` for a BIDS input, else ``hsf``), ``hsf`` or ``bids``.

    Raises:
        ConfigError: any other value (names the key).
    """
    if value is None or value == "":
        return "bids" if bids_input else "hsf"
    if str(value) not in LAYOUTS:
        raise ConfigError(
            f"files.layout={value!r}: use hsf (HSF file names next to each MRI), bids (BIDS "
            "derivatives: sub-<label>/[ses-<label>/]anat/) or null (bids for a BIDS input)"
        )
    return str(value)


def bids_label(text: str) -> str:
    """``text`` with everything but letters and digits dropped (a BIDS label)."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


@dataclass(frozen=True)
class BidsOutputs(Outputs):
    """Paths of one input's outputs in a BIDS derivatives dataset: ``folder`` is
    ``<root>/sub-X[/ses-Y]/anat``, ``stem`` the input's entities (``sub-X_ses-Y...``)."""

    root: Path  # the derivatives dataset (dataset_description.json, dseg.tsv, volumes.tsv)
    entities: tuple[tuple[str, str], ...]  # the input's, in file-name order
    space: str  # T1w | T2w
    source: str = ""  # the input: a BIDS URI "bids:raw:<path below the input dataset>"
    raw: str = ""  # the input dataset's file:// URI (DatasetLinks "raw")

    @property
    def participant(self) -> str:
        return f"sub-{dict(self.entities)['sub']}"

    @property
    def session(self) -> str:
        ses = dict(self.entities).get("ses")
        return f"ses-{ses}" if ses else ""

    def _name(self, suffix: str, desc: str, side: str = "crop", space: bool = True) -> Path:
        """``<input entities>[_space-<space>]_desc-[left|right]<desc>_<suffix>``."""
        entities = dict(self.entities)
        if space:
            entities["space"] = self.space
        entities["desc"] = f"{side if side in HEMI else ''}{desc}"
        order = [e for e in ENTITY_ORDER if e in entities]
        order += [e for e in entities if e not in order]
        return self.folder / ("_".join(f"{e}-{entities[e]}" for e in order) + f"_{suffix}")

    def native(self, side: str) -> Path:
        """The segmentation of one side on the input's grid (a crop input: ``side`` crop)."""
        return self._name("dseg.nii.gz", "hippocampus", side)

    @property
    def segmentation(self) -> Path:
        """The native segmentation of a crop input."""
        return self.native("crop")

    @property
    def volumes(self) -> Path:
        """This subject's volumes table; written last: its presence marks the subject done."""
        return self._name("volumes.tsv", "hippocampus", space=False)

    @property
    def done(self) -> Path:
        return self.volumes

    def image_crop(self, side: str) -> Path:
        return self._name(f"{self.space}.nii.gz", "hippocampuscrop", side)

    def segmentation_crop(self, side: str) -> Path:
        return self._name("dseg.nii.gz", "hippocampuscrop", side)

    def uncertainty(self, side: str) -> Path:
        desc = "hippocampus" if side == "crop" else "hippocampuscrop"
        return self._name("uncertainty.nii.gz", desc, side)

    def probabilities(self, side: str) -> Path:
        desc = "hippocampus" if side == "crop" else "hippocampuscrop"
        return self._name("probseg.nii.gz", desc, side)

    def qc(self, side: str) -> Path:
        return self._name("qc.png", "hippocampus", side, space=False)

    def lut(self, kind: str) -> Path:
        """A colour look-up table: ``itksnap`` (label description file) or ``freesurfer``."""
        return self._name(f"{kind}.txt", "hippocampus", space=False)

    def stale_temporaries(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f".{self.stem}_*.hsftrain-tmp*"))


def _space(entities: dict[str, str], mri: Path) -> str:
    suffix = entities.get("suffix", "")
    if suffix in ("T1w", "T2w"):
        return suffix
    return "T2w" if "t2" in strip_extension(mri.name).lower() else "T1w"


def bids_outputs(
    mri: Path, root: Path, output_dir: Path, entities: dict[str, str] | None
) -> BidsOutputs:
    """The BIDS derivatives outputs of ``mri`` (``entities`` from its BIDS name; None for a
    folder input: ``sub-<subject name>``, see the module docstring).

    Raises:
        ConfigError: a folder input whose subject name has no letter or digit.
    """
    if entities is None or "sub" not in entities:
        label = bids_label(subject_name(mri, root))
        if not label:
            raise ConfigError(
                f"{mri}: files.layout=bids needs a subject name with letters or digits; "
                "rename the file or use files.layout=hsf"
            )
        entities = {"sub": label}
    kept = tuple((e, entities[e]) for e in entities if e in _KEPT)
    folder = output_dir / f"sub-{entities['sub']}"
    if entities.get("ses"):
        folder = folder / f"ses-{entities['ses']}"
    stem = "_".join(f"{e}-{v}" for e, v in kept)
    folder = folder / "anat"
    raw_root = root if root.is_dir() else mri.parent
    try:
        relative = mri.resolve().relative_to(raw_root.resolve()).as_posix()
    except ValueError:
        relative, raw_root = mri.name, mri.parent
    source = f"bids:raw:{relative}"
    raw = raw_root.resolve().as_uri()
    return BidsOutputs(folder, stem, output_dir, kept, _space(entities, mri), source, raw)


def outputs_of(
    mri: Path,
    root: Path,
    output_dir: Path | None,
    layout: str = "hsf",
    entities: dict[str, str] | None = None,
) -> Outputs:
    """Where the outputs of ``mri`` (found under ``root``) go in ``layout``."""
    if layout == "bids":
        base = output_dir or (root if root.is_dir() else root.parent)
        return bids_outputs(mri, root, Path(base), entities)
    return outputs_for(mri, root, output_dir)
