"""``hsftrain evaluate`` end to end on tiny NIfTI files, and its pairing rules."""

from __future__ import annotations

import csv
import logging
import math
import os
import tempfile
from pathlib import Path

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hsftrain.config.compose import ConfigError, compose  # noqa: E402
from hsftrain.evaluation.api import (  # noqa: E402
    EvaluationError,
    EvaluationOptions,
    evaluate,
    evaluate_files,
    parse_labels,
)
from hsftrain.evaluation.metrics import label_metrics  # noqa: E402
from hsftrain.evaluation.pairing import (  # noqa: E402
    PairingError,
    pair_files,
    subject_id,
)

SPACING = (1.0, 1.0, 2.5)
SHAPE = (8, 8, 10)
MSD_LABELS = Path("/work/shared/data/msd_hippocampus/labelsTr")


def write(path: Path, data: np.ndarray, spacing=SPACING) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))
    return path


def reference() -> np.ndarray:
    """Label 1: a plate at z=2; label 2: a plate at z=7."""
    ref = np.zeros(SHAPE, np.uint8)
    ref[:, :, 2] = 1
    ref[:, :, 7] = 2
    return ref


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Path]:
    """s01 predicted perfectly; s02 label 1 shifted 2 slices (5 mm), label 2 missed;
    s03 prediction without reference; s04 reference without prediction."""
    preds, refs = tmp_path / "preds", tmp_path / "refs"
    ref = reference()
    shifted = np.zeros(SHAPE, np.uint8)
    shifted[:, :, 4] = 1
    for sid in ("s01", "s02", "s04"):
        write(refs / f"{sid}_lbl.nii.gz", ref)
    write(preds / "s01_seg.nii.gz", ref)
    write(preds / "s02_seg.nii.gz", shifted)
    write(preds / "s03_seg.nii.gz", ref)
    return {"preds": preds, "refs": refs, "root": tmp_path}


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture):
    """Log records of ``hsftrain.evaluation`` (attached directly: the CLI's logging setup
    stops propagation to the root logger that caplog listens on)."""
    logger = logging.getLogger("hsftrain.evaluation")
    old = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # each record once
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(old[0])
    logger.propagate = old[1]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_end_to_end_known_values_outputs_and_unpaired(dataset, records):
    out = dataset["root"] / "report"
    summary = evaluate_files(
        dataset["preds"],
        str(dataset["refs"] / "*_lbl.nii.gz"),
        EvaluationOptions(out=out, show=False),
    )

    assert summary.subjects == ["s01", "s02"]
    assert [p.name for p in summary.unpaired_pred] == ["s03_seg.nii.gz"]
    assert [p.name for p in summary.unpaired_ref] == ["s04_lbl.nii.gz"]
    text = records.text
    assert "unpaired prediction" in text and "s03_seg.nii.gz" in text
    assert "unpaired reference" in text and "s04_lbl.nii.gz" in text

    rows = read_csv(out / "metrics.csv")
    assert list(rows[0]) == [
        "subject",
        "label",
        "label_name",
        "dice",
        "hd95_mm",
        "assd_mm",
        "volume_similarity",
        "pred_volume_mm3",
        "ref_volume_mm3",
        "note",
    ]
    by_key = {(r["subject"], int(r["label"])): r for r in rows}
    assert set(by_key) == {("s01", 1), ("s01", 2), ("s02", 1), ("s02", 2)}
    assert float(by_key["s01", 1]["dice"]) == 1.0
    assert float(by_key["s01", 1]["hd95_mm"]) == 0.0
    s02 = by_key["s02", 1]
    assert float(s02["dice"]) == 0.0
    assert float(s02["hd95_mm"]) == pytest.approx(5.0)  # 2 slices of 2.5 mm
    assert float(s02["assd_mm"]) == pytest.approx(5.0)
    assert float(s02["pred_volume_mm3"]) == pytest.approx(64 * 2.5)
    assert float(s02["volume_similarity"]) == 1.0
    missed = by_key["s02", 2]
    assert float(missed["dice"]) == 0.0 and math.isnan(float(missed["hd95_mm"]))
    assert missed["label_name"] == "label_2"

    stats = {(int(r["label"]), r["metric"]): r for r in read_csv(out / "summary.csv")}
    assert float(stats[1, "dice"]["mean"]) == pytest.approx(0.5)
    assert float(stats[1, "dice"]["median"]) == pytest.approx(0.5)
    assert float(stats[1, "dice"]["std"]) == pytest.approx(np.std([1.0, 0.0], ddof=1))
    assert float(stats[1, "hd95_mm"]["mean"]) == pytest.approx(2.5)
    assert int(stats[2, "hd95_mm"]["n"]) == 1  # NaN of the missed label left out
    assert float(stats[2, "hd95_mm"]["mean"]) == 0.0
    assert summary.mean("dice", 2) == pytest.approx(0.5)

    for metric in ("dice", "hd95_mm", "assd_mm", "volume_similarity"):
        png = out / f"boxplot_{metric}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert summary.plots[metric] == png
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left

    unpaired = read_csv(out / "unpaired.csv")
    assert [(r["side"], r["subject"], Path(r["path"]).name) for r in unpaired] == [
        ("pred", "s03", "s03_seg.nii.gz"),
        ("ref", "s04", "s04_lbl.nii.gz"),
    ]


