import pytest

from hsftrain.data.splits import Split, SplitSettings, make_split


def test_ratio_split_is_disjoint_and_deterministic():
    a = make_split(10, SplitSettings(train_ratio=0.8, seed=1))
    b = make_split(10, SplitSettings(train_ratio=0.8, seed=1))
    assert a == b
    assert len(a.train) == 8 and len(a.val) == 2
    assert not set(a.train) & set(a.val)


def test_bagging_samples_with_replacement_and_validates_out_of_bag():
    split = make_split(20, SplitSettings(replace=True, k_sample=20, seed=3))
    assert len(split.train) == 20
    assert len(set(split.train)) < 20  # repeats: a bootstrap sample
    assert set(split.val) == set(range(20)) - set(split.train)
    other = make_split(20, SplitSettings(replace=True, k_sample=20, seed=4))
    assert other.train != split.train


def test_explicit_and_train_on_all():
    assert make_split(5, explicit=[[0, 1], [2], [3, 4]]) == Split([0, 1], [2], [3, 4])
    assert make_split(3, SplitSettings(train_on_all=True)) == Split([0, 1, 2], [0, 1, 2], [])
    with pytest.raises(ValueError, match="out of range"):
        make_split(3, explicit=[[0, 5], [1], []])


def test_split_file_round_trip(tmp_path):
    ids = ["a", "b", "c", "d"]
    split = Split([0, 0, 2], [1, 3], [])
    path = split.save(tmp_path / "split.json", ids, seed=7)
    assert Split.load(path, ids) == split
    with pytest.raises(ValueError, match="not in the datasets"):
        Split.load(path, ["a", "b"])


def test_groups_stay_on_one_side_and_no_groups_change_nothing():
    from hsftrain.data.splits import crossing_groups, units_of

    assert units_of(5, [[3, 1]]) == [[0], [1, 3], [2], [4]]
    for replace in (False, True):
        plain = make_split(12, SplitSettings(0.75, replace, seed=5))
        assert make_split(12, SplitSettings(0.75, replace, seed=5), groups=[]) == plain
        groups = [[0, 7], [2, 3, 11]]
        for seed in range(10):
            split = make_split(12, SplitSettings(0.75, replace, seed=seed), groups=groups)
            assert crossing_groups(split, groups) == []
            assert set(split.train) | set(split.val) <= set(range(12)) and split.val
    assert crossing_groups(Split([0, 1], [2], []), [[1, 2]]) == [[1, 2]]
    with pytest.raises(ValueError, match="all the same subject"):
        make_split(3, groups=[[0, 1, 2]])
