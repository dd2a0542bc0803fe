"""BIDS input of ``hsftrain segment``: the entities of a BIDS file name, and the MRIs of a
BIDS dataset that a run takes (``files.bids``, ``files.participant_label``,
``files.session_label``, ``files.suffix``).

A BIDS file name is ``<key>-<value>[_<key>-<value>...]_<suffix><extension>``, e.g.
``sub-01_ses-A_acq-mprage_run-1_T1w.nii.gz`` (BIDS specification, "File name structure").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsftrain.config.compose import ConfigError

log = logging.getLogger(__name__)

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
            raise NotBidsName(f"{name}: the BIDS entity {key!r} appears twice")
        entities[key] = value
    if next(iter(entities)) != "sub":
        raise NotBidsName(f"{name}: a BIDS file name starts with sub-<label>")
    entities["suffix"] = suffix
    entities["extension"] = extension
    return entities


#: MRI file extensions taken from a BIDS dataset.
EXTENSIONS = (".nii.gz", ".nii")
#: ``files.suffix`` values: the modality segmented (``T1w+T2w``: multispectral).
SUFFIXES = ("T1w", "T2w")
_LABEL = re.compile(r"^[a-zA-Z0-9]+$")


class BidsError(ConfigError):
    """A BIDS input that cannot be segmented as asked (not BIDS, unknown participant, ...)."""


@dataclass(frozen=True)
class Selection:
    """What a BIDS run segments (``files.participant_label``, ``files.session_label``,
    ``files.suffix``): labels without their ``sub-``/``ses-`` prefix, empty for all."""

    participants: tuple[str, ...] = ()
    sessions: tuple[str, ...] = ()
    suffix: str = "T1w"
    #: multispectral: each T1w is segmented with the T2w of its sub/ses
    with_t2: bool = False


def labels(key: str, value: Any, prefix: str) -> tuple[str, ...]:
    """``files.participant_label`` / ``files.session_label``: null, one label or a list,
    each with or without its ``prefix`` (``01`` or ``sub-01``).

    Raises:
        BidsError: a label that is not alphanumeric (names the key).
    """
    if value is None or value == "" or value == []:
        return ()
    items = value if isinstance(value, list | tuple) else [value]
    out = []
    for item in items:
        text = str(item)
        text = text[len(prefix) :] if text.startswith(prefix) else text
        if isinstance(item, bool) or not _LABEL.match(text):
            raise BidsError(
                f"{key}={value!r}: give BIDS labels (letters and digits), e.g. {key}=[01,02] "
                f"or {prefix}01"
            )
        out.append(text)
    return tuple(dict.fromkeys(out))


def suffix_choice(value: Any) -> tuple[str, bool]:
    """``files.suffix``: ``T1w``, ``T2w`` or ``[T1w,T2w]`` / ``T1w+T2w`` (multispectral).

    Returns:
        the suffix of the MRIs segmented, and whether a T2w is paired with each.

    Raises:
        BidsError: anything else.
    """
    items = value if isinstance(value, list | tuple) else str(value).split("+")
    names = [str(v).strip() for v in items]
    if len(names) == 1 and names[0] in SUFFIXES:
        return names[0], False
    if sorted(names) == ["T1w", "T2w"]:
        return "T1w", True
    raise BidsError(
        f"files.suffix={value!r}: use T1w, T2w, or [T1w,T2w] (multispectral: each T1w with "
        "the T2w of its session)"
    )


def selection(files: dict[str, Any], root: Path) -> Selection | None:
    """``files.bids`` and the BIDS selection keys of the ``files`` config; None for a
    folder + glob input.

    Raises:
        ConfigError: a BIDS key without ``files.bids=true``, a folder key with it, a bad
            label or suffix, or a ``files.path`` that is not a BIDS dataset.
    """
    enabled = files.get("bids", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"files.bids={enabled!r}: use true (a BIDS dataset) or false")
    participants = labels("files.participant_label", files.get("participant_label"), "sub-")
    sessions = labels("files.session_label", files.get("session_label"), "ses-")
    suffix = files.get("suffix", "T1w")
    if not enabled:
        if participants or sessions or suffix != "T1w":
            raise ConfigError(
                "files.participant_label, files.session_label and files.suffix select MRIs "
                "of a BIDS dataset: add files.bids=true (files.path: the dataset's root)"
            )
        return None
    for key in ("pattern", "t2_pattern"):
        if files.get(key):
            raise ConfigError(
                f"files.{key} is for a plain folder, not a BIDS dataset (files.bids=true): "
                "choose the MRIs with files.suffix (T1w, T2w or [T1w,T2w]) and "
                "files.participant_label / files.session_label"
            )
    check_dataset(root)
    chosen, with_t2 = suffix_choice(suffix)
    return Selection(participants, sessions, chosen, with_t2)


def check_dataset(root: Path) -> None:
    """Check that ``root`` is a BIDS dataset folder.

    Raises:
        BidsError: ``root`` is missing, not a folder, or has no ``dataset_description.json``.
    """
    if not root.is_dir():
        raise BidsError(f"files.path={root}: no such folder (give the BIDS dataset's root folder)")
    if not (root / "dataset_description.json").is_file():
        raise BidsError(
            f"files.path={root} is not a BIDS dataset (no dataset_description.json): give the "
            "dataset's root folder, or segment a plain folder with files.bids=false "
            "files.pattern='**/*T1w.nii.gz'"
        )


def check_output(root: Path, output_dir: Path) -> None:
    """Refuse an output folder inside the dataset's raw data (``<root>`` itself,
    ``<root>/sub-01/...``); ``<root>/derivatives/<name>`` is the usual place.

    Raises:
        BidsError: ``output_dir`` is ``root`` or below it outside ``derivatives/``.
    """
    try:
        relative = output_dir.expanduser().resolve().relative_to(root.resolve())
    except ValueError:
        return
    if not relative.parts or relative.parts[0] != "derivatives" or len(relative.parts) < 2:
        raise BidsError(
            f"files.output_dir={output_dir} lies in the raw data of the BIDS dataset "
            f"{root}: write to {root / 'derivatives' / 'hsftrain'} or a folder outside it"
        )


def _mris(folder: Path, suffix: str) -> list[tuple[Path, dict[str, str]]]:
    """The ``*_<suffix>.nii[.gz]`` files of ``folder`` with their entities, sorted."""
    found = []
    for path in sorted(folder.glob(f"*_{suffix}.nii*")) if folder.is_dir() else []:
        if path.name.startswith(".") or not path.name.endswith(EXTENSIONS):
            continue
        try:
            entities = parse_entities(path)
        except NotBidsName:
            log.warning("%s: not a BIDS file name, left out", path)
            continue
        if entities["suffix"] == suffix and entities["extension"] in EXTENSIONS:
            found.append((path, entities))
    return found


def _sessions(subject: Path) -> list[Path]:
    """The ``ses-*`` folders of a subject folder, or the subject folder itself if none."""
    sessions = sorted(p for p in subject.glob("ses-*") if p.is_dir())
    return sessions or [subject]


def _few(names: Sequence[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" ... ({len(names)} in all)" if len(names) > n else "")


def find_bids_mris(
    root: Path, selection: Selection
) -> tuple[list[tuple[Path, dict[str, str]]], dict[Path, list[Path]]]:
    """The MRIs of the BIDS dataset ``root`` that ``selection`` asks for:
    ``sub-<label>/[ses-<label>/]anat/*_<suffix>.nii[.gz]`` (never ``derivatives/`` or
    ``sourcedata/``), sorted, each with its entities (:func:`parse_entities`); and, when
    ``selection.with_t2``, the T2w candidates of each T1w (:func:`t2_of`).

    Raises:
        BidsError: not a BIDS dataset; an asked participant or session that the dataset
            does not have (names those it has); an asked participant, or an asked
            session of one, without the asked modality; no MRI of the suffix at all.
    """
    check_dataset(root)
    subjects = {p.name[4:]: p for p in sorted(root.glob("sub-*")) if p.is_dir()}
    if not subjects:
        raise BidsError(f"files.path={root}: the BIDS dataset has no sub-<label> folder")
    missing = [p for p in selection.participants if p not in subjects]
    if missing:
        raise BidsError(
            f"files.participant_label: {', '.join('sub-' + p for p in missing)} not in "
            f"{root}; it has {_few(['sub-' + s for s in subjects])}"
        )
    chosen = selection.participants or tuple(subjects)
    sessions = {s: _sessions(subjects[s]) for s in chosen}
    if selection.sessions:
        have = sorted({f.name[4:] for v in sessions.values() for f in v if f.name[:4] == "ses-"})
        unknown = [s for s in selection.sessions if s not in have]
        if unknown:
            raise BidsError(
                f"files.session_label: {', '.join('ses-' + s for s in unknown)} not found for "
                f"{_few(['sub-' + s for s in chosen])}; sessions there: "
                f"{_few(['ses-' + s for s in have]) or 'none'}"
            )
    asked = [selection.suffix] + (["T2w"] if selection.with_t2 else [])
    found: list[tuple[Path, dict[str, str]]] = []
    t2s: dict[Path, list[Path]] = {}
    for label in chosen:
        kept = [
            f
            for f in sessions[label]
            if not selection.sessions or f.name in {"ses-" + s for s in selection.sessions}
        ]
        here = []
        for folder in kept:
            mris = _mris(folder / "anat", selection.suffix)
            t2 = _mris(folder / "anat", "T2w") if selection.with_t2 else []
            name = folder.relative_to(root).as_posix()
            if selection.sessions and (not mris or (selection.with_t2 and not t2)):
                lacking = selection.suffix if not mris else "T2w"
                raise BidsError(
                    f"{name} has no {lacking} MRI ({root / name / 'anat'} holds no "
                    f"*_{lacking}.nii[.gz]): choose other files.session_label or "
                    f"files.suffix={'+'.join(asked) if lacking == 'T2w' else lacking}"
                )
            if not mris:
                log.info("%s: no %s MRI, nothing to segment there", name, selection.suffix)
            for path, entities in mris:
                here.append((path, entities))
                if selection.with_t2:
                    t2s[path] = t2_of(entities, t2)
        if not here and selection.participants:
            raise BidsError(
                f"sub-{label} has no {selection.suffix} MRI in {root / ('sub-' + label)} "
                f"(*/anat/*_{selection.suffix}.nii[.gz]): leave it out of "
                "files.participant_label or choose another files.suffix"
            )
        found += here
    if not found:
        raise BidsError(
            f"no {selection.suffix} MRI in the BIDS dataset {root} "
            f"(sub-*/[ses-*/]anat/*_{selection.suffix}.nii[.gz]): choose another files.suffix"
        )
    return found, t2s


def t2_of(t1: dict[str, str], t2s: Sequence[tuple[Path, dict[str, str]]]) -> list[Path]:
    """The T2w candidates of a T1w among the T2w files of its session folder (same ``sub``
    and ``ses``): those that share the most other entity values with the T1w (``run``,
    ``acq``, ``rec``, ...): one file in the usual case, several when that is ambiguous
    (the subject then fails, naming them), none when the session has no T2w."""

    def shared(entities: dict[str, str]) -> int:
        keys = set(t1) - {"sub", "ses", "suffix", "extension"}
        return sum(entities.get(k) == t1[k] for k in keys)

    best = max((shared(e) for _, e in t2s), default=0)
    return [path for path, entities in t2s if shared(entities) == best]
