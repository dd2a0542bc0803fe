"""Splitting a cohort across the nodes of a cluster, and merging the shards' tables.

A run with ``files.shard=i/N`` (or, when that key is unset, inside a SLURM job array:
``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``) segments the i-th of N contiguous,
near-equal blocks of the **sorted** list of MRIs that the run finds (finished subjects
included, so every shard computes the same split whatever the others have done). Each
shard writes its subjects' outputs as usual and its own table ``volumes.<i>-of-<N>.csv``
next to where ``volumes.csv`` goes. Blocks are contiguous, so the concatenation of the N
tables in shard order is exactly the table one unsharded run writes:
:func:`merge_volumes` (``hsftrain volumes merge DIR``, or the last shard to finish)
writes it as ``volumes.csv``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hsftrain.config import ConfigError
from hsftrain.files import write_text_atomic

log = logging.getLogger(__name__)

T = TypeVar("T")

#: ``files.shard`` values that turn sharding off, even inside a SLURM job array.
OFF = ("off", "none", "no", "false")
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_TABLE = re.compile(r"^(?P<stem>.+)\.(?P<index>\d+)-of-(?P<count>\d+)(?P<ext>\.[^.]+)$")


class ShardError(ConfigError):
    """Shard tables that cannot be merged (missing shards, mixed runs); names the fix."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def bounds(self, total: int) -> tuple[int, int]:
        """``[start, stop)`` of this shard's block among ``total`` sorted items: the first
        ``total % count`` shards get one item more than the others."""
        size, extra = divmod(total, self.count)
        start = (self.index - 1) * size + min(self.index - 1, extra)
        return start, start + size + (1 if self.index <= extra else 0)

    def select(self, items: Sequence[T]) -> list[T]:
        """This shard's contiguous block of ``items`` (already sorted)."""
        start, stop = self.bounds(len(items))
        return list(items[start:stop])

    def table(self, volumes_csv: Path) -> Path:
        """This shard's table: ``volumes.csv`` -> ``volumes.<i>-of-<N>.csv``."""
        return volumes_csv.with_name(f"{_stem(volumes_csv)}.{self.index}-of-{self.count}.csv")


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def parse_shard(value: object) -> Shard | None:
    """``"i/N"`` -> :class:`Shard`; ``None`` or ``off`` -> None.

    Raises:
        ConfigError: anything else, or i outside 1..N (names ``files.shard``).
    """
    if value is None or str(value).strip().lower() in OFF:
        return None
    match = _SHARD.match(str(value))
    if not match:
        raise ConfigError(
            f"files.shard={value!r}: give i/N (this run segments the i-th of N parts of the "
            "sorted subject list, e.g. files.shard=1/4), or off"
        )
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(
            f"files.shard={value!r}: i must be between 1 and N (N >= 1), e.g. files.shard=1/{max(count, 1)}"
        )
    return Shard(index, count)


