"""Tables are never trusted blindly: ``hsftrain volumes merge`` checks every shard table
before writing ``volumes.csv``; ``hsftrain evaluate`` leaves classes absent from both
images out of the means, names classes from the prediction's model, and scores a
FreeSurfer aseg reference as whole hippocampus."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hsftrain.inference.shards import Shard, merge_if_complete

from .conftest import assert_no_temporaries, assert_user_error, cli

HEADER = "subject,side,label,name,volume_mm3,voxel_count,flag\n"


def _rows(*subjects: str) -> str:
    return "".join(
        f"{s},left,1,anterior,{100 + i}.5,{100 + i},\n{s},left,2,posterior,{90 + i}.0,{90 + i},\n"
        for i, s in enumerate(subjects)
    )


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """Three sound shard tables and the volumes.csv an earlier merge wrote."""
    (tmp_path / "volumes.1-of-3.csv").write_text(HEADER + _rows("sub-01", "sub-02"))
    (tmp_path / "volumes.2-of-3.csv").write_text(HEADER + _rows("sub-03", "sub-04"))
    (tmp_path / "volumes.3-of-3.csv").write_text(HEADER + _rows("sub-05"))
    (tmp_path / "volumes.csv").write_text("the earlier merge\n")
    return tmp_path


def _merge_refused(folder: Path, *words: str) -> str:
    message = assert_user_error(cli("volumes", "merge", folder), *words)
    assert (folder / "volumes.csv").read_text() == "the earlier merge\n"  # kept untouched
    assert_no_temporaries(folder)
    return message


def test_sound_shards_merge_in_order(shards: Path) -> None:
    assert cli("volumes", "merge", shards).code == 0
    merged = (shards / "volumes.csv").read_text()
    assert merged == HEADER + _rows("sub-01", "sub-02") + _rows("sub-03", "sub-04") + _rows(
        "sub-05"
    )


def test_table_cut_mid_row(shards: Path) -> None:
    table = shards / "volumes.2-of-3.csv"
    text = table.read_text()
    table.write_text(text[: text.index("sub-04") + 22])  # "sub-04,left,1,anterior,1"
    message = _merge_refused(shards, str(table), "line 4", "cut", "files.shard=2/3", "rerun")
    assert message.count("\n") == 0
    # cut just after a full set of fields: 7 fields, but no final line break
    table.write_text(text.rstrip("\n"))
    _merge_refused(shards, str(table), "line 5", "cut")


def test_row_with_missing_fields(shards: Path) -> None:
    table = shards / "volumes.1-of-3.csv"
    table.write_text(HEADER + "sub-01,left,1,anterior,100.5\n" + _rows("sub-02"))
    _merge_refused(shards, str(table), "line 2", "5 fields, expected 7", "files.shard=1/3")


def test_binary_bytes_and_other_encodings(shards: Path) -> None:
    table = shards / "volumes.3-of-3.csv"
    table.write_bytes(HEADER.encode() + b"sub-05,left,1,\xff\xfe\x00\x13,1,1,\n")
    _merge_refused(shards, str(table), "line 2", "binary", "files.shard=3/3")
    table.write_bytes(HEADER.encode() + "sub-05,left,1,hippocampe_été,1.0,1,\n".encode("latin-1"))
    _merge_refused(shards, str(table), "line 2", "not UTF-8", "0xe9")


@pytest.mark.parametrize(
    "content, words",
    [
        ("", ["line 1", "empty"]),
        ("subject,side,label,volume_mm3\n", ["line 1", "columns", "expected"]),
        (HEADER + "sub-05,left,one,anterior,1.0,1,\n", ["line 2", "label 'one'"]),
        (HEADER + "sub-05,left,1,anterior,nan,1,\n", ["line 2", "volume_mm3 'nan'"]),
        (HEADER + "sub-05,left,1,anterior,1.0,-3,\n", ["line 2", "voxel_count"]),
        (HEADER + ",left,1,anterior,1.0,1,\n", ["line 2", "no subject"]),
        (HEADER + _rows("sub-05") + "\n", ["line 4", "0 fields"]),
        (HEADER + _rows("sub-05") + _rows("sub-05"), ["line 4", "twice"]),
        (HEADER + 'sub-05,left,1,"anterior,1.0,1,\n', ["line 2", "CSV"]),
    ],
)
def test_bad_rows_are_named(shards: Path, content: str, words: list[str]) -> None:
    table = shards / "volumes.3-of-3.csv"
    table.write_text(content)
    _merge_refused(shards, str(table), *words)


def test_failed_subject_rows_merge(shards: Path) -> None:
    failed = "sub-05,,,,,,failed: no T1 found\n"
    (shards / "volumes.3-of-3.csv").write_text(HEADER + failed)
    assert cli("volumes", "merge", shards).code == 0
    assert (shards / "volumes.csv").read_text().endswith(failed)


def test_subject_in_two_shards(shards: Path) -> None:
    (shards / "volumes.3-of-3.csv").write_text(HEADER + _rows("sub-04"))
    _merge_refused(shards, "sub-04", "volumes.2-of-3.csv", "volumes.3-of-3.csv", "every shard")


def test_shard_beyond_the_count(shards: Path) -> None:
    (shards / "volumes.4-of-3.csv").write_text(HEADER)
    _merge_refused(shards, "volumes.4-of-3.csv", "does not exist", "remove")


def test_last_shard_does_not_merge_a_broken_table(
    shards: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (shards / "volumes.2-of-3.csv").write_bytes(b"\x00\x01")
    logger = logging.getLogger("hsftrain.inference.shards")
    logger.addHandler(caplog.handler)
    try:
        assert merge_if_complete(Shard(3, 3), shards / "volumes.csv") is None
    finally:
        logger.removeHandler(caplog.handler)
    assert "was not merged" in caplog.text and "volumes.2-of-3.csv" in caplog.text
    assert (shards / "volumes.csv").read_text() == "the earlier merge\n"
