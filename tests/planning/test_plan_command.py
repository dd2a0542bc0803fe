"""``hsftrain plan`` writes plan.yaml without training; ``hsftrain train plan=<plan.yaml>``
trains with the planned settings, without timing. Step timings are stubbed
(``budget.time_steps``): the plan's decisions, not this machine's speed, are under test."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.reliability.conftest import assert_user_error, cli

CANDIDATES = "planning.candidates.cpu=[[4,2],[8,2]]"


def _data(phantoms: Path, out: Path) -> list[str]:
    return [
        "datasets=synth",
        f"datasets.main_path={phantoms}",
        f"datasets.output_path={out}",
        "lightning.accelerator=cpu",
        "lightning.enable_progress_bar=false",
        "logger=csv",
        "export_onnx=false",
        "augmentation.elastic.p=0",
        "augmentation.motion.p=0",
    ]


def test_plan_then_train_from_it(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hsftrain.training import budget

    timings: list[int] = []

    def fake(module, train, val, shape, *args):
        timings.append(shape.num_levels)
        return 10.0, 1.0  # 3 steps an epoch: a 2-minute plan holds a few epochs

    monkeypatch.setattr(budget, "time_steps", fake)
    path = tmp_path / "my_plan.yaml"
    made = cli("plan", *_data(phantoms, tmp_path / "runs"), "budget=2m", CANDIDATES,
               f"plan_path={path}")  # fmt: skip
    assert made.code == 0, made.output[-3000:]
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/checkpoints"))
    assert any(
        m.startswith("budget: timing ResidualUNet3D f_maps 4, 2 levels, batch 2")
        for m in made.infos
    )
    plan = OmegaConf.load(path)
    assert plan.chosen.startswith("f") and plan.classes and plan.epochs >= 1
    # the same data: the planned network, batch, epochs, time cap; no timing
    timings.clear()
    args = [*_data(phantoms, tmp_path / "runs"), f"plan={path}", "run_name=r"]
    trained = cli("train", *args)
    assert trained.code == 0, trained.output[-3000:]
    # the denormals warning depends on which test started torch's threads first in this process
    warnings = [w for w in trained.warnings if not w.startswith("denormal floats")]
    assert timings == [] and not warnings, warnings
    run = OmegaConf.load(tmp_path / "runs" / "r" / "config.yaml")
    paced = {"lightning.max_epochs"}  # re-fitted to the run's own pace, as with budget=
    for key, value in plan.overrides.items():
        assert key in paced or OmegaConf.select(run, key) == value, key
    assert run.lightning.max_epochs >= plan.epochs
    assert any(m.startswith(f"plan={path}: {plan.chosen} for") for m in trained.infos)
    assert run.plan is None and run.budget is None
    assert OmegaConf.load(tmp_path / "runs" / "r" / "plan.yaml").chosen == plan.chosen
    # an existing plan is not replaced: refused before any planning
    again = cli("plan", *_data(phantoms, tmp_path / "runs"), "budget=2m", f"plan_path={path}")
    assert_user_error(again, f"plan_path={path} already exists")


def test_a_bad_plan_file_is_one_line(phantoms: Path, tmp_path: Path) -> None:
    bad = tmp_path / "plan.yaml"
    bad.write_text("budget_s: 60\nchosen: f8/L3/b2\n")
    out = cli("train", *_data(phantoms, tmp_path / "runs"), f"plan={bad}", "run_name=b")
    assert_user_error(out, f"plan={bad}", "key", "missing")
    assert not (tmp_path / "runs" / "b").exists()
    none = cli("plan", *_data(phantoms, tmp_path / "runs"))
    assert_user_error(none, "hsftrain plan needs budget=")