def slurm_shard(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of a SLURM job array task (``SLURM_ARRAY_TASK_ID`` minus
    ``SLURM_ARRAY_TASK_MIN``, divided by ``SLURM_ARRAY_TASK_STEP``, of
    ``SLURM_ARRAY_TASK_COUNT``), or None outside an array.

    Raises:
        ConfigError: array variables that do not describe one task of the array.
    """
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    try:
        task = int(env["SLURM_ARRAY_TASK_ID"])
        count = int(env["SLURM_ARRAY_TASK_COUNT"])
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
        step = max(1, int(env.get("SLURM_ARRAY_TASK_STEP", "1") or 1))
    except ValueError as err:
        raise ConfigError(
            f"SLURM job array variables are not integers ({err}); set files.shard=i/N "
            "explicitly (or files.shard=off)"
        ) from err
    index = (task - first) // step + 1
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(
            f"SLURM_ARRAY_TASK_ID={task} is not one of the {count} tasks of the array "
            f"(SLURM_ARRAY_TASK_MIN={first}, STEP={step}); set files.shard=i/N explicitly"
        )
    return Shard(index, count)


def choose_shard(value: object, environ: Mapping[str, str] | None = None) -> Shard | None:
    """``files.shard`` when set; else the SLURM array task's shard (logged); a single
    shard (``1/1``) is no sharding.

    Raises:
        ConfigError: a malformed ``files.shard`` or SLURM array.
    """
    if value is not None:
        shard = parse_shard(value)
    else:
        shard = slurm_shard(environ)
        if shard is not None:
            log.info(
                "files.shard unset: shard %s from the SLURM job array (files.shard=off to "
                "segment every subject)",
                shard,
            )
    return shard if shard is not None and shard.count > 1 else None


@dataclass(frozen=True)
class ShardTables:
    """The shard tables of one run found in a folder."""

    stem: str
    count: int
    found: dict[int, Path]

    @property
    def missing(self) -> list[int]:
        return [i for i in range(1, self.count + 1) if i not in self.found]

    @property
    def complete(self) -> bool:
        return not self.missing


def shard_tables(folder: Path) -> list[ShardTables]:
    """Every ``<stem>.<i>-of-<N>.csv`` in ``folder``, grouped by ``(stem, N)``."""
    groups: dict[tuple[str, int], dict[int, Path]] = {}
    for path in sorted(folder.glob("*-of-*.csv")):
        match = _TABLE.match(path.name)
        if not match or path.name.startswith("."):
            continue
        key = (match["stem"], int(match["count"]))
        groups.setdefault(key, {})[int(match["index"])] = path
    return [ShardTables(stem, n, found) for (stem, n), found in sorted(groups.items())]


def _concatenate(paths: Sequence[Path]) -> str:
    """One CSV text: the first table's header, then every table's rows, in order.

    Raises:
        ShardError: tables with different headers.
    """
    header = ""
    rows: list[str] = []
    for path in paths:
        lines = path.read_text().splitlines(keepends=True)
        if not lines:
            continue
        if header and lines[0] != header:
            raise ShardError(
                f"{path}: its columns differ from {paths[0].name}'s; these tables come from "
                "different hsftrain versions: rerun that shard"
            )
        header = header or lines[0]
        rows += lines[1:]
    return header + "".join(rows)


def merge_volumes(
    folder: str | Path, out: str | Path | None = None, stem: str | None = None
) -> Path:
    """Merge the shard tables ``<stem>.<i>-of-<N>.csv`` of ``folder`` into ``<stem>.csv``
    (or ``out``): the header once, then the rows of shard 1, 2, ... N.

    Raises:
        ShardError: no shard table, tables of several runs (give ``stem``), or missing
            shards (named, with the ``files.shard`` to rerun).
        FileNotFoundError: ``folder`` does not exist.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: no such folder (the folder holding volumes.<i>-of-<N>.csv)"
        )
    groups = [g for g in shard_tables(folder) if stem is None or g.stem == stem]
    if not groups:
        what = f"{stem}.<i>-of-<N>.csv" if stem else "<name>.<i>-of-<N>.csv"
        raise ShardError(
            f"{folder}: no shard table ({what}) to merge; they are written by "
            "hsftrain segment files.shard=i/N (or in a SLURM job array)"
        )
    if len(groups) > 1:
        listed = ", ".join(f"{g.stem} ({g.count} shards)" for g in groups)
        raise ShardError(
            f"{folder} holds shard tables of several runs: {listed}; say which with "
            "--table NAME, and remove the stale ones"
        )
    group = groups[0]
    if not group.complete:
        names = ", ".join(f"{group.stem}.{i}-of-{group.count}.csv" for i in group.missing)
        raise ShardError(
            f"{folder}: {len(group.missing)} of {group.count} shard tables missing ({names}); "
            f"run the missing shards (files.shard={group.missing[0]}/{group.count}, ...) "
            "then merge again"
        )
    target = Path(out).expanduser() if out else folder / f"{group.stem}.csv"
    text = _concatenate([group.found[i] for i in range(1, group.count + 1)])
    write_text_atomic(target, text)
    log.info("merged %d shard tables into %s", group.count, target)
    return target


def merge_if_complete(shard: Shard, volumes_csv: Path) -> Path | None:
    """After a shard's table is written: merge all N into ``volumes_csv`` when every
    shard's table is there (the last shard to finish does it); None otherwise."""
    stem = _stem(volumes_csv)
    folder = volumes_csv.parent
    for group in shard_tables(folder):
        if group.stem == stem and group.count == shard.count:
            if not group.complete:
                log.info(
                    "shard %s done; %d shard table(s) still to come (%s), then "
                    "`hsftrain volumes merge %s` (or the last shard) writes %s",
                    shard,
                    len(group.missing),
                    ", ".join(map(str, group.missing)),
                    folder,
                    volumes_csv.name,
                )
                return None
            text = _concatenate([group.found[i] for i in range(1, group.count + 1)])
            write_text_atomic(volumes_csv, text)
            log.info("every shard is done: merged their tables into %s", volumes_csv)
            return volumes_csv
    return None
