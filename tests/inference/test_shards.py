"""Sharded segmentation (``files.shard=i/N``, SLURM job arrays) and merging the tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hsftrain.cli.app import app
from hsftrain.config.compose import ConfigError, compose
from hsftrain.inference.api import segment
from hsftrain.inference.shards import (
    Shard,
    ShardError,
    choose_shard,
    merge_volumes,
    parse_shard,
    slurm_shard,
)

from .conftest import write_crop

runner = CliRunner()


def cohort(root: Path, n: int = 5) -> Path:
    for i in range(n):
        write_crop(root / f"sub-{i:02d}" / f"sub-{i:02d}_T1w.nii.gz", seed=i)
    return root


def overrides(root: Path, model: Path, *extra: str) -> list[str]:
    return [
        f"files.path={root}",
        "files.pattern=**/*_T1w.nii.gz",
        f"model_paths=[{model}]",
        "segmentation.tta=true",
        "segmentation.test_time_num_aug=1",
        "augmentation.affine.p=1",
        "hardware=cpu",
        "qc=false",
        *extra,
    ]


def outputs(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*_hippocampus_*"))
    }


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("total", [0, 1, 2, 5, 9])
def test_shards_are_contiguous_near_equal_and_cover_everything(total: int, count: int) -> None:
    items = list(range(total))
    blocks = [Shard(i, count).select(items) for i in range(1, count + 1)]
    assert sum(blocks, []) == items  # in order, each once
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_parse_shard() -> None:
    assert parse_shard("2/4") == Shard(2, 4)
    assert parse_shard(" 1 / 3 ") == Shard(1, 3)
    assert parse_shard(None) is None and parse_shard("off") is None
    for bad in ("0/2", "3/2", "1/0", "two/4", "1-4", "1/2/3"):
        with pytest.raises(ConfigError, match=r"files\.shard"):
            parse_shard(bad)
    assert Shard(2, 4).table(Path("/x/volumes.csv")) == Path("/x/volumes.2-of-4.csv")
    assert Shard(1, 2).table(Path("cohort.csv")) == Path("cohort.1-of-2.csv")


def test_slurm_job_array_gives_the_shard() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert slurm_shard(env) == Shard(1, 3)
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "4"}
    assert slurm_shard(env) == Shard(4, 4)
    stepped = {**env, "SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_STEP": "2"}
    assert slurm_shard({**stepped, "SLURM_ARRAY_TASK_MIN": "2"}) == Shard(4, 4)
    assert slurm_shard({}) is None
    assert slurm_shard({"SLURM_ARRAY_TASK_ID": "3"}) is None
    with pytest.raises(ConfigError, match="files.shard=i/N"):
        slurm_shard({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"})
    # files.shard wins; off turns an array's sharding off; one shard is no sharding
    array = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}
    assert choose_shard(None, array) == Shard(2, 2)
    assert choose_shard("1/3", array) == Shard(1, 3)
    assert choose_shard("off", array) is None
    assert choose_shard("1/1", {}) is None


def test_two_shards_give_the_bytes_of_one_run(tmp_path: Path, tiny_model: Path) -> None:
    """Shards give byte-identical segmentations and one merged volumes.csv."""
    whole = cohort(tmp_path / "whole")
    sharded = tmp_path / "sharded"
    shutil.copytree(whole, sharded)
    one = segment(compose("segment", overrides(whole, tiny_model)))
    first = segment(compose("segment", overrides(sharded, tiny_model, "files.shard=1/2")))
    assert [p.parent.name for p in first] == ["sub-00", "sub-01", "sub-02"]
    assert (sharded / "volumes.1-of-2.csv").is_file()
    assert not (sharded / "volumes.csv").exists()  # shard 2 has not run yet
    second = segment(compose("segment", overrides(sharded, tiny_model, "files.shard=2/2")))
    assert [p.parent.name for p in second] == ["sub-03", "sub-04"]
    assert [p.relative_to(sharded) for p in first + second] == [p.relative_to(whole) for p in one]
    merged = (sharded / "volumes.csv").read_bytes()  # written by the last shard
    assert merged == (whole / "volumes.csv").read_bytes()
    produced = outputs(sharded)
    assert produced and produced == outputs(whole)

    (sharded / "volumes.csv").unlink()
    result = runner.invoke(app, ["volumes", "merge", str(sharded)])
    assert result.exit_code == 0, result.output
    assert (sharded / "volumes.csv").read_bytes() == merged
    out = tmp_path / "elsewhere" / "all.csv"
    assert runner.invoke(app, ["volumes", "merge", str(sharded), "--out", str(out)]).exit_code == 0
    assert out.read_bytes() == merged


def test_slurm_array_run_and_empty_shards(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = cohort(tmp_path / "d", n=2)
    out = tmp_path / "out"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    for task in ("2", "0", "1"):  # shard 3 gets no subject, but writes its (empty) table
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        segment(compose("segment", overrides(root, tiny_model, f"files.output_dir={out}")))
    tables = sorted(p.name for p in out.glob("volumes*.csv"))
    assert tables == [
        "volumes.1-of-3.csv",
        "volumes.2-of-3.csv",
        "volumes.3-of-3.csv",
        "volumes.csv",
    ]
    assert (out / "volumes.3-of-3.csv").read_text().count("\n") == 1  # the header only
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    single = tmp_path / "single"
    segment(compose("segment", overrides(root, tiny_model, f"files.output_dir={single}")))
    assert (out / "volumes.csv").read_bytes() == (single / "volumes.csv").read_bytes()


def test_merge_refuses_missing_shards_and_mixed_runs(tmp_path: Path) -> None:
    header = "subject,side,label,name,volume_mm3,voxel_count,flag\n"
    (tmp_path / "volumes.1-of-3.csv").write_text(header + "a,crop,1,x,1.0,1,\n")
    (tmp_path / "volumes.3-of-3.csv").write_text(header)
    with pytest.raises(ShardError, match=r"volumes\.2-of-3\.csv.*files\.shard=2/3"):
        merge_volumes(tmp_path)
    (tmp_path / "volumes.2-of-3.csv").write_text(header + "b,crop,1,x,2.0,2,\n")
    new_header = header.replace("flag", "flag,hsftrain_version,models,preset")
    merged = new_header + "a,crop,1,x,1.0,1,,,,\nb,crop,1,x,2.0,2,,,,\n"
    assert merge_volumes(tmp_path).read_text() == merged
    (tmp_path / "volumes.1-of-2.csv").write_text(header)
    with pytest.raises(ShardError, match="several runs"):
        merge_volumes(tmp_path)
    with pytest.raises(ShardError, match="no shard table"):
        merge_volumes(tmp_path / "..", stem="nothing")
    result = runner.invoke(app, ["volumes", "merge", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "no such folder" in result.output
