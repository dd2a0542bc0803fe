"""The segmented crops of a ``hsftrain segment`` output folder, in either layout.

Each finished input gives one crop (a crop input: side ``n/a``) or two (a whole head:
``left`` and ``right``), each with the MRI it was segmented on and its prediction:

* **whole head**: the MRI crop and the crop's segmentation that ``segment`` wrote
  (``<stem>_hippocampus_crop_<side>`` / ``..._seg_crop_<side>``; BIDS:
  ``desc-<side>hippocampuscrop`` ``_T1w``/``_T2w`` and ``_dseg``); without the crop images
  (``save_crops=false``) the subject is refused with the fix;
* **crop input**: the input image itself and its segmentation on the input's grid. The
  image is found next to the segmentation (outputs written beside the inputs), below
  ``images`` (the ``files.path`` of the run, mirrored as ``segment`` does) or, for BIDS
  derivatives, through the sidecar's ``Sources`` and the dataset's ``DatasetLinks.raw``.

The subject of a crop is the one the volumes tables name: HSF layout, the input's path
below ``files.path`` without extension (``site1/sub-01_T1w``); BIDS layout, the input's
entities (``sub-01_ses-A``).
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from hsftrain.core.atomic import EXTENSIONS
from hsftrain.core.errors import UserError
from hsftrain.inference.layout import BidsOutputs
from hsftrain.inference.writer import MARKER, Outputs

#: The sides of a whole head; a crop input's side is :data:`NO_SIDE`.
SIDES: tuple[str, ...] = ("left", "right")
NO_SIDE = "n/a"
_HSF_DONE = f"{MARKER}seg.nii.gz"
_BIDS_DONE = "_desc-hippocampus_volumes.tsv"


class CollectError(UserError, ValueError):
    """A segmentation output, ratings file or corrected label that collect cannot use."""


@dataclass(frozen=True)
class SegmentedCrop:
    """One side of one segmented input: the MRI it was segmented on and the prediction."""

    subject: str
    side: str  # left | right | n/a
    image: Path
    prediction: Path

    @property
    def key(self) -> tuple[str, str]:
        return self.subject, self.side


def find_crops(seg_dir: str | Path, images: str | Path | None = None) -> list[SegmentedCrop]:
    """Every segmented crop below ``seg_dir`` (HSF and BIDS layouts), sorted by subject.

    Args:
        seg_dir: a ``files.output_dir`` (or ``files.path`` when outputs are beside the
            inputs) of ``hsftrain segment``.
        images: the run's ``files.path``, where crop inputs are looked up when they are
            not beside their segmentation.

    Raises:
        CollectError: no folder, no segmentation output in it, or a crop whose image is
            missing (names the subject and the fix).
    """
    root = Path(seg_dir).expanduser()
    if not root.is_dir():
        raise CollectError(f"{root}: no such folder; give the output folder of hsftrain segment")
    image_root = Path(images).expanduser() if images else None
    if image_root is not None and not image_root.is_dir():
        raise CollectError(f"--images {image_root}: no such folder (the files.path of segment)")
    crops: list[SegmentedCrop] = []
    for done in sorted(root.rglob(f"*{_HSF_DONE}")):
        if not done.name.startswith("."):
            crops += _hsf_crops(root, done, image_root)
    for done in sorted(root.rglob(f"*{_BIDS_DONE}")):
        if not done.name.startswith(".") and done.parent.name == "anat":
            crops += _bids_crops(root, done, image_root)
    if not crops:
        raise CollectError(
            f"{root}: no output of hsftrain segment here (no *{_HSF_DONE} nor "
            f"sub-*/anat/*{_BIDS_DONE}); give the folder segment wrote (files.output_dir)"
        )
    return sorted(crops, key=lambda c: (c.subject, c.side))


def _hsf_crops(root: Path, done: Path, image_root: Path | None) -> list[SegmentedCrop]:
    stem = done.name[: -len(_HSF_DONE)]
    outputs = Outputs(done.parent, stem)
    subject = (done.parent.relative_to(root) / stem).as_posix()
    whole_head = [s for s in SIDES if outputs.segmentation_crop(s).is_file()]
    if whole_head or any(outputs.native(s).is_file() for s in SIDES):
        return [_side(subject, outputs, s) for s in whole_head or SIDES]
    relative = done.parent.relative_to(root)
    folders = [done.parent] + ([image_root / relative, image_root] if image_root else [])
    for folder in folders:
        for ext in EXTENSIONS:
            if (folder / f"{stem}{ext}").is_file():
                return [SegmentedCrop(subject, NO_SIDE, folder / f"{stem}{ext}", done)]
    raise CollectError(
        f"{subject}: its input image {stem}.nii.gz is neither beside {done.name} nor below "
        "--images; give --images <the files.path of segment>"
    )


def _side(subject: str, outputs: Outputs, side: str) -> SegmentedCrop:
    image, prediction = outputs.image_crop(side), outputs.segmentation_crop(side)
    if not image.is_file() or not prediction.is_file():
        missing = image if not image.is_file() else prediction
        raise CollectError(
            f"{subject} ({side}): {missing} is missing: a whole head needs its crops; "
            "rerun segment with save_crops=true files.overwrite=true"
        )
    return SegmentedCrop(subject, side, image, prediction)


def _bids_crops(root: Path, done: Path, image_root: Path | None) -> list[SegmentedCrop]:
    stem = done.name[: -len(_BIDS_DONE)]
    entities = tuple(tuple(p.split("-", 1)) for p in stem.split("_") if "-" in p)
    crops: list[SegmentedCrop] = []
    for space in ("T1w", "T2w"):
        outputs = BidsOutputs(done.parent, stem, root, entities, space)  # type: ignore[arg-type]
        sides = [s for s in SIDES if outputs.segmentation_crop(s).is_file()]
        if sides:
            return [_side(stem, outputs, s) for s in sides]
        if outputs.native("crop").is_file():
            image = _bids_source(root, outputs.native("crop"), image_root)
            if image is None:
                raise CollectError(
                    f"{stem}: its input image (Sources of {outputs.native('crop').name}) "
                    "is not found; give --images <the BIDS dataset segment read>"
                )
            return [SegmentedCrop(stem, NO_SIDE, image, outputs.native("crop"))]
    return crops


def _bids_source(root: Path, dseg: Path, image_root: Path | None) -> Path | None:
    """The input image a BIDS ``dseg`` was made from (its sidecar's ``Sources``)."""
    try:
        sidecar = json.loads(dseg.with_name(dseg.name.replace(".nii.gz", ".json")).read_text())
        source = str(sidecar["Sources"][0])
    except (OSError, ValueError, KeyError, IndexError):
        return None
    relative = source.removeprefix("bids:raw:")
    bases = [image_root] if image_root else []
    try:
        links = json.loads((root / "dataset_description.json").read_text())["DatasetLinks"]
        bases.append(Path(urllib.parse.unquote(urllib.parse.urlparse(links["raw"]).path)))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for base in bases:
        if base is not None and (base / relative).is_file():
            return base / relative
    return None
