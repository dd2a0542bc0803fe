"""Train/validation/test splits, with bagging (bootstrap sampling with replacement)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hsftrain.core.atomic import write_text_atomic


@dataclass(frozen=True)
class Split:
    """Subject indices of each part. ``train`` may repeat indices (bootstrap)."""

    train: list[int]
    val: list[int]
    test: list[int]

    def to_ids(self, ids: Sequence[str]) -> dict[str, list[str]]:
        return {part: [ids[i] for i in idx] for part, idx in asdict(self).items()}

    def save(self, path: str | Path, ids: Sequence[str], seed: int) -> Path:
        """Write the split as subject ids (and seed) so a run can be reproduced."""
        return write_text_atomic(path, json.dumps({"seed": seed, **self.to_ids(ids)}, indent=1))

    @classmethod
    def load(cls, path: str | Path, ids: Sequence[str]) -> Split:
        """Read a split written by :meth:`save`, matching subjects by id.

        Raises:
            ValueError: a subject of the file is no longer discovered.
        """
        data = json.loads(Path(path).read_text())
        index = {sid: i for i, sid in enumerate(ids)}
        missing = [
            s for part in ("train", "val", "test") for s in data.get(part, []) if s not in index
        ]
        if missing:
            raise ValueError(
                f"{path}: {len(missing)} subjects of this split are not in the datasets "
                f"(first: {missing[0]}); use the same data, or drop split_file to re-split"
            )
        return cls(*([index[s] for s in data.get(p, [])] for p in ("train", "val", "test")))


def units_of(n: int, groups: Sequence[Sequence[int]] | None) -> list[list[int]]:
    """Split units: each group of ``groups`` is one unit, every other subject its own,
    ordered by first index (without groups: ``[[0], [1], ...]``).

    Raises:
        ValueError: a group index out of range, or a subject in two groups.
    """
    owner: dict[int, int] = {}
    for g, members in enumerate(groups or []):
        for i in members:
            if not 0 <= int(i) < n or int(i) in owner:
                raise ValueError(f"split groups: subject {i} is out of range or in two groups")
            owner[int(i)] = g
    units: list[list[int]] = []
    seen: set[int] = set()
    for i in range(n):
        if i not in owner:
            units.append([i])
        elif owner[i] not in seen:
            seen.add(owner[i])
            units.append(sorted(int(j) for j in (groups or [])[owner[i]]))
    return units


@dataclass(frozen=True)
class SplitSettings:
    """How :func:`make_split` draws a new split (the ``datasets.*`` keys and ``seed``).

    Attributes:
        train_ratio: the share of subjects in train (``datasets.train_ratio``).
        replace: bagging (``datasets.replace``).
        k_sample: draws with replacement for train (None: the number of units).
        train_on_all: every subject in train and in val.
        seed: seeds the draw.
    """

    train_ratio: float = 0.8
    replace: bool = False
    k_sample: int | None = None
    train_on_all: bool = False
    seed: int = 42


def make_split(
    n: int,
    settings: SplitSettings = SplitSettings(),
    explicit: Sequence[Sequence[int]] | None = None,
    groups: Sequence[Sequence[int]] | None = None,
) -> Split:
    """Split ``n`` subjects.

    * ``explicit``: ``[[train], [val], [test]]`` indices used as given.
    * ``settings.train_on_all``: every subject in train and in val.
    * ``settings.replace``: bagging: ``k_sample`` (default: the number of units) draws with
      replacement for train; the subjects never drawn (out-of-bag) are the validation set.
    * otherwise: a shuffled ``settings.train_ratio`` / rest split.

    ``groups`` (the same subject found twice, :mod:`hsftrain.data.duplicates`) are drawn
    as one unit, so each lands on one side; without groups the result is as it always was.

    Raises:
        ValueError: fewer than two subjects, or a ratio that leaves a part empty.
    """
    if explicit is not None:
        parts = [list(map(int, p)) for p in explicit] + [[], [], []]
        bad = [i for p in parts[:3] for i in p if not 0 <= i < n]
        if bad:
            raise ValueError(f"datasets.train_val_test_idx: indices {bad} out of range 0..{n - 1}")
        return Split(*parts[:3])
    train_ratio, replace, k_sample = settings.train_ratio, settings.replace, settings.k_sample
    if settings.train_on_all:
        return Split(list(range(n)), list(range(n)), [])
    if n < 2:
        raise ValueError(f"only {n} subject found: need at least 2 to split (or train_on_all=true)")
    units = units_of(n, groups)
    if len(units) < 2:
        raise ValueError(
            f"the {n} subjects are all the same subject (see the duplicate warning): "
            "need at least 2 different ones to split (or train_on_all=true)"
        )
    rng = np.random.default_rng(settings.seed)
    if replace:
        drawn = rng.choice(len(units), size=k_sample or len(units), replace=True)
        train = sorted(i for u in drawn for i in units[int(u)])
        out_of_bag = set(range(len(units))) - {int(u) for u in drawn}
        val = sorted(i for u in out_of_bag for i in units[u])
        if not val:
            val = list(units[int(rng.integers(len(units)))])
        return Split(train, val, [])
    order = [int(i) for i in rng.permutation(len(units))]
    n_train = int(round(train_ratio * n))
    train, val = [], []
    for u in order:
        (train if len(train) < n_train else val).extend(units[u])
    if not 0 < n_train < n or not val:
        raise ValueError(
            f"datasets.train_ratio={train_ratio} leaves an empty part with {n} subjects"
        )
    return Split(sorted(train), sorted(val), [])


def crossing_groups(split: Split, groups: Sequence[Sequence[int]]) -> list[list[int]]:
    """Groups with members both in train and in validation (e.g. an explicit split or a
    ``split.json`` made before the duplicates were known)."""
    train, val = set(split.train), set(split.val)
    if train == val:  # train_on_all
        return []
    return [list(g) for g in groups if set(g) & train and set(g) & val]
