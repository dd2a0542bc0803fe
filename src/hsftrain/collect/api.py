"""``hsftrain data collect``: the clean training folder of the retraining loop.

From a segmentation output, its ``qc_ratings.tsv`` and a folder of corrected label maps,
writes ``<id>_img.nii.gz`` / ``<id>_lbl.nii.gz`` pairs (``datasets=folder
datasets.path=OUT``): the prediction of each ``pass`` crop, the corrected label of each
``fix`` crop; ``fail`` crops, unrated ones and ``fix`` ones without a correction are left
out, each with a line. ``manifest.tsv`` in ``OUT`` says where every pair came from, with
the xxh3_64 of the files written.

Everything is checked before the first file is written; a rerun adds new pairs, leaves
identical files alone and refuses (by name) to replace a file whose content differs unless
``overwrite`` is set.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import xxhash

from hsftrain.collect.outputs import NO_SIDE, CollectError, SegmentedCrop, find_crops
from hsftrain.collect.ratings import check_known, read_ratings, write_ratings
from hsftrain.core.atomic import EXTENSIONS, atomic_path, write_text_atomic
from hsftrain.hub.fetch import file_hash

log = logging.getLogger(__name__)

MANIFEST = "manifest.tsv"
MANIFEST_COLUMNS: tuple[str, ...] = (
    "id",
    "subject",
    "side",
    "kind",
    "source_image",
    "source_label",
    "image_xxh3_64",
    "label_xxh3_64",
)
#: Grids that differ by less than this (mm, in the affine) are the same grid.
AFFINE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Pair:
    """One training pair to write."""

    id: str
    crop: SegmentedCrop
    label: Path  # the prediction (pass) or the corrected label (fix)
    kind: str  # pass | corrected


def pair_id(crop: SegmentedCrop) -> str:
    """``<subject>[_<side>]`` with ``/`` as ``_`` and a trailing ``_img`` dropped."""
    base = re.sub(r"_img$", "", crop.subject.replace("/", "_"))
    return base if crop.side == NO_SIDE else f"{base}_{crop.side}"


def init_ratings(
    seg_dir: str | Path, ratings: str | Path, images: str | Path | None = None
) -> Path:
    """Write ``ratings`` listing every crop of ``seg_dir`` rated ``pass`` (to edit).

    Raises:
        CollectError: no segmentation output, or ``ratings`` exists.
    """
    crops = find_crops(seg_dir, images)
    path = write_ratings(ratings, crops, "pass")
    log.info("wrote %s: %d crops, each rated pass; set fix or fail where needed", path, len(crops))
    return path


def collect(
    seg_dir: str | Path,
    ratings: str | Path,
    out: str | Path,
    corrected: str | Path | None = None,
    images: str | Path | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write the training pairs of the rated crops of ``seg_dir`` into ``out``.

    Returns:
        The label maps of the pairs now in ``out`` from this call (written or unchanged).

    Raises:
        CollectError: no segmentation output, a bad ratings file or one naming unknown
            subjects, a corrected label on another grid than its image, no pair to write,
            or a file of ``out`` whose content would change without ``overwrite``.
    """
    crops = find_crops(seg_dir, images)
    rated = read_ratings(ratings)
    check_known(ratings, rated, crops)
    fixes = Path(corrected).expanduser() if corrected else None
    if fixes is not None and not fixes.is_dir():
        raise CollectError(f"--corrected {fixes}: no such folder of corrected label maps")
    pairs: list[Pair] = []
    unrated = []
    for crop in crops:
        rating = rated.get(crop.key)
        name = f"{crop.subject} ({crop.side})"
        if rating is None or not rating.rating:
            unrated.append(name)
        elif rating.rating == "fail":
            log.info("%s: rated fail, left out", name)
        elif rating.rating == "pass":
            pairs.append(Pair(pair_id(crop), crop, crop.prediction, "pass"))
        else:
            label = _correction(fixes, crop)
            if label is None:
                where = fixes if fixes is not None else "no --corrected folder"
                log.warning(
                    "%s: rated fix but no corrected label in %s (%s_lbl.nii.gz): left out",
                    name,
                    where,
                    pair_id(crop),
                )
                continue
            _same_grid(crop.image, label)
            pairs.append(Pair(pair_id(crop), crop, label, "corrected"))
    if unrated:
        log.warning("%d crop(s) not rated, left out: %s", len(unrated), ", ".join(unrated[:5]))
    if not pairs:
        raise CollectError(
            f"{ratings}: no crop rated pass, nor fix with a corrected label: nothing to collect"
        )
    return _write(pairs, Path(out).expanduser(), overwrite)


