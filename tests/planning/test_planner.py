"""The planner on made-up timings (no torch timing), the settings read from the planning
config group, and plan.yaml read back."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hsftrain.config.compose import ConfigError, compose
from hsftrain.planning.candidates import LIGHTNING_OVERHEAD, Candidate
from hsftrain.planning.plan import Plan
from hsftrain.planning.planner import decide, fit_all, select, with_compiled
from hsftrain.planning.settings import planning_settings

SETTINGS = planning_settings(compose("config"))
STEPS = 4  # per epoch


def _timed(*s_per_step: float) -> list[Candidate]:
    """Candidates f8, f16, f24 ... (3 levels, batch 2) with these seconds per step."""
    return [
        Candidate(8 * (i + 1), 3, 2, [32, 32, 32], s_per_step=s, val_s=1.0)
        for i, s in enumerate(s_per_step)
    ]


def test_settings_come_from_the_planning_group() -> None:
    assert SETTINGS.min_samples == 3000 and SETTINGS.reserve_s(1800) == 25.0
    assert SETTINGS.reserve_s(120) == pytest.approx(11.0)  # 5 s + 5% of a short budget
    assert SETTINGS.cpu_candidates[0] == (8, 3) and SETTINGS.recipe["models.lr"] == 5e-3
    assert SETTINGS.timed_steps(False, 1800) == 10 and SETTINGS.timed_steps(False, 60) == 4
    changed = planning_settings(compose("config", ["planning.min_samples=100"]))
    assert changed.min_samples == 100
    with pytest.raises(ConfigError, match="planning.candidates.cpu"):
        planning_settings(compose("config", ["planning.candidates.cpu=[8,3]"]))
    with pytest.raises(ConfigError, match="planning.min_samples"):
        planning_settings(compose("config", ["planning.min_samples=-1"]))


def test_picks_the_largest_candidate_affording_min_samples() -> None:
    candidates = _timed(0.1, 0.2, 0.4)  # samples in 1000 s: ~18000, ~9000, ~4500
    fit_all(candidates, 1000.0, STEPS)
    chosen, why = select(candidates, SETTINGS, "20m", STEPS)
    assert chosen is candidates[2] and "at least 3000 training samples" in why
    strict = planning_settings(compose("config", ["planning.min_samples=6000"]))
    chosen, _ = select(candidates, strict, "20m", STEPS)
    assert chosen is candidates[1]  # the largest one still above 6000 samples


def test_none_reaching_min_samples_takes_the_most_steps() -> None:
    candidates = _timed(2.0, 4.0)
    fit_all(candidates, 600.0, STEPS)
    chosen, why = select(candidates, SETTINGS, "10m", STEPS)
    assert chosen is candidates[0] and "no candidate reaches 3000" in why


def test_no_epoch_fits_is_one_clear_error() -> None:
    candidates = _timed(100.0)
    fit_all(candidates, 60.0, STEPS)
    with pytest.raises(ConfigError, match="budget=1m: not even one epoch fits"):
        select(candidates, SETTINGS, "1m", STEPS)


def test_epochs_fit_the_budget_and_the_plan_sets_them() -> None:
    candidates = _timed(0.5)
    budget, elapsed = 600.0, 40.0
    fit_all(candidates, budget - elapsed - SETTINGS.reserve_s(budget), STEPS)
    chosen, why = select(candidates, SETTINGS, "10m", STEPS)
    plan = decide(chosen, why, candidates, {"subjects": 8}, budget, elapsed, SETTINGS)
    spent = chosen.epochs * (STEPS * 0.5 + 1.0 / chosen.val_every) * LIGHTNING_OVERHEAD
    assert spent + 2 * 1.0 <= budget - elapsed - SETTINGS.reserve_s(budget)
    spent_one_more = (chosen.epochs + 1) * (STEPS * 0.5 + 1.0 / chosen.val_every)
    assert spent_one_more * LIGHTNING_OVERHEAD > budget - elapsed - SETTINGS.reserve_s(budget) - 2
    assert plan.overrides["lightning.max_epochs"] == plan.epochs == chosen.epochs
    assert plan.overrides["models.hparams.f_maps"] == 8
    assert plan.overrides["lightning.max_time"] == "00:00:09:07"  # 600 - 40 - 25/2 s
    assert "models.compile" not in plan.overrides


def test_a_kept_network_is_not_set_by_the_plan() -> None:
    candidates = _timed(0.5)
    fit_all(candidates, 500.0, STEPS)
    chosen, why = select(candidates, SETTINGS, "10m", STEPS)
    plan = decide(chosen, why, candidates, {}, 600.0, 10.0, SETTINGS, network=(8, 3))
    assert "models.hparams.f_maps" not in plan.overrides
    assert "models.hparams.num_levels" not in plan.overrides
    assert plan.overrides["datasets.batch_size"] == 2


@pytest.mark.parametrize(("compiled_s", "wins"), [(0.3, True), (0.49, False)])
def test_compiled_timing_replaces_the_choice_only_when_it_pays(
    compiled_s: float, wins: bool
) -> None:
    eager = _timed(0.5)[0]
    compiled = Candidate(8, 3, 2, [32, 32, 32], s_per_step=compiled_s, val_s=1.0)
    compiled.compiled, compiled.compile_s = True, 60.0
    chosen, why = with_compiled(eager, compiled, 1000.0, STEPS, "w", SETTINGS, always=False)
    assert (chosen is compiled) is wins
    assert ("compiled:" in why) is wins
    assert (compiled.note == "not worth its compilation") is not wins


def _plan(tmp_path: Path) -> Path:
    candidates = _timed(0.1, 0.2)
    fit_all(candidates, 1000.0, STEPS)
    chosen, why = select(candidates, SETTINGS, "20m", STEPS)
    fp = {"subjects": 6, "median_shape": [16, 20, 16]}
    plan = decide(chosen, why, candidates, fp, 1200.0, 30.0, SETTINGS, classes=["bg", "ca"])
    plan.save(tmp_path / "plan.yaml")
    return tmp_path / "plan.yaml"


def test_plan_yaml_round_trip(tmp_path: Path) -> None:
    path = _plan(tmp_path)
    plan = Plan.load(path)
    assert plan.chosen == "f16/L3/b2" and plan.classes == ["bg", "ca"]
    assert plan.chosen_candidate().s_per_step == 0.2
    assert plan.overrides["datasets.patch_size"] == [32, 32, 32]
    plan.save(tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_text() == path.read_text()
    plan.restore_pace(STEPS)  # a run from the file keeps its pace as budget= does
    assert len(plan.chosen_candidate().epoch_s) == 2 * plan.epochs


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[1, 2]", "not a plan"),
        ("budget_s: 60\n", "key candidates is missing"),
        (": : [", "not YAML"),
    ],
)
def test_a_bad_plan_file_is_one_line_naming_it(tmp_path: Path, text: str, words: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as raised:
        Plan.load(bad)
    message = str(raised.value)
    assert message.startswith(f"plan={bad}") and words in message and "\n" not in message


def test_a_plan_for_other_data_warns_and_for_other_classes_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = Plan.load(_plan(tmp_path))
    with caplog.at_level(logging.WARNING, logger="hsftrain"):
        plan.check_data("plan=p.yaml", {"subjects": 6, "median_shape": [16, 20, 16]}, [])
        assert not caplog.records
        plan.check_data("plan=p.yaml", {"subjects": 9, "median_shape": [32, 32, 32]}, [])
    (record,) = caplog.records
    assert "median shape 16x20x16 (plan) vs 32x32x32" in record.getMessage()
    assert "training subjects 6 (plan) vs 9" in record.getMessage()
    with pytest.raises(ConfigError, match="made for the classes bg, ca; this run has bg, x"):
        plan.check_data("plan=p.yaml", {}, ["bg", "x"])