def test_labels_mapping_names_and_default_out(dataset):
    summary = evaluate_files(
        dataset["preds"],
        dataset["refs"],
        EvaluationOptions(labels={1: "DG", 3: "CA1"}, plots=False, show=False),
    )
    assert summary.out_dir == dataset["preds"].resolve() / "evaluation"
    rows = read_csv(summary.metrics_csv)
    assert {(r["subject"], r["label"], r["label_name"]) for r in rows} == {
        ("s01", "1", "DG"),
        ("s01", "3", "CA1"),
        ("s02", "1", "DG"),
        ("s02", "3", "CA1"),
    }
    absent = [r for r in rows if r["label"] == "3"]
    assert all(math.isnan(float(r["dice"])) and r["note"].startswith("absent") for r in absent)
    assert math.isnan(summary.mean("dice", 3))  # in neither image: nothing to average
    assert summary.plots == {}


def test_shape_mismatch_names_both_files(tmp_path):
    pred = write(tmp_path / "p" / "a_seg.nii.gz", np.zeros((4, 4, 4), np.uint8))
    ref = write(tmp_path / "r" / "a_lbl.nii.gz", np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(EvaluationError, match="shape") as err:
        evaluate_files(pred.parent, ref.parent, EvaluationOptions(out=tmp_path / "o", show=False))
    assert str(pred) in str(err.value) and str(ref) in str(err.value)


def test_nothing_pairs_names_both_globs_and_the_fix(tmp_path):
    write(tmp_path / "p" / "a_seg.nii.gz", np.zeros((4, 4, 4), np.uint8))
    write(tmp_path / "r" / "b_lbl.nii.gz", np.zeros((4, 4, 4), np.uint8))
    pred_glob, ref_glob = str(tmp_path / "p" / "*.nii.gz"), str(tmp_path / "r" / "*.nii.gz")
    with pytest.raises(PairingError) as err:
        evaluate_files(pred_glob, ref_glob, EvaluationOptions(show=False))
    message = str(err.value)
    assert pred_glob in message and ref_glob in message and "id_regex" in message


def test_no_files_and_duplicate_ids(tmp_path):
    write(tmp_path / "r" / "a_lbl.nii.gz", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match="`pred`"):
        evaluate_files(
            tmp_path / "missing" / "*.nii.gz", tmp_path / "r", EvaluationOptions(show=False)
        )
    write(tmp_path / "p" / "a_seg.nii.gz", np.zeros((4, 4, 4), np.uint8))
    write(tmp_path / "p" / "a_img.nii.gz", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(PairingError, match="both have the subject id"):
        evaluate_files(tmp_path / "p", tmp_path / "r", EvaluationOptions(show=False))


def test_probabilities_are_rejected(tmp_path):
    write(tmp_path / "p" / "a.nii.gz", np.full((4, 4, 4), 0.3, np.float32))
    write(tmp_path / "r" / "a.nii.gz", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(EvaluationError, match="not a label map"):
        evaluate_files(tmp_path / "p", tmp_path / "r", EvaluationOptions(show=False))


@pytest.mark.parametrize(
    ("name", "regex", "expected"),
    [
        ("sub-01_seg.nii.gz", None, "sub-01"),
        ("sub-01_img_seg.nii.gz", None, "sub-01"),
        ("sub-01_pred.nii", None, "sub-01"),
        ("hippocampus_001.nii.gz", None, "hippocampus_001"),
        ("s1_left_lbl.nii.gz", None, "s1_left"),
        ("a_seg_b.nii.gz", None, "a_seg_b"),
        ("notes.txt", None, None),
        ("sub-01_T1w_left_hippocampus_seg.nii.gz", r"^(?P<id>sub-[^_]+)", "sub-01"),
        ("case7_whatever.nii.gz", r"case(\d+)", "7"),
    ],
)
def test_subject_id_rule(name, regex, expected):
    assert (subject_id(name) if regex is None else subject_id(name, regex)) == expected


def test_pairing_caps_log_lines_and_reports_names_the_regex_misses(records):
    preds = [Path(f"p/sub-{i:02d}_seg.nii.gz") for i in range(3)] + [Path("p/other.nii.gz")]
    refs = [Path(f"r/sub-{i:02d}.nii.gz") for i in range(30)]
    regex = r"^(?P<id>sub-\d+)"
    pairing = pair_files(preds, refs, regex, max_logged=5)
    assert [p.subject for p in pairing.pairs] == ["sub-00", "sub-01", "sub-02"]
    assert pairing.unpaired_pred == [Path("p/other.nii.gz")]
    assert len(pairing.unpaired_ref) == 27
    messages = [r.getMessage() for r in records.records]
    assert any("other.nii.gz" in m and "does not match id_regex" in m for m in messages)
    assert sum(m.startswith("unpaired reference") for m in messages) == 5
    assert any("22 more unpaired references" in m for m in messages)


def test_parse_labels():
    assert parse_labels(None) is None
    assert parse_labels([2, 1]) == {1: "label_1", 2: "label_2"}
    assert parse_labels({"1": "DG", 2: "CA1"}) == {1: "DG", 2: "CA1"}
    assert parse_labels("1, 3") == {1: "label_1", 3: "label_3"}
    assert parse_labels(4) == {4: "label_4"}
    with pytest.raises(ConfigError, match="`labels`"):
        parse_labels(["DG"])


def test_packaged_config_defaults():
    cfg = compose("evaluate")
    assert cfg.id_regex is None  # null: the code's DEFAULT_ID_REGEX, defined once
    assert cfg.pred is None and cfg.ref is None and cfg.labels is None and cfg.out is None
    assert cfg.surface is True and cfg.plots is True


def test_evaluate_from_composed_config(dataset):
    out = dataset["root"] / "cfg_out"
    cfg = compose(
        "evaluate",
        [
            f"pred={dataset['preds']}/*_seg.nii.gz",
            f"ref={dataset['refs']}",
            "labels={1:DG,2:CA1}",
            f"out={out}",
            "surface=false",
            "plots=false",
            "show=false",
        ],
    )
    summary = evaluate(cfg)
    assert summary.metrics_csv == out / "metrics.csv"
    assert {s.label_name for s in summary.stats} == {"DG", "CA1"}
    assert all(math.isnan(r.hd95_mm) for r in summary.results)  # surface=false
    with pytest.raises(ConfigError, match="`ref`"):
        evaluate(compose("evaluate", [f"pred={dataset['preds']}"]))


def test_cli_end_to_end(dataset):
    from typer.testing import CliRunner

    from hsftrain.cli.app import app

    out = dataset["root"] / "cli_out"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            f"pred={dataset['preds']}/*_seg.nii.gz",
            f"ref={dataset['refs']}",
            f"out={out}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Evaluation of 2 subjects" in result.output
    assert "s03_seg.nii.gz" in result.output  # unpaired prediction reported
    assert (out / "metrics.csv").is_file() and (out / "summary.csv").is_file()
    assert (out / "boxplot_dice.png").is_file()

    failed = CliRunner().invoke(
        app, ["evaluate", f"pred={dataset['preds']}", f"ref={dataset['root']}/nothing*"]
    )
    assert failed.exit_code == 1
    assert "`ref`" in failed.output


def test_real_msd_label_against_itself(tmp_path):
    path = MSD_LABELS / "hippocampus_001.nii.gz"
    if not path.is_file():
        pytest.skip(f"{MSD_LABELS} not available")
    summary = evaluate_files(path, path, EvaluationOptions(out=tmp_path, plots=False, show=False))
    assert summary.subjects == ["hippocampus_001"]
    assert [r.label for r in summary.results] == [1, 2]
    for r in summary.results:
        assert r.dice == 1.0 and r.hd95_mm == 0.0 and r.assd_mm == 0.0
        assert r.volume_similarity == 1.0 and r.pred_volume_mm3 > 0
    data = np.asanyarray(nib.load(str(path)).dataobj)
    shifted = np.roll(data, 1, axis=0)
    metrics = label_metrics(shifted, data, [1, 2], spacing=(1.0, 1.0, 1.0))
    assert all(0.0 < m["dice"] < 1.0 and m["hd95_mm"] >= 1.0 for m in metrics.values())


def test_segment_output_names_pair_with_references():
    from hsftrain.evaluation.pairing import subject_id

    assert subject_id("sub-000_img_hippocampus_seg.nii.gz") == "sub-000"
    assert subject_id("sub-000_lbl.nii.gz") == "sub-000"


def cfg_base(root: Path) -> list[str]:
    return [f"pred={root / 'preds'}", f"ref={root / 'refs'}", "plots=false", "show=false"]


def test_other_label_schemes_are_mapped_before_comparing(tmp_path):
    """A FreeSurfer-like reference (hippocampi 17 and 53 among other structures) against a
    whole-hippocampus prediction; and a subfield prediction merged to the same scheme."""
    ref = np.zeros(SHAPE, np.uint16)
    ref[:, :4, 2] = 17
    ref[:, 4:, 2] = 53
    ref[:, :, 5] = 2  # another structure: must not count
    pred = np.zeros(SHAPE, np.uint8)
    pred[:, :, 2] = 1
    write(tmp_path / "refs" / "s01_lbl.nii.gz", ref)
    write(tmp_path / "preds" / "s01_seg.nii.gz", pred)
    cfg = compose("evaluate", [*cfg_base(tmp_path), "ref_map={17: 1, 53: 1}"])
    (result,) = evaluate(cfg).results
    assert result.label == 1 and result.dice == pytest.approx(1.0)
    subfields = pred * 3  # e.g. one "CA2" label where the hippocampus is
    write(tmp_path / "preds" / "s01_seg.nii.gz", subfields)
    merged = ["ref_map={17: 1, 53: 1}", "pred_map={1: 1, 2: 1, 3: 1, 4: 1, 5: 1}"]
    cfg = compose("evaluate", [*cfg_base(tmp_path), *merged])
    assert evaluate(cfg).results[0].dice == pytest.approx(1.0)
    unmapped = evaluate_files(
        tmp_path / "preds",
        tmp_path / "refs",
        EvaluationOptions(labels=[3, 17], plots=False, show=False),
    )
    assert [r.dice for r in unmapped.results] == [0.0, 0.0]  # without the maps nothing matches
    with pytest.raises(ConfigError, match="ref_map"):
        evaluate(compose("evaluate", [*cfg_base(tmp_path), "ref_map=[17]"]))


def test_two_named_files_are_one_pair_whatever_their_names(tmp_path):
    """A prediction against FreeSurfer's aparc+aseg.mgz."""
    from typer.testing import CliRunner

    from hsftrain.cli.app import app

    pred = write(tmp_path / "out" / "sub-01_T1w_hippocampus_seg.nii.gz", reference())
    aseg = np.where(reference() == 1, 17, 0).astype(np.uint8)  # FreeSurfer's left hippocampus
    ref = tmp_path / "fs" / "aparc+aseg.mgz"
    ref.parent.mkdir()
    nib.save(nib.MGHImage(aseg, np.diag([*SPACING, 1.0])), str(ref))
    summary = evaluate_files(
        pred,
        ref,
        EvaluationOptions(
            labels={1: "hippocampus"}, ref_map={17: 1}, out=tmp_path / "e", show=False, plots=False
        ),
    )
    assert summary.subjects == ["sub-01_T1w"]
    assert summary.mean("dice", 1) == pytest.approx(1.0)
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            f"pred={pred}",
            f"ref={ref}",
            "ref_map={17: 1}",
            "labels={1: hippocampus}",
            f"out={tmp_path / 'cli'}",
            "plots=false",
            "show=false",
        ],
    )
    assert result.exit_code == 0, result.output
