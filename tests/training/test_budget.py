"""budget=: duration parsing, data fingerprint, and a plan made on real timings."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsftrain.config import ConfigError, compose
from hsftrain.data.cache import prepare
from hsftrain.data.discovery import discover
from hsftrain.training.budget import Plan, fingerprint, make_plan, parse_budget


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("600", 600), ("1.5h", 5400)],
)
def test_parse_budget(text: str, seconds: float) -> None:
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["soon", "30x", "10s", "-5m", "m30"])
def test_parse_budget_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="budget="):
        parse_budget(text)


@pytest.fixture(scope="module")
def prepared(phantoms: Path, tmp_path_factory: pytest.TempPathFactory):
    cfg = compose("config", ["datasets=synth", f"datasets.main_path={phantoms}"])
    found = discover(cfg.datasets)
    return found, prepare(found, tmp_path_factory.mktemp("cache"), progress=False)


def test_fingerprint(prepared) -> None:
    _, subjects = prepared
    fp = fingerprint(subjects)
    assert fp["subjects"] == 8 and fp["median_shape"] == [16, 20, 16]
    assert fp["anisotropy"] >= 1.0 and len(fp["median_spacing_mm"]) == 3
    assert {"mean", "std", "p0.5", "p99.5"} <= set(fp["intensity"])


@pytest.mark.slow
def test_plan_times_candidates_and_fits_the_budget(prepared, tmp_path: Path) -> None:
    import time

    from hsftrain.training.build import build_module

    found, subjects = prepared
    cfg = compose(
        "config",
        ["datasets=synth", "budget=2m", "augmentation.motion.p=0", "augmentation.elastic.p=0"],
    )
    started = time.monotonic()
    planned, plan = make_plan(
        cfg, subjects[:6], subjects[6:], lambda c: build_module(c, found, 100), started
    )
    assert isinstance(plan, Plan) and plan.epochs >= 1 and plan.steps == plan.epochs * 3
    timed = [c for c in plan.candidates if c.s_per_step == c.s_per_step]
    assert timed and all(c.s_per_step > 0 for c in timed)
    assert planned.lightning.max_epochs == plan.epochs
    assert planned.models.hparams.f_maps == int(plan.chosen.split("/")[0][1:])
    assert planned.budget is None and planned.lightning.max_time.count(":") == 3
    # what training, validation and export are expected to take fits in the budget
    chosen = next(c for c in plan.candidates if c.name == plan.chosen)
    assert plan.epochs * 3 * chosen.s_per_step + plan.planning_s < 120
    plan.save(tmp_path / "plan.yaml")
    assert "chosen" in (tmp_path / "plan.yaml").read_text()
    assert plan.chosen in plan.table()


def test_recipe_only_replaces_defaults() -> None:
    from hsftrain.training.budget import RECIPE, recipe

    assert recipe(compose("config", ["budget=30m"])) == RECIPE
    key, value = next(iter(RECIPE.items()))
    mine = compose("config", ["budget=30m", f"{key}={value * 3}"])
    assert key not in recipe(mine)  # a value the user gave is kept
    assert recipe(compose("config", ["budget=30m", "models=unet"])) == {}  # another network
