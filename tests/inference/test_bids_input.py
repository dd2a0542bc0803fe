"""BIDS input: file-name entities, the MRIs a selection takes, T2w pairing, the BIDS-App
command line turned into overrides, and the ``files.*`` BIDS keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hsftrain.config.compose import ConfigError, compose
from hsftrain.inference.bids import (
    BidsError,
    NotBidsName,
    Selection,
    check_output,
    find_bids_mris,
    labels,
    parse_entities,
    suffix_choice,
    t2_of,
)
from hsftrain.inference.bids_app import bids_app_overrides
from hsftrain.inference.settings import settings_from_config

# names of raw anatomical files in the BIDS specification's example datasets
REAL_NAMES = [
    ("sub-01_ses-mri_acq-mprage_T1w.nii.gz", {"sub": "01", "ses": "mri", "acq": "mprage"}),
    (
        "sub-01_task-nodding_acq-mpragePMCoff_rec-wore_T1w.nii",
        {"sub": "01", "task": "nodding", "acq": "mpragePMCoff", "rec": "wore"},
    ),
    ("sub-01_ses-1_T1w.nii.gz", {"sub": "01", "ses": "1"}),
    ("sub-01_run-1_T1w.nii.gz", {"sub": "01", "run": "1"}),
    ("sub-control01_T2w.nii.gz", {"sub": "control01"}),
]


@pytest.mark.parametrize("name, entities", REAL_NAMES, ids=[n for n, _ in REAL_NAMES])
def test_parse_entities_of_real_names(name: str, entities: dict[str, str]) -> None:
    got = parse_entities(Path("sub-01/anat") / name)
    suffix, extension = name.rsplit("_", 1)[1].split(".", 1)
    assert got == {**entities, "suffix": suffix, "extension": "." + extension}
    assert list(got)[: len(entities)] == list(entities)  # file-name order


def test_parse_entities_keeps_values_as_written() -> None:
    assert parse_entities("sub-01_run-01_T1w.json") == {
        "sub": "01",
        "run": "01",
        "suffix": "T1w",
        "extension": ".json",
    }
    assert parse_entities("sub-01_T1w")["extension"] == ""


@pytest.mark.parametrize(
    "name",
    [
        "T1w.nii.gz",
        "ses-A_sub-01_T1w.nii.gz",
        "sub-01_ses-A_ses-B_T1w.nii.gz",
        "sub-01_acq-a_b_T1w.nii.gz",
        "sub-01_acq-a+b_T1w.nii.gz",
        "sub-01_T1-w.nii.gz",
        "mprage.nii.gz",
    ],
)
def test_parse_entities_refuses_names_that_are_not_bids(name: str) -> None:
    with pytest.raises(NotBidsName, match="BIDS"):
        parse_entities(name)


def _dataset(root: Path, files: list[str], description: bool = True) -> Path:
    """A BIDS dataset of empty files (discovery reads names only)."""
    root.mkdir(parents=True, exist_ok=True)
    if description:
        (root / "dataset_description.json").write_text(json.dumps({"Name": "t"}))
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return root


TWO_BY_TWO = [
    f"sub-{s}/ses-{e}/anat/sub-{s}_ses-{e}_{m}.nii.gz"
    for s in ("01", "02")
    for e in ("A", "B")
    for m in ("T1w", "T2w")
]


def _names(found: list[tuple[Path, dict[str, str]]]) -> list[str]:
    return [p.name for p, _ in found]


def test_selection_by_participant_session_and_suffix(tmp_path: Path) -> None:
    extra = [
        "sub-01/ses-A/anat/sub-01_ses-A_T1w.json",
        "sub-01/ses-A/func/sub-01_ses-A_task-rest_bold.nii.gz",
        "derivatives/fmriprep/sub-01/anat/sub-01_desc-preproc_T1w.nii.gz",
        "sourcedata/sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/ses-A/anat/.sub-01_ses-A_run-2_T1w.nii.gz",
    ]
    root = _dataset(tmp_path / "ds", TWO_BY_TWO + extra)
    found, t2s = find_bids_mris(root, Selection())
    assert _names(found) == [
        "sub-01_ses-A_T1w.nii.gz",
        "sub-01_ses-B_T1w.nii.gz",
        "sub-02_ses-A_T1w.nii.gz",
        "sub-02_ses-B_T1w.nii.gz",
    ]
    assert found[1][1] == {"sub": "01", "ses": "B", "suffix": "T1w", "extension": ".nii.gz"}
    assert t2s == {}
    found, _ = find_bids_mris(root, Selection(("02",), ("B",), "T2w"))
    assert _names(found) == ["sub-02_ses-B_T2w.nii.gz"]
    found, t2s = find_bids_mris(root, Selection(("01",), (), "T1w", with_t2=True))
    assert [p.name for p in t2s[found[0][0]]] == ["sub-01_ses-A_T2w.nii.gz"]


def test_dataset_without_sessions(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii", "sub-02/anat/sub-02_T1w.nii"])
    found, _ = find_bids_mris(root, Selection(("sub-02"[4:],)))
    assert _names(found) == ["sub-02_T1w.nii"]


@pytest.mark.parametrize(
    "selection, files, words",
    [
        (Selection(), None, ["not a BIDS dataset", "dataset_description.json"]),
        (Selection(("03", "04")), TWO_BY_TWO, ["sub-03, sub-04 not in", "sub-01, sub-02"]),
        (Selection((), ("C",)), TWO_BY_TWO, ["ses-C not found", "ses-A, ses-B"]),
        (Selection(suffix="T2w"), TWO_BY_TWO[::2], ["no T2w MRI", "files.suffix"]),
        (Selection(("01",), (), "T2w"), TWO_BY_TWO[::2], ["sub-01 has no T2w"]),
        (Selection((), ("B",), with_t2=True), TWO_BY_TWO[:-1], ["sub-02/ses-B has no T2w"]),
        (Selection(), [], ["no sub-<label> folder"]),
    ],
    ids=[
        "not-bids",
        "unknown-participant",
        "unknown-session",
        "no-modality",
        "participant-without-modality",
        "session-without-t2",
        "no-subject",
    ],
)
def test_selection_errors(
    selection: Selection, files: list[str] | None, words: list[str], tmp_path: Path
) -> None:
    root = _dataset(tmp_path / "ds", files or [], description=files is not None)
    with pytest.raises(BidsError) as err:
        find_bids_mris(root, selection)
    for word in words:
        assert word in str(err.value)


def test_a_session_without_the_modality_is_left_out_unless_asked(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", TWO_BY_TWO[:-2] + [TWO_BY_TWO[-1]])  # sub-02 ses-B: T2w only
    found, _ = find_bids_mris(root, Selection())
    assert "sub-02_ses-B_T1w.nii.gz" not in _names(found) and len(found) == 3
    with pytest.raises(BidsError, match="sub-02/ses-B has no T1w"):
        find_bids_mris(root, Selection((), ("B",)))


def test_t2_pairing_prefers_the_shared_entities() -> None:
    t2s = [
        (Path(n), parse_entities(n))
        for n in ("sub-1_acq-hipp_run-1_T2w.nii", "sub-1_acq-hipp_run-2_T2w.nii")
    ]
    assert t2_of(parse_entities("sub-1_run-2_T1w.nii"), t2s) == [Path(t2s[1][0])]
    assert t2_of(parse_entities("sub-1_T1w.nii"), t2s) == [p for p, _ in t2s]  # ambiguous
    assert t2_of(parse_entities("sub-1_T1w.nii"), []) == []


def test_labels_and_suffix() -> None:
    assert labels("k", ["01", "sub-02", "01"], "sub-") == ("01", "02")
    assert labels("k", None, "sub-") == ()
    assert labels("k", "ses-A", "ses-") == ("A",)
    with pytest.raises(BidsError, match="k="):
        labels("k", ["01_x"], "sub-")
    assert suffix_choice("T2w") == ("T2w", False)
    assert suffix_choice(["T2w", "T1w"]) == ("T1w", True)
    assert suffix_choice("T1w+T2w") == ("T1w", True)
    with pytest.raises(BidsError, match="files.suffix='FLAIR'"):
        suffix_choice("FLAIR")


def test_output_inside_the_raw_data_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    check_output(root, root / "derivatives" / "hsftrain")
    check_output(root, tmp_path / "out")
    for bad in (root, root / "sub-01" / "out", root / "derivatives", root / "out"):
        with pytest.raises(BidsError, match="raw data"):
            check_output(root, bad)


def test_bids_app_words_become_overrides() -> None:
    words = ["ds", "out", "participant", "--participant-label", "01", "sub-02", "qc=false"]
    assert bids_app_overrides(words + ["--session-label=A"]) == [
        "files.bids=true",
        "files.path=ds",
        "files.output_dir=out",
        "files.participant_label=['01','sub-02']",
        "files.session_label=['A']",
        "qc=false",
    ]
    plain = ["files.path=x", "files.pattern=*.nii.gz"]
    assert bids_app_overrides(plain) == plain


@pytest.mark.parametrize(
    "words, message",
    [
        (["ds", "out", "group"], "analysis level 'group'"),
        (["ds", "out"], "three words"),
        (["ds", "out", "participant", "--participant-lab", "01"], "--participant-lab: unknown"),
        (["ds", "out", "participant", "--participant-label"], "give one label"),
        (["ds", "out", "participant", "extra"], "three words"),
    ],
)
def test_bids_app_usage_errors(words: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        bids_app_overrides(words)


def test_settings_of_a_bids_run(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", TWO_BY_TWO)
    base = [f"files.path={root}", "files.bids=true"]
    settings = settings_from_config(compose("segment", [*base, "files.suffix=[T1w,T2w]"]))
    assert settings.bids == Selection((), (), "T1w", with_t2=True)
    assert settings.output_dir == root / "derivatives" / "hsftrain"
    assert settings.multispectral is not None
    for extra, message in [
        (["files.pattern=*.nii.gz"], "files.pattern is for a plain folder"),
        (["files.t2_pattern={id}_T2w.nii.gz"], "files.t2_pattern is for a plain folder"),
        (["files.bids=yes"], "files.bids='yes'"),
        ([f"files.output_dir={root / 'sub-01'}"], "raw data"),
    ]:
        with pytest.raises(ConfigError, match=message):
            settings_from_config(compose("segment", [*base, *extra]))
    plain = [f"files.path={root}", "files.pattern=**/*T1w.nii.gz"]
    with pytest.raises(ConfigError, match="add files.bids=true"):
        settings_from_config(compose("segment", [*plain, "files.participant_label=[01]"]))
    assert settings_from_config(compose("segment", plain)).bids is None
