"""Which MRIs a ``segment`` run takes: globbing, masks, our own outputs, subject names, and
the T2 paired with each T1 (multispectral runs)."""

from __future__ import annotations

import fnmatch
import glob
import re
from collections.abc import Sequence
from pathlib import Path

from hsftrain.config.compose import ConfigError
from hsftrain.data.discovery import id_stem
from hsftrain.inference.image import strip_extension

#: Files written by ``hsftrain segment`` (never taken as inputs).
OWN_OUTPUT = re.compile(
    r"_hippocampus_(seg|crop|seg_crop|uncertainty|uncertainty_crop|qc|volumes|labels"
    r"|probabilities|probabilities_crop)"
    r"(_(left|right|itksnap|freesurfer))?\.(nii\.gz|png|csv|txt)$"
)


def _is_candidate(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and not OWN_OUTPUT.search(path.name)


def find_mris(root: Path, pattern: str | None, mask_patterns: Sequence[str] = ()) -> list[Path]:
    """MRIs under ``root`` matching ``pattern``, minus ``mask_patterns`` and our own outputs,
    sorted.

    ``mask_patterns`` are globs matched against the file name and against its path relative
    to ``root``. Files written by ``hsftrain segment`` and temporary files are always left out.

    Raises:
        ConfigError: an absolute ``pattern``.
        FileNotFoundError: ``root`` does not exist, or nothing matches.
    """
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"files.path={root} does not exist")
    if pattern and Path(pattern).is_absolute():
        raise ConfigError(
            f"files.pattern={pattern!r} must be relative to files.path (e.g. '**/*T1w.nii.gz')"
        )
    found = []
    for path in sorted(root.glob(pattern or "*")):
        if not _is_candidate(path):
            continue
        relative = path.relative_to(root).as_posix()
        if any(
            fnmatch.fnmatch(path.name, m) or fnmatch.fnmatch(relative, m) for m in mask_patterns
        ):
            continue
        found.append(path)
    if not found:
        masks = f" (excluding {list(mask_patterns)})" if mask_patterns else ""
        raise FileNotFoundError(
            f"no MRI matches files.pattern={pattern!r} under files.path={root}{masks}"
        )
    return found


def subject_name(mri: Path, root: Path) -> str:
    """Subject id in volumes.csv: the path below ``files.path``, without extension."""
    try:
        relative = mri.relative_to(root) if root.is_dir() else Path(mri.name)
    except ValueError:
        relative = Path(mri.name)
    return (relative.parent / strip_extension(relative.name)).as_posix()


def t2_candidates(t1: Path, t1_pattern: str | None, t2_pattern: str) -> list[Path]:
    """Files next to ``t1`` matching ``t2_pattern`` (``{id}``: the T1's name minus the fixed
    end of ``t1_pattern``, e.g. ``sub01`` for ``sub01_mprage.nii.gz`` and
    ``*_mprage.nii.gz``), the T1 itself and our own outputs left out, sorted."""
    if "{id}" in t2_pattern:
        stem = id_stem(t1, t1_pattern or t1.name)
        t2_pattern = t2_pattern.replace("{id}", glob.escape(stem))
    matches = sorted(Path(p) for p in glob.glob(str(t1.parent / t2_pattern), recursive=True))
    return [m for m in matches if _is_candidate(m) and m.resolve() != t1.resolve()]


def pair_t2(
    mris: Sequence[Path], t1_pattern: str | None, t2_pattern: str
) -> tuple[list[Path], dict[Path, list[Path]]]:
    """The T1s of a multispectral run and the T2 candidates of each.

    A file that is some T1's T2 is not itself segmented as a T1 (a broad ``files.pattern``
    may match both). A T1 may have no candidate or several; the per-subject pipeline says
    what it does then.

    Returns:
        ``(t1s, {t1: [t2 candidates]})``, ``t1s`` in the order of ``mris``.
    """
    candidates = {t1: t2_candidates(t1, t1_pattern, t2_pattern) for t1 in mris}
    taken = {t2.resolve() for found in candidates.values() if len(found) == 1 for t2 in found}
    t1s = [m for m in mris if m.resolve() not in taken]
    return t1s, {t1: candidates[t1] for t1 in t1s}