def _correction(folder: Path | None, crop: SegmentedCrop) -> Path | None:
    """The corrected label of ``crop`` in ``folder``: ``<id>_lbl``, ``<id>`` or the
    prediction's own file name (any image extension)."""
    if folder is None:
        return None
    stems = [f"{pair_id(crop)}_lbl", pair_id(crop), _stem(crop.prediction.name)]
    for stem in stems:
        for ext in EXTENSIONS:
            if (folder / f"{stem}{ext}").is_file():
                return folder / f"{stem}{ext}"
    return None


def _stem(name: str) -> str:
    return next((name[: -len(e)] for e in EXTENSIONS if name.endswith(e)), name)


def _same_grid(image: Path, label: Path) -> None:
    img, lbl = nib.load(str(image)), nib.load(str(label))
    shape_i, shape_l = tuple(img.shape[:3]), tuple(lbl.shape[:3])
    same = shape_i == shape_l and np.allclose(
        img.affine,
        lbl.affine,
        atol=AFFINE_TOLERANCE,
    )
    if not same:
        raise CollectError(
            f"{label}: the corrected label's grid (shape {shape_l}) differs from its "
            f"image's {image} (shape {shape_i}, or another affine); correct the label on "
            "that image (the crop segment wrote) and save it on its grid"
        )


def _nifti_gz(path: Path) -> bytes:
    """The bytes of ``path`` as a ``.nii.gz`` file (its own bytes when it is one)."""
    if path.name.endswith(".nii.gz"):
        return path.read_bytes()
    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    nifti = nib.Nifti1Image(data, image.affine)
    return gzip.compress(nifti.to_bytes(), mtime=0)


def _write(pairs: list[Pair], out: Path, overwrite: bool) -> list[Path]:
    planned: list[tuple[Pair, bytes, bytes]] = []
    changed = []
    for pair in pairs:
        img, lbl = _nifti_gz(pair.crop.image), _nifti_gz(pair.label)
        for target, data in (
            (out / f"{pair.id}_img.nii.gz", img),
            (out / f"{pair.id}_lbl.nii.gz", lbl),
        ):
            if target.is_file() and file_hash(target) != xxhash.xxh3_64(data).hexdigest():
                changed.append(target)
        planned.append((pair, img, lbl))
    if changed and not overwrite:
        names = ", ".join(str(p) for p in changed[:3]) + (", ..." if len(changed) > 3 else "")
        raise CollectError(
            f"{names}: already in {out} with other content ({len(changed)} file(s)); nothing "
            "was written; add --overwrite to replace them, or collect into another --out"
        )
    rows = _read_manifest(out / MANIFEST)
    written: list[Path] = []
    new = 0
    for pair, img, lbl in planned:
        hashes = []
        for target, data in (
            (out / f"{pair.id}_img.nii.gz", img),
            (out / f"{pair.id}_lbl.nii.gz", lbl),
        ):
            digest = xxhash.xxh3_64(data).hexdigest()
            if not (target.is_file() and file_hash(target) == digest):
                with atomic_path(target) as tmp:
                    tmp.write_bytes(data)
                new += 1
            hashes.append(digest)
        rows[pair.id] = {
            "id": pair.id,
            "subject": pair.crop.subject,
            "side": pair.crop.side,
            "kind": pair.kind,
            "source_image": str(pair.crop.image.resolve()),
            "source_label": str(pair.label.resolve()),
            "image_xxh3_64": hashes[0],
            "label_xxh3_64": hashes[1],
        }
        written.append(out / f"{pair.id}_lbl.nii.gz")
    write_text_atomic(out / MANIFEST, _manifest_text(rows))
    kinds = [p.kind for p in pairs]
    log.info(
        "%s: %d pairs (%d pass, %d corrected), %d file(s) written, %d unchanged; "
        "train with datasets=folder datasets.path=%s",
        out,
        len(pairs),
        kinds.count("pass"),
        kinds.count("corrected"),
        new,
        2 * len(pairs) - new,
        out,
    )
    return written


def _read_manifest(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["id"]: row for row in csv.DictReader(fh, delimiter="\t") if row.get("id")}


def _manifest_text(rows: dict[str, dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, MANIFEST_COLUMNS, delimiter="\t", lineterminator="\n", extrasaction="ignore"
    )
    writer.writeheader()
    writer.writerows(rows[k] for k in sorted(rows))
    return buffer.getvalue()
