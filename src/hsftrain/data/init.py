"""``hsftrain data init``: a dataset config written from a folder of (image, label map)
pairs, for ``datasets=<that file>``.

A label map is a NIfTI file whose name ends in one of :data:`LABEL_SUFFIXES` before its
extension, beside its image (``sub-01_T2w_hippocampus_R_seg.nii.gz`` beside
``sub-01_T2w_hippocampus_R.nii.gz``). The subject part of a name is its leading BIDS-like
``key-value`` entities (``sub-01_ses-1``), else its first ``_``-separated word; the rest
(``T2w_hippocampus_R``) makes one pattern per kind of file. The label values found are
listed with their voxel counts and numbered 1..K, with names to fill in.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from hsftrain.core.atomic import write_text_atomic
from hsftrain.core.errors import ConfigError
from hsftrain.data.labels import SUBFIELDS, value_counts
from hsftrain.data.nifti import DataError

log = logging.getLogger(__name__)

#: Ends of label map names (before the extension), tried in this order.
LABEL_SUFFIXES = ("_seg", "_dseg", "_lbl", "_labels", "_label", "_mask")
EXTENSIONS = (".nii.gz", ".nii")


@dataclass
class FolderPattern:
    """One kind of file of the folder: its globs and the pairs it finds."""

    tail: str  # the name after the subject part, without extension (``T2w_hippocampus_R``)
    label_end: str  # the label map's name after the subject part (``_T2w_hippocampus_R_seg``)
    ext: str
    pairs: list[tuple[Path, Path]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return re.sub(r"\W+", "_", self.tail).strip("_").lower() or "images"

    @property
    def mri(self) -> str:
        return f"**/*_{self.tail}{self.ext}"

    @property
    def label(self) -> str:
        return f"{{id}}{self.label_end}{self.ext}"


def _split(name: str) -> tuple[str, str] | None:
    """``(stem, extension)`` of a NIfTI file name, None for another file."""
    for ext in EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return None


def _tail(stem: str) -> str:
    """The name after the subject part (see the module doc); empty when nothing is left."""
    words = stem.split("_")
    entities = 0
    while entities < len(words) - 1 and re.fullmatch(r"[A-Za-z]+-[A-Za-z0-9]+", words[entities]):
        entities += 1
    return "_".join(words[max(entities, 1) :])


def find_folder_pairs(folder: Path) -> list[FolderPattern]:
    """The patterns of ``folder`` (searched recursively) with their pairs.

    Raises:
        DataError: ``folder`` is not a folder, or holds no image with a label map beside it.
    """
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder: give the folder that holds your data")
    patterns: dict[tuple[str, str, str], FolderPattern] = {}
    unnamed: list[Path] = []
    for label in sorted(folder.rglob("*.nii*")):
        split = _split(label.name)
        suffix = next((s for s in LABEL_SUFFIXES if split and split[0].endswith(s)), None)
        if split is None or suffix is None:
            continue
        stem = split[0][: -len(suffix)]
        # sub-01_T2w_seg beside sub-01_T2w; sub-01_lbl beside sub-01_img (HippUnfold-style)
        image = next(
            (
                i
                for i in (label.with_name(n + split[1]) for n in (stem, f"{stem}_img"))
                if i.is_file()
            ),
            None,
        )
        if image is None:
            continue
        image_stem = image.name[: -len(split[1])]
        tail = _tail(image_stem)
        if not tail:
            unnamed.append(image)
            continue
        subject = image_stem[: -len(tail) - 1]
        key = (tail, split[0][len(subject) :], split[1])
        patterns.setdefault(key, FolderPattern(*key)).pairs.append((image, label))
    if not patterns:
        also = (
            f"; names without an '_' after the subject ({unnamed[0].name}) cannot be "
            "told apart from their label maps: rename them <id>_img.nii.gz"
            if unnamed
            else ""
        )
        raise DataError(
            f"no image with its label map beside it in {folder}: name each label map like its "
            f"image plus one of {', '.join(LABEL_SUFFIXES)} (sub-01_T2w.nii.gz and "
            f"sub-01_T2w_seg.nii.gz){also}"
        )
    return sorted(patterns.values(), key=lambda p: p.name)


def _label_stats(patterns: list[FolderPattern]) -> dict[int, tuple[int, int]]:
    """``{value: (voxels in all maps, maps holding it)}`` of the nonzero label values."""
    stats: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for pattern in patterns:
        for _, label in pattern.pairs:
            data = np.asanyarray(nib.load(str(label)).dataobj)
            counts = value_counts(np.rint(data).astype(np.int64))
            for value, n in counts.items():
                if value != 0:
                    stats[value][0] += n
                    stats[value][1] += 1
    return {v: (s[0], s[1]) for v, s in sorted(stats.items())}


def dataset_yaml(folder: Path, name: str) -> str:
    """The text of a dataset config for ``folder`` (see the module doc).

    Raises:
        DataError: no pair in ``folder``.
    """
    patterns = find_folder_pairs(folder)
    stats = _label_stats(patterns)
    maps = sum(len(p.pairs) for p in patterns)
    values = list(stats)
    hsf = values == list(range(1, len(SUBFIELDS)))
    lines = [
        f"# Dataset config for {folder}, written by `hsftrain data init`: train on it with",
        "#   hsftrain train datasets=<this file>   (or hsftrain finetune datasets=<this file>)",
        "# Any key of the packaged dataset configs may be added (batch_size, train_ratio, ...).",
        f"main_path: {folder.resolve()}",
        "datasets:",
        f"  {name}:",
        "    path: .",
        '    ca_type: "1/2/3"       # granularity of the CA labels: 1/2/3 | 1/23 | 123',
        "    patterns:               # an image glob, and its label map's name ({id}: subject)",
    ]
    for p in patterns:
        lines += [
            f"      {p.name}:  # {len(p.pairs)} pair(s)",
            f'        mri: "{p.mri}"',
            f'        label: "{p.label}"',
        ]
    lines.append(f"    # label values found in the {maps} map(s): voxels in all, maps holding it")
    for value, (voxels, holding) in stats.items():
        lines.append(f"    #   {value}: {voxels} voxels in {holding} of {maps} maps")
    lines.append("    labels: {" + ", ".join(f"{v}: {k}" for k, v in enumerate(values, 1)) + "}")
    if hsf:
        lines.append("    # the 7 values of HSF's subfields, named as HSF names them: check them")
        names = {k: SUBFIELDS[k] for k in range(1, len(values) + 1)}
    else:
        lines.append("    # names to fill in (each map's value v trains as class labels[v])")
        names = {k: f"label_{v}" for k, v in enumerate(values, 1)}
    lines.append("    labels_names: {" + ", ".join(f"{k}: {n}" for k, n in names.items()) + "}")
    return "\n".join(lines) + "\n"


def init_dataset(folder: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write the dataset config of ``folder`` to ``out`` (atomically). Returns ``out``.

    Raises:
        ConfigError: ``out`` exists (without ``force``) or is not a ``.yaml`` file name.
        DataError: no pair in ``folder``.
    """
    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    if out.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"--out {out}: give a .yaml file name (datasets= takes .yaml files)")
    if out.exists() and not force:
        raise ConfigError(f"--out {out} exists: choose another name, or add --force to replace it")
    name = re.sub(r"\W+", "_", folder.resolve().name).strip("_").lower() or "data"
    text = dataset_yaml(folder, name)
    write_text_atomic(out, text)
    pairs = sum(1 for line in text.splitlines() if line.strip().startswith("mri:"))
    log.info(
        "wrote %s (%d pattern(s)): check the label names in it, then train with "
        "hsftrain train datasets=%s",
        out, pairs, out,
    )  # fmt: skip
    return out
