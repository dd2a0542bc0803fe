"""Find prediction and reference files and pair them by subject id.

The subject id of a file is read from its *file name* (not its folder) with a regular
expression, ``id_regex``: the named group ``id`` if the pattern has one, else its first
group, else the whole match. The default, :data:`DEFAULT_ID_REGEX`, drops the extension
(``.nii.gz``, ``.nii``, ``.mgz``) and any trailing run of the known suffixes
:data:`KNOWN_SUFFIXES`, so that ``sub-01_seg.nii.gz``, ``sub-01_pred.nii.gz``,
``sub-01_lbl.nii.gz`` and ``sub-01.nii.gz`` all have the id ``sub-01``. Sides
(``_left``/``_right``, ``_L``/``_R``) are kept, so a left prediction pairs with a left
reference only.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from hsftrain.core.errors import UserError

log = logging.getLogger(__name__)

#: Suffixes stripped from the end of a file name (before the extension) by the default id.
KNOWN_SUFFIXES: tuple[str, ...] = (
    "seg",
    "lbl",
    "label",
    "labels",
    "pred",
    "prediction",
    "img",
    "mask",
    "hippocampus",
)
#: Outputs of ``hsftrain segment`` that are not native-space segmentations; skipped when a
#: folder is given (a glob takes them if asked to).
NOT_SEGMENTATIONS: tuple[str, ...] = ("_uncertainty", "_crop")
#: Default ``id_regex``: the file name without extension and known suffixes.
DEFAULT_ID_REGEX = r"^(?P<id>.+?)(?:_(?:" + "|".join(KNOWN_SUFFIXES) + r"))*\.(?:nii\.gz|nii|mgz)$"


class PairingError(UserError, ValueError):
    """Prediction and reference files that cannot be paired (names the files and the fix)."""


@dataclass(frozen=True)
class Pair:
    """A prediction and the reference segmentation of the same subject."""

    subject: str
    pred: Path
    ref: Path


@dataclass(frozen=True)
class Unpaired:
    """A file left without a partner (one row of ``unpaired.csv``).

    ``side`` is ``"pred"`` or ``"ref"``; ``subject`` is ``""`` when ``id_regex`` does not
    match the file name.
    """

    side: str
    subject: str
    path: Path


@dataclass
class Pairing:
    """Result of :func:`pair_files`: the pairs (sorted by subject) and the leftovers."""

    pairs: list[Pair] = field(default_factory=list)
    unpaired: list[Unpaired] = field(default_factory=list)

    @property
    def unpaired_pred(self) -> list[Path]:
        """Predictions without a reference."""
        return [u.path for u in self.unpaired if u.side == "pred"]

    @property
    def unpaired_ref(self) -> list[Path]:
        """References without a prediction."""
        return [u.path for u in self.unpaired if u.side == "ref"]


def compile_id_regex(id_regex: str) -> re.Pattern[str]:
    """Compile ``id_regex``.

    Raises:
        PairingError: not a valid regular expression.
    """
    try:
        return re.compile(id_regex)
    except re.error as err:
        raise PairingError(
            f"`id_regex` {id_regex!r} is not a valid regular expression ({err}); "
            f"the default is {DEFAULT_ID_REGEX!r}"
        ) from err


def subject_id(path: str | Path, id_regex: str | re.Pattern[str] = DEFAULT_ID_REGEX) -> str | None:
    """Subject id of ``path`` read from its file name, or None if ``id_regex`` does not match.

    Examples:
        >>> subject_id("preds/sub-01_seg.nii.gz")
        'sub-01'
        >>> subject_id("labelsTr/hippocampus_001.nii.gz")
        'hippocampus_001'
        >>> subject_id("sub-01_T1w_left_hippocampus_seg.nii.gz", r"^(?P<id>sub-[^_]+)")
        'sub-01'
    """
    pattern = compile_id_regex(id_regex) if isinstance(id_regex, str) else id_regex
    match = pattern.search(Path(path).name)
    if match is None:
        return None
    if "id" in pattern.groupindex:
        value = match.group("id")
    elif pattern.groups:
        value = match.group(1)
    else:
        value = match.group(0)
    return value or None


def find_files(spec: str | Path, pattern: str = "*.nii*", key: str = "pred") -> list[Path]:
    """Files named by ``spec``: every file of a folder matching ``pattern``, or a glob.

    Globs support ``**`` (recursive). ``~`` is expanded.

    Raises:
        FileNotFoundError: nothing matches (names ``key``, the folder or glob, and the fix).
    """
    text = str(Path(str(spec)).expanduser()) if str(spec).startswith("~") else str(spec)
    folder = Path(text)
    if folder.is_dir():
        files = sorted(
            p
            for p in folder.glob(pattern)
            if p.is_file() and not any(tag in p.name for tag in NOT_SEGMENTATIONS)
        )
        where = f"folder {folder} (pattern {pattern!r})"
    else:
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        where = f"glob {text!r}"
    if not files:
        raise FileNotFoundError(
            f"`{key}`: no file matches the {where}; give a folder of NIfTI files or a glob "
            f"such as {key}=DIR/*_seg.nii.gz"
        )
    return files


def _ids(
    files: list[Path], pattern: re.Pattern[str], key: str
) -> tuple[dict[str, Path], list[Path]]:
    """``{id: file}`` and the files whose name ``pattern`` does not match.

    Raises:
        PairingError: two files with the same id.
    """
    by_id: dict[str, Path] = {}
    unmatched: list[Path] = []
    for path in files:
        sid = subject_id(path, pattern)
        if sid is None:
            unmatched.append(path)
        elif sid in by_id:
            raise PairingError(
                f"`{key}`: {by_id[sid]} and {path} both have the subject id {sid!r}; narrow "
                f"the `{key}` glob (e.g. {key}=DIR/*_seg.nii.gz) or set `id_regex` so that "
                "ids are unique"
            )
        else:
            by_id[sid] = path
    return by_id, unmatched


def pair_files(
    preds: list[Path],
    refs: list[Path],
    id_regex: str = DEFAULT_ID_REGEX,
    pred_spec: str = "",
    ref_spec: str = "",
    max_logged: int = 10,
) -> Pairing:
    """Pair prediction and reference files by subject id; log the unpaired files.

    Each unpaired file gets a warning naming it, up to ``max_logged`` per side, then one
    line with the count of the others (every one is in :attr:`Pairing.unpaired`).

    Args:
        preds: prediction files.
        refs: reference files.
        id_regex: how a subject id is read from a file name (module docstring).
        pred_spec: the ``pred`` folder or glob, named in messages.
        ref_spec: the ``ref`` folder or glob, named in messages.
        max_logged: unpaired files named in the log per side.

    Raises:
        PairingError: invalid ``id_regex``, duplicate ids on one side, or no pair at all.
    """
    pattern = compile_id_regex(id_regex)
    pred_ids, pred_unmatched = _ids(preds, pattern, "pred")
    ref_ids, ref_unmatched = _ids(refs, pattern, "ref")
    common = sorted(set(pred_ids) & set(ref_ids))
    pairing = Pairing(pairs=[Pair(sid, pred_ids[sid], ref_ids[sid]) for sid in common])
    for side, ids, unmatched, other in (
        ("pred", pred_ids, pred_unmatched, "reference"),
        ("ref", ref_ids, ref_unmatched, "prediction"),
    ):
        lonely = [
            Unpaired(side, sid, path) for sid, path in sorted(ids.items()) if sid not in common
        ]
        lonely += [Unpaired(side, "", path) for path in unmatched]
        what = "prediction" if side == "pred" else "reference"
        for item in lonely[:max_logged]:
            if item.subject:
                log.warning(
                    "unpaired %s %s (id %r): no %s with this id",
                    what,
                    item.path,
                    item.subject,
                    other,
                )
            else:
                log.warning(
                    "unpaired %s %s: its name does not match id_regex %r", what, item.path, id_regex
                )
        if len(lonely) > max_logged:
            log.warning(
                "... and %d more unpaired %ss (listed in unpaired.csv of the evaluation output)",
                len(lonely) - max_logged,
                what,
            )
        pairing.unpaired.extend(lonely)
    if not pairing.pairs:
        raise PairingError(
            f"no prediction pairs with a reference: pred={pred_spec or '?'} gave ids "
            f"{_sample(pred_ids)}, ref={ref_spec or '?'} gave ids {_sample(ref_ids)}; point "
            "`pred` and `ref` at files of the same subjects, or set `id_regex` (a regex whose "
            f"group `id` is the subject id; default {DEFAULT_ID_REGEX!r}) so both sides give "
            "the same ids"
        )
    log.info(
        "paired %d subjects (%d predictions and %d references unpaired)",
        len(pairing.pairs),
        len(pairing.unpaired_pred),
        len(pairing.unpaired_ref),
    )
    return pairing


def single_pair(
    pred: str | Path, ref: str | Path, id_regex: str = DEFAULT_ID_REGEX
) -> Pairing | None:
    """One pair when ``pred`` and ``ref`` each name one existing file, whatever their names
    (e.g. a prediction against FreeSurfer's ``aparc+aseg.mgz``); None otherwise.

    The subject is the prediction's id (``id_regex``), or its file name without extension.

    Raises:
        PairingError: invalid ``id_regex``.
    """
    files = [Path(os.path.expanduser(str(spec))) for spec in (pred, ref)]
    if not all(f.is_file() for f in files):
        return None
    pattern = compile_id_regex(id_regex)
    name = files[0].name
    stem = re.sub(r"\.(nii\.gz|nii|mgz|mgh)$", "", name)
    subject = subject_id(files[0], pattern) or stem
    log.info("pred and ref are two files: compared as one pair (subject %r)", subject)
    return Pairing(pairs=[Pair(subject, files[0], files[1])])


def _sample(ids: dict[str, Path], n: int = 3) -> str:
    names = sorted(ids)
    more = f" ... ({len(names)} in all)" if len(names) > n else ""
    return "[" + ", ".join(repr(s) for s in names[:n]) + more + "]"
