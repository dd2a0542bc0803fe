"""Train/validation/test splits, with bagging (bootstrap sampling with replacement)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"seed": seed, **self.to_ids(ids)}, indent=1))
        return path

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


def make_split(
    n: int,
    train_ratio: float = 0.8,
    replace: bool = False,
    k_sample: int | None = None,
    explicit: Sequence[Sequence[int]] | None = None,
    train_on_all: bool = False,
    seed: int = 42,
) -> Split:
    """Split ``n`` subjects.

    * ``explicit``: ``[[train], [val], [test]]`` indices used as given.
    * ``train_on_all``: every subject in train and in val.
    * ``replace``: bagging: ``k_sample`` (default ``n``) draws with replacement for train;
      the subjects never drawn (out-of-bag) are the validation set.
    * otherwise: a shuffled ``train_ratio`` / rest split.

    Raises:
        ValueError: fewer than two subjects, or a ratio that leaves a part empty.
    """
    if explicit is not None:
        parts = [list(map(int, p)) for p in explicit] + [[], [], []]
        bad = [i for p in parts[:3] for i in p if not 0 <= i < n]
        if bad:
            raise ValueError(f"datasets.train_val_test_idx: indices {bad} out of range 0..{n - 1}")
        return Split(*parts[:3])
    if train_on_all:
        return Split(list(range(n)), list(range(n)), [])
    if n < 2:
        raise ValueError(f"only {n} subject found: need at least 2 to split (or train_on_all=true)")
    rng = np.random.default_rng(seed)
    if replace:
        train = sorted(int(i) for i in rng.choice(n, size=k_sample or n, replace=True))
        val = sorted(set(range(n)) - set(train))
        if not val:
            val = [int(rng.integers(n))]
        return Split(train, val, [])
    order = [int(i) for i in rng.permutation(n)]
    n_train = int(round(train_ratio * n))
    if not 0 < n_train < n:
        raise ValueError(
            f"datasets.train_ratio={train_ratio} leaves an empty part with {n} subjects"
        )
    return Split(sorted(order[:n_train]), sorted(order[n_train:]), [])
