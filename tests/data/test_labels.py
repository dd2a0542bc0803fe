import numpy as np
import pytest

from hsftrain.data.labels import (
    SUBFIELDS,
    LabelError,
    class_names,
    group_table,
    merge_lut,
    merge_probs,
    merged_name,
    remap_labels,
)


def test_remap_hand_written():
    label_map = np.array([[0, 1, 2], [5, 5, 1]])
    out = remap_labels(label_map, {1: 3, 2: 1, 5: 2})
    np.testing.assert_array_equal(out, [[0, 3, 1], [2, 2, 3]])


def test_remap_unlisted_values_to_background():
    """``hsftrain evaluate``'s pred_map / ref_map: values not in the table become 0."""
    label_map = np.array([[0, 17, 53], [-1, 17, 2]])
    out = remap_labels(label_map, {17: 1, 53: 2}, unlisted="background")
    np.testing.assert_array_equal(out, [[0, 1, 2], [0, 1, 0]])
    assert out.shape == label_map.shape
    with pytest.raises(ValueError, match="unlisted"):
        remap_labels(label_map, {}, unlisted="keep")


def test_remap_missing_values_names_file_and_fix():
    with pytest.raises(LabelError, match=r"\[7\] in sub-01_lbl.nii.gz.*add them"):
        remap_labels(np.array([0, 1, 7]), {1: 1}, source="sub-01_lbl.nii.gz")


def test_merged_names():
    assert merged_name("CA3", "1/23") == "CA2/3"
    assert merged_name("CA1", "1/23") == "CA1"
    assert merged_name("CA2", "123") == "CA"
    assert merged_name("DG", "123") == "DG"
    assert merged_name("SUB", "whole") == "hippocampus"
    with pytest.raises(LabelError, match="unknown ca_type"):
        merged_name("CA1", "12/3")


def test_merge_lut_1_23_and_123():
    names = list(SUBFIELDS)  # bg DG CA1 CA2 CA3 SUB HEAD TAIL
    label_map = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    for ca_type, expected in [
        ("1/23", [0, 1, 2, 3, 3, 5, 6, 7]),
        ("123", [0, 1, 2, 2, 2, 5, 6, 7]),
        ("whole", [0, 1, 1, 1, 1, 1, 1, 1]),
        ("", label_map),
    ]:
        lut, _ = merge_lut(names, ca_type)
        np.testing.assert_array_equal(lut[label_map], expected)
    _, merged = merge_lut(names, "123")
    assert merged[2] == "CA" and merged[3] == ""


def test_merge_probs_sums_into_first_member():
    names = list(SUBFIELDS)
    probs = np.arange(8, dtype=float).reshape(8, 1) / 28
    out = merge_probs(probs, names, "123")
    assert out[2, 0] == pytest.approx((2 + 3 + 4) / 28)
    assert out[3, 0] == 0 and out[4, 0] == 0
    assert out.sum() == pytest.approx(1.0)


def test_group_table_forgives_granularity_and_missing_head_tail():
    model = list(SUBFIELDS)
    dataset = ["background", "DG", "CA", "SUB"]  # "123" dataset without HEAD/TAIL
    table = group_table(model, dataset, "123")
    assert table.shape == (4, 8)
    np.testing.assert_array_equal(table.sum(0), np.ones(8))  # one group per model class
    assert table[2, [2, 3, 4]].tolist() == [1, 1, 1]  # CA1, CA2, CA3 -> CA
    assert table[0, [0, 6, 7]].tolist() == [1, 1, 1]  # HEAD, TAIL forgiven as background


def test_group_table_unreachable_dataset_class():
    with pytest.raises(LabelError, match="CA4"):
        group_table(list(SUBFIELDS), ["background", "CA4"], "1/2/3")


def test_class_names_fill_gaps():
    assert class_names({2: "b"}) == ["background", "label_1", "b"]
    assert class_names({1: "a"}, num_classes=3) == ["background", "a", "label_2"]


def test_anterior_posterior_scheme_of_the_msd_set():
    """ca_type "ap" (MSD): head -> anterior, what lies behind it -> posterior, the rest
    (e.g. ASHS's extra cortex label) background; a worked (G, C) table."""
    model = ["background", "BODY", "HEAD", "TAIL", "SUB", "ASHS_9"]
    table = group_table(model, ["background", "anterior", "posterior"], "ap")
    np.testing.assert_array_equal(
        table,
        [[1, 0, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0], [0, 1, 0, 1, 1, 0]],
    )
    probs = np.array([0.1, 0.2, 0.3, 0.1, 0.25, 0.05])[:, None]
    np.testing.assert_allclose(table @ probs, [[0.15], [0.3], [0.55]])
    lut, names = merge_lut(model, "ap")
    assert lut.tolist() == [0, 1, 2, 1, 1, 5]
    assert names[1] == "posterior" and names[2] == "anterior" and names[5] == "ASHS_9"
    subfields = group_table(list(SUBFIELDS), ["background", "anterior", "posterior"], "ap")
    assert subfields[2, 1:6].tolist() == [1, 1, 1, 1, 1] and subfields[1, 6] == 1
