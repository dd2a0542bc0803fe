"""Splitting a cohort across the nodes of a cluster, and merging the shards' tables.

A run with ``files.shard=i/N`` (or, when that key is unset, inside a SLURM job array:
``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``) segments the i-th of N contiguous,
near-equal blocks of the **sorted** list of MRIs that the run finds (finished subjects
included, so every shard computes the same split whatever the others have done). Each
shard writes its subjects' outputs as usual and its own table ``volumes.<i>-of-<N>.csv``
next to where ``volumes.csv`` goes. Blocks are contiguous, so the concatenation of the N
tables in shard order is exactly the table one unsharded run writes:
:func:`merge_volumes` (``hsftrain volumes merge DIR``, or the last shard to finish)
writes it as ``volumes.csv``, after checking every table (:func:`read_shard_table`): a
table cut mid-row, in another encoding or with a subject of another shard is refused,
naming its file, line and the shard to rerun.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hsftrain.config.compose import ConfigError
from hsftrain.core.atomic import write_text_atomic
from hsftrain.inference.writer import VOLUME_COLUMNS, rows_to_csv

#: The header of tables written before the provenance columns.
LEGACY_COLUMNS = VOLUME_COLUMNS[:7]

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


def _fix(shard: Shard) -> str:
    return (
        f"rerun shard {shard} (the same `hsftrain segment` command with files.shard={shard}: "
        "its finished subjects are skipped and its table is written again), then merge again"
    )


def _broken(path: Path, line: int, what: str, shard: Shard) -> ShardError:
    return ShardError(f"{path}, line {line}: {what}; {_fix(shard)}")


def _text(path: Path, shard: Shard) -> str:
    """The UTF-8 text of a shard table that ends with a line break.

    Raises:
        ShardError: binary bytes, another encoding, an empty or cut file.
    """
    raw = path.read_bytes()
    if b"\0" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\0")) + 1
        raise _broken(path, line, "holds binary data (a NUL byte), not a CSV table", shard)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        byte = raw[err.start : err.start + 1].hex()
        raise _broken(path, line, f"is not UTF-8 text (byte 0x{byte})", shard) from err
    if not text:
        raise _broken(path, 1, "is empty (not even the header line)", shard)
    if not text.endswith("\n"):
        line = text.count("\n") + 1
        raise _broken(path, line, "ends in the middle of a row (the file was cut)", shard)
    return text


def _row_problem(row: dict[str, str]) -> str | None:
    """What is wrong with one row of a volumes table (None: nothing)."""
    if not row["subject"]:
        return "no subject"
    if row["flag"].startswith("failed:"):
        filled = [c for c in ("side", "label", "name", "volume_mm3", "voxel_count") if row[c]]
        return f"a failed subject's row with {', '.join(filled)} filled in" if filled else None
    if not row["side"] or not row["name"]:
        return "no side or no class name"
    checks = (("label", int, 1), ("volume_mm3", float, 0), ("voxel_count", int, 0))
    for column, kind, low in checks:
        try:
            value = kind(row[column])
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < low:
            return f"{column} {row[column]!r} is not a number >= {low}"
    return None


def read_shard_table(path: Path, shard: Shard) -> list[tuple[int, dict[str, str]]]:
    """The rows of one shard table with their line numbers, every one checked: UTF-8 text
    ending with a line break, the header :data:`~hsftrain.inference.writer.VOLUME_COLUMNS`
    (or :data:`LEGACY_COLUMNS`: the provenance columns are then left empty),
    then complete rows (one field per column, a subject, numbers where numbers go, no row
    twice), read with :mod:`csv`.

    Raises:
        ShardError: the first problem, with the file, the line and the shard to rerun.
    """
    reader = csv.reader(io.StringIO(_text(path, shard), newline=""), strict=True)
    rows: list[tuple[int, dict[str, str]]] = []
    seen: set[tuple[str, str, str]] = set()
    try:
        header = tuple(next(reader))
        if header not in (VOLUME_COLUMNS, LEGACY_COLUMNS):
            what = f"columns {','.join(header)}, expected {','.join(VOLUME_COLUMNS)}"
            raise _broken(path, 1, f"{what} (another hsftrain version, or edited)", shard)
        for fields in reader:
            line = reader.line_num
            if len(fields) != len(header):
                what = f"{len(fields)} fields, expected {len(header)} (an incomplete row)"
                raise _broken(path, line, what, shard)
            row = dict(zip(header, fields, strict=True))
            problem = _row_problem(row)
            key = (row["subject"], row["side"], row["label"])
            if problem is None and key in seen:
                problem = f"subject {key[0]!r} side {key[1]!r} label {key[2]!r} twice"
            if problem:
                raise _broken(path, line, problem, shard)
            seen.add(key)
            rows.append((line, row))
    except csv.Error as err:
        raise _broken(path, reader.line_num, f"not a valid CSV row ({err})", shard) from err
    return rows


def _concatenate(group: ShardTables) -> str:
    """One CSV text: the header, then every shard's rows, in shard order, each table
    checked by :func:`read_shard_table` and no subject in two shards.

    Raises:
        ShardError: the first broken table, or a subject found in two shards.
    """
    extra = sorted(i for i in group.found if not 1 <= i <= group.count)
    if extra:
        path = group.found[extra[0]]
        raise ShardError(
            f"{path}: shard {extra[0]} of {group.count} does not exist; remove this file "
            "(a leftover of another run), then merge again"
        )
    where: dict[str, tuple[Path, int]] = {}
    rows: list[dict[str, object]] = []
    for index in range(1, group.count + 1):
        shard, path = Shard(index, group.count), group.found[index]
        for line, row in read_shard_table(path, shard):
            other = where.setdefault(row["subject"], (path, line))
            if other[0] != path:
                raise ShardError(
                    f"{path}, line {line}: subject {row['subject']!r} is also in {other[0]} "
                    f"(line {other[1]}): these shards split different lists of MRIs (files "
                    "added or removed between shards); rerun every shard on the same files "
                    f"(files.shard=1/{group.count} ... {group.count}/{group.count}: finished "
                    "subjects are skipped), then merge again"
                )
            rows.append(dict(row))
    return rows_to_csv(rows)


def merge_volumes(
    folder: str | Path, out: str | Path | None = None, stem: str | None = None
) -> Path:
    """Merge the shard tables ``<stem>.<i>-of-<N>.csv`` of ``folder`` into ``<stem>.csv``
    (or ``out``): the header once, then the rows of shard 1, 2, ... N.

    Every table is checked first (:func:`read_shard_table`: encoding, header, complete
    rows; no subject in two shards); ``<stem>.csv`` is written only when all are sound.

    Raises:
        ShardError: no shard table, tables of several runs (give ``stem``), missing
            shards (named, with the ``files.shard`` to rerun), or a broken table (its
            file, line and what is wrong).
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
    text = _concatenate(group)  # every table checked before anything is written
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
            try:
                text = _concatenate(group)
            except ShardError as err:
                log.warning("every shard is done, but %s was not merged: %s", volumes_csv, err)
                return None
            write_text_atomic(volumes_csv, text)
            log.info("every shard is done: merged their tables into %s", volumes_csv)
            return volumes_csv
    return None
