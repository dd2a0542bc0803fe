"""BIDS input of ``hsftrain segment``: the entities of a BIDS file name, and the MRIs of a
BIDS dataset that a run takes (``files.bids``, ``files.participant_label``,
``files.session_label``, ``files.suffix``).

A BIDS file name is ``<key>-<value>[_<key>-<value>...]_<suffix><extension>``, e.g.
``sub-01_ses-A_acq-mprage_run-1_T1w.nii.gz`` (BIDS specification, "File name structure").
"""

from __future__ import annotations

import re
from pathlib import Path

#: The order of the entities in a BIDS file name (BIDS specification, "Entity table"); a
#: name written by hsftrain lists its entities in this order.
ENTITY_ORDER = (
    "sub",
    "ses",
    "sample",
    "task",
    "tracksys",
    "acq",
    "nuc",
    "voi",
    "ce",
    "trc",
    "stain",
    "rec",
    "dir",
    "run",
    "mod",
    "echo",
    "flip",
    "inv",
    "mt",
    "part",
    "proc",
    "hemi",
    "space",
    "split",
    "recording",
    "chunk",
    "seg",
    "res",
    "den",
    "label",
    "desc",
)

_PAIR = re.compile(r"^([a-zA-Z]+)-([a-zA-Z0-9]+)$")
_SUFFIX = re.compile(r"^[a-zA-Z0-9]+$")


class NotBidsName(ValueError):
    """A file name that does not follow the BIDS file name rules."""


def parse_entities(path: Path | str) -> dict[str, str]:
    """The entities of a BIDS file name, in the order they appear in it, then ``"suffix"``
    and ``"extension"``.

    Only the file name is read (not its folders, not the disk). The extension starts at
    the first dot and keeps it (``".nii.gz"``, ``".nii"``, ``".json"``; ``""`` when there is
    none). Values are kept as written: ``run-01`` gives ``"run": "01"`` (not ``"1"``).

    >>> parse_entities(Path("sub-01/ses-A/anat/sub-01_ses-A_acq-mp2rage_run-2_T1w.nii.gz"))
    {'sub': '01', 'ses': 'A', 'acq': 'mp2rage', 'run': '2', 'suffix': 'T1w', 'extension': '.nii.gz'}

    Raises:
        NotBidsName: the name does not start with ``sub-<label>``, a part before the
            suffix is not ``<key>-<alphanumeric value>``, an entity appears twice, or the
            suffix is missing or not alphanumeric.
    """
    name = Path(path).name
    stem, dot, rest = name.partition(".")
    extension = dot + rest
    parts = stem.split("_")
    suffix = parts[-1]
    if len(parts) < 2 or not _SUFFIX.match(suffix):
        raise NotBidsName(f"{name}: not a BIDS file name (sub-<label>[_<key>-<value>]_<suffix>)")
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        match = _PAIR.match(part)
        if not match:
            raise NotBidsName(f"{name}: {part!r} is not a BIDS entity <key>-<alphanumeric value>")
        key, value = match.groups()
        if key in entities:
            raise NotBidsName(f"{name}: the entity {key!r} appears twice")
        entities[key] = value
    if next(iter(entities)) != "sub":
        raise NotBidsName(f"{name}: a BIDS file name starts with sub-<label>")
    entities["suffix"] = suffix
    entities["extension"] = extension
    return entities
