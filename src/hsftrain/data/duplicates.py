"""The same subject found twice: by name across datasets or folders, or by image content.

A subject copied into two folders (or listed by two datasets) would otherwise land in
both the training and the validation set, and the validation Dice would be optimistic.
:func:`find_duplicates` groups such subjects; :func:`hsftrain.data.splits.make_split`
keeps each group on one side of the split, and a warning names them.

Two subjects are the same when

* their images are byte-identical files (found by size first, then xxh3_64, so only
  files of equal size are read), or
* they have the same *name*: the MRI file name minus its pattern's fixed suffix
  (``sub-01`` for ``sub-01_T2w_hippocampus_R.nii.gz`` and ``*_T2w_hippocampus_R.nii.gz``),
  in two datasets, two patterns, or two folders of one dataset. Where most files of a
  pattern share their name (``sub-*/anat/T1w.nii.gz``), the name is not an identifier
  and the path below the dataset folder is used instead.

Grouping only constrains the split; nothing is dropped. Left and right hemispheres of
one subject given by two patterns are grouped too, which is what a split should do.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from hsftrain.data.subjects import DatasetSpec, Subject, id_stem, parse_subject_id

log = logging.getLogger(__name__)

#: Groups named one by one in the log; the rest are counted.
SHOWN = 5


def _pattern_of(subject: Subject, spec: DatasetSpec) -> str:
    dataset, pattern, _ = parse_subject_id(subject.id)
    if dataset == spec.name and pattern in spec.patterns:
        return pattern
    return next(iter(spec.patterns))


def name_keys(subjects: Sequence[Subject], specs: Sequence[DatasetSpec]) -> list[str]:
    """The name of each subject used to find it in another dataset (see module doc)."""
    by_index = {s.index: s for s in specs}
    places = []
    for subject in subjects:
        spec = by_index[subject.dataset]
        pattern = _pattern_of(subject, spec)
        stem = id_stem(subject.image, spec.patterns[pattern][0])
        places.append(((spec.index, pattern), stem, spec))
    stems: dict[tuple[int, str], list[str]] = defaultdict(list)
    for where, stem, _ in places:
        stems[where].append(stem)
    # names identify subjects where most files of a pattern have their own
    named = {where: 2 * len(set(s)) > len(s) for where, s in stems.items()}
    keys = []
    for subject, (where, stem, spec) in zip(subjects, places, strict=True):
        if named[where]:
            keys.append(stem)
        else:  # not an identifier in its dataset: the folders below the dataset say who
            try:
                folder = subject.image.parent.relative_to(spec.root).as_posix()
            except ValueError:
                folder = subject.image.parent.as_posix()
            keys.append(f"{folder}/{stem}")
    return keys


def identical_files(paths: Sequence[Path]) -> list[list[int]]:
    """Indices of byte-identical files, grouped (only files of equal size are hashed)."""
    from hsftrain.hub.fetch import file_hash

    by_size: dict[int, list[int]] = defaultdict(list)
    for i, path in enumerate(paths):
        by_size[os.stat(path).st_size].append(i)
    groups = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_hash: dict[str, list[int]] = defaultdict(list)
        for i in same_size:
            by_hash[file_hash(paths[i])].append(i)
        groups += [g for g in by_hash.values() if len(g) > 1]
    return groups


def find_duplicates(subjects: Sequence[Subject], specs: Sequence[DatasetSpec]) -> list[list[int]]:
    """Groups of subject indices that are the same subject (see module doc), each sorted,
    ordered by their first index. One warning names those found in two datasets or as
    identical files (hemispheres of one dataset, grouped by name, are only logged at
    INFO level)."""
    parent = list(range(len(subjects)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(members: Sequence[int]) -> None:
        for i in members[1:]:
            parent[root(i)] = root(members[0])

    by_index = {s.index: s for s in specs}
    reasons: list[tuple[set[int], str, bool]] = []  # members, why, worth a warning
    by_name: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(name_keys(subjects, specs)):
        by_name[key].append(i)
    for key, members in by_name.items():
        places = {
            (subjects[i].dataset, _pattern_of(subjects[i], by_index[subjects[i].dataset]))
            for i in members
        }
        if len(members) > 1:
            datasets = {subjects[i].dataset for i in members}
            # two hemispheres (patterns) of one dataset are expected; anything else is not
            loud = len(datasets) > 1 or len(places) < len(members)
            reasons.append((set(members), f"same name {key!r}", loud))
            join(members)
    for members in identical_files([s.image for s in subjects]):
        # one image file read by several patterns of a dataset, each with its own label
        # map (left and right of one scan) is what the config asks for
        one_file = len({subjects[i].image.resolve() for i in members}) == 1
        places = {
            (subjects[i].dataset, _pattern_of(subjects[i], by_index[subjects[i].dataset]))
            for i in members
        }
        intended = one_file and len({d for d, _ in places}) == 1 and len(places) == len(members)
        reasons.append(
            (
                set(members),
                "one image, a label map per pattern" if intended else "identical image files",
                not intended,
            )
        )
        join(members)
    grouped: dict[int, list[int]] = defaultdict(list)
    for i in range(len(subjects)):
        grouped[root(i)].append(i)
    groups = sorted((sorted(g) for g in grouped.values() if len(g) > 1), key=lambda g: g[0])
    warned: list[str] = []
    quiet: list[str] = []
    for g in groups:
        why = sorted({r for m, r, _ in reasons if m & set(g)})
        line = f"{' = '.join(subjects[i].id for i in g)} ({'; '.join(why)})"
        (warned if any(w for m, _, w in reasons if m & set(g)) else quiet).append(line)
    if warned:
        more = f"; and {len(warned) - SHOWN} more" if len(warned) > SHOWN else ""
        log.warning(
            "%d subject(s) found more than once, kept on the same side of the split: %s%s",
            len(warned),
            "; ".join(warned[:SHOWN]),
            more,
        )
    if quiet:
        log.info(
            "%d subject(s) with several images in one dataset (e.g. both hemispheres) kept "
            "on the same side of the split: %s%s",
            len(quiet),
            "; ".join(quiet[:SHOWN]),
            "; ..." if len(quiet) > SHOWN else "",
        )
    return groups
