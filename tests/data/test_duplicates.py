"""The same subject found twice: by name across datasets or patterns, or by content."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hsftrain.data.duplicates import find_duplicates, identical_files, name_keys
from hsftrain.data.subjects import DatasetSpec, Subject


def _spec(name: str, index: int, root: Path, patterns: dict[str, str]) -> DatasetSpec:
    return DatasetSpec(
        name,
        index,
        root,
        "1/2/3",
        {p: (g, "{id}_lbl.nii.gz") for p, g in patterns.items()},
        None,
        None,
    )


def _subject(spec: DatasetSpec, pattern: str, relative: str, content: str) -> Subject:
    image = spec.root / relative
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_text(content)
    return Subject(f"{spec.name}/{pattern}/{relative}", image, image, spec.index)


def test_names_not_unique_in_their_dataset_use_their_folders(tmp_path: Path) -> None:
    spec = _spec("d", 0, tmp_path / "d", {"p": "**/T1w.nii.gz"})
    subjects = [_subject(spec, "p", f"sub-0{i}/anat/T1w.nii.gz", f"{i}") for i in (1, 2)]
    assert name_keys(subjects, [spec]) == ["sub-01/anat/T1w", "sub-02/anat/T1w"]
    assert find_duplicates(subjects, [spec]) == []


def test_copies_and_namesakes_are_grouped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = _spec("a", 0, tmp_path / "a", {"p": "*_img.nii.gz"})
    b = _spec("b", 1, tmp_path / "b", {"p": "*_img.nii.gz"})
    lr = _spec("lr", 2, tmp_path / "lr", {"L": "*_L.nii.gz", "R": "*_R.nii.gz"})
    subjects = [
        _subject(a, "p", "s1_img.nii.gz", "one"),
        _subject(a, "p", "s2_img.nii.gz", "two"),
        _subject(b, "p", "s1_img.nii.gz", "other scan of s1"),  # same name, other dataset
        _subject(b, "p", "copy_img.nii.gz", "two"),  # same bytes as a/s2
        _subject(lr, "L", "x_L.nii.gz", "left"),  # two hemispheres of one subject
        _subject(lr, "R", "x_R.nii.gz", "right"),
    ]
    assert identical_files([s.image for s in subjects]) == [[1, 3]]
    with caplog.at_level(logging.INFO, logger="hsftrain"):
        groups = find_duplicates(subjects, [a, b, lr])
    assert groups == [[0, 2], [1, 3], [4, 5]]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "2 subject(s) found more than once" in warning[0]
    assert "a/p/s1_img.nii.gz = b/p/s1_img.nii.gz (same name 's1')" in warning[0]
    assert "identical image files" in warning[0]
    assert any("both hemispheres" in r.getMessage() for r in caplog.records)


def test_same_name_in_two_folders_of_one_dataset(tmp_path: Path) -> None:
    spec = _spec("d", 0, tmp_path / "d", {"p": "**/*_img.nii.gz"})
    subjects = [
        _subject(spec, "p", "a/s1_img.nii.gz", "scan"),
        _subject(spec, "p", "b/s1_img.nii.gz", "re-saved scan"),  # copied into another folder
        _subject(spec, "p", "c/s2_img.nii.gz", "other"),
    ]
    assert find_duplicates(subjects, [spec]) == [[0, 1]]
