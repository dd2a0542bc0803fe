"""``qc_ratings.tsv``: one quality rating per segmented crop (docs/user_guide.md, section 5).

Tab-separated, UTF-8, with a header line; columns in any order, others ignored:

* ``subject``: as the volumes tables name it (HSF layout: the input's path below
  ``files.path`` without extension; BIDS layout: the input's entities, ``sub-01_ses-A``);
* ``side``: ``left`` / ``right`` (a whole head) or ``n/a`` (a crop input; ``crop`` and an
  empty cell mean the same);
* ``rating``: ``pass`` (the prediction is right), ``fix`` (right once corrected: the
  corrected label map is used), ``fail`` (left out), or empty (not rated yet: left out);
* ``note``: free text (optional).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hsftrain.collect.outputs import NO_SIDE, SIDES, CollectError, SegmentedCrop
from hsftrain.core.atomic import write_text_atomic

COLUMNS: tuple[str, ...] = ("subject", "side", "rating", "note")
RATINGS: tuple[str, ...] = ("pass", "fix", "fail")


@dataclass(frozen=True)
class Rating:
    subject: str
    side: str
    rating: str  # pass | fix | fail | "" (not rated)
    note: str = ""


def _side(value: str) -> str:
    value = value.strip().lower()
    return NO_SIDE if value in ("", "crop", "n/a", "na") else value


def read_ratings(path: str | Path) -> dict[tuple[str, str], Rating]:
    """The ratings of ``path`` by ``(subject, side)``.

    Raises:
        CollectError: no such file, a missing column, an unknown side or rating, or a
            crop rated twice (names the file, the line and the accepted values).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CollectError(
            f"--ratings {path}: no such file; write one with `hsftrain data collect SEG_DIR "
            f"--ratings {path} --init-ratings` (or the QC report), then rate each row"
        )
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = [c for c in COLUMNS[:3] if c not in (reader.fieldnames or [])]
        if missing:
            raise CollectError(
                f"{path}: no {', '.join(missing)} column; the header line must be the "
                f"tab-separated {' '.join(COLUMNS)}"
            )
        out: dict[tuple[str, str], Rating] = {}
        for line, row in enumerate(reader, start=2):
            subject = (row.get("subject") or "").strip()
            side = _side(row.get("side") or "")
            rating = (row.get("rating") or "").strip().lower()
            if not subject:
                continue
            if side not in (*SIDES, NO_SIDE):
                raise CollectError(
                    f"{path}, line {line}: side {row.get('side')!r} of {subject}; use left, "
                    "right or n/a (a crop input)"
                )
            if rating and rating not in RATINGS:
                raise CollectError(
                    f"{path}, line {line}: rating {row.get('rating')!r} of {subject}; use "
                    "pass, fix, fail or leave it empty (not rated)"
                )
            if (subject, side) in out:
                raise CollectError(f"{path}, line {line}: {subject} ({side}) is rated twice")
            out[subject, side] = Rating(subject, side, rating, (row.get("note") or "").strip())
    return out


def check_known(
    path: str | Path, ratings: dict[tuple[str, str], Rating], crops: Sequence[SegmentedCrop]
) -> None:
    """Refuse ratings of crops that the segmentation output does not hold.

    Raises:
        CollectError: names the unknown subjects (first five) and how many.
    """
    known = {c.key for c in crops}
    unknown = [f"{s} ({side})" for s, side in ratings if (s, side) not in known]
    if unknown:
        sample = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise CollectError(
            f"{path}: {len(unknown)} rated subject(s) not in the segmentation output: "
            f"{sample}; check the subject and side columns (or the folder given)"
        )


def ratings_text(crops: Sequence[SegmentedCrop], rating: str = "") -> str:
    """A ratings file listing every crop with ``rating`` (empty: not rated)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    for crop in crops:
        writer.writerow([crop.subject, crop.side, rating, ""])
    return buffer.getvalue()


def write_ratings(path: str | Path, crops: Sequence[SegmentedCrop], rating: str = "") -> Path:
    """Write a ratings file for ``crops`` (refuses to replace an existing one).

    Raises:
        CollectError: ``path`` exists.
    """
    path = Path(path).expanduser()
    if path.exists():
        raise CollectError(
            f"--ratings {path} exists: it may hold ratings; remove it or name another"
        )
    return write_text_atomic(path, ratings_text(crops, rating))
