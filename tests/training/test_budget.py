"""budget=: duration parsing, and a plan made on real timings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hsftrain.config.compose import ConfigError, compose
from hsftrain.data.cache import prepare
from hsftrain.data.discovery import discover
from hsftrain.planning.candidates import LIGHTNING_OVERHEAD
from hsftrain.training.budget import Plan, make_plan
from hsftrain.training.validate import parse_budget


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


@pytest.mark.slow
def test_plan_times_candidates_and_fits_the_budget(prepared, tmp_path: Path) -> None:
    import time

    from hsftrain.training.build import module_for

    found, subjects = prepared
    cfg = compose(
        "config",
        ["datasets=synth", "budget=2m", "augmentation.motion.p=0", "augmentation.elastic.p=0"],
    )
    started = time.monotonic()
    planned, plan = make_plan(
        cfg, subjects[:6], subjects[6:], lambda c: module_for(c, found, 100), started
    )
    assert isinstance(plan, Plan) and plan.epochs >= 1 and plan.steps == plan.epochs * 3
    timed = [c for c in plan.candidates if c.s_per_step == c.s_per_step]
    assert timed and all(c.s_per_step > 0 for c in timed)
    assert planned.lightning.max_epochs == plan.epochs
    assert planned.models.hparams.f_maps == int(plan.chosen.split("/")[0][1:])
    assert planned.budget is None and planned.lightning.max_time.count(":") == 3
    assert 0 < plan.epochs_end_s < 120  # when the epochs must end: BudgetPace's deadline
    # what training, validation and export are expected to take fits in the budget
    chosen = next(c for c in plan.candidates if c.name == plan.chosen)
    assert plan.epochs * 3 * chosen.s_per_step + plan.planning_s < 120
    plan.save(tmp_path / "plan.yaml")
    assert "chosen" in (tmp_path / "plan.yaml").read_text()
    assert plan.chosen in plan.table()


def test_recipe_only_replaces_defaults() -> None:
    from hsftrain.planning.candidates import recipe as recipe_of
    from hsftrain.planning.settings import planning_settings

    RECIPE = planning_settings(compose("config")).recipe

    def recipe(cfg):
        return recipe_of(cfg, planning_settings(cfg))

    assert recipe(compose("config", ["budget=30m"])) == RECIPE
    key, value = next(iter(RECIPE.items()))
    mine = compose("config", ["budget=30m", f"{key}={value * 3}"])
    assert key not in recipe(mine)  # a value the user gave is kept
    off = compose("config", ["budget=30m", "models.hparams.deep_supervision=false"])
    assert "models.hparams.deep_supervision" not in recipe(off)  # unset (null) is the default
    assert recipe(compose("config", ["budget=30m", "models=unet"])) == {}  # another network


@pytest.mark.parametrize("compiled_s_per_step", [0.3, 0.49])
def test_cpu_plan_compiles_when_it_pays(
    prepared, monkeypatch: pytest.MonkeyPatch, compiled_s_per_step: float
) -> None:
    """On a CPU with a long budget the chosen network is also timed compiled; compiling is
    chosen only when its faster steps outweigh the compilation (timings stubbed: the
    decision, not this machine, is under test)."""
    import time
    import types

    from hsftrain.training import budget
    from hsftrain.training.build import module_for

    found, subjects = prepared
    monkeypatch.setattr(budget, "time_steps", lambda *a, **k: (0.5, 1.0))
    spent = [0.0]  # a clock on which the compile trial takes 10 minutes
    clock = types.SimpleNamespace(monotonic=lambda: time.monotonic() + spent[0])
    monkeypatch.setattr(budget, "time", clock)

    def trial(cfg, chosen, *args):
        spent[0] += 600.0
        c = budget.Candidate(chosen.f_maps, chosen.num_levels, chosen.batch_size, chosen.patch)
        c.compiled, c.val_s, c.compile_s, c.s_per_step = True, 1.0, 60.0, compiled_s_per_step
        return c

    monkeypatch.setattr(budget, "_compile_trial", trial)
    cfg = compose("config", ["datasets=synth", "budget=30m", "lightning.accelerator=cpu"])
    planned, plan = make_plan(
        cfg, subjects[:6], subjects[6:], lambda c: module_for(c, found, 100), time.monotonic()
    )
    eager = next(c for c in plan.candidates if c.name == "f24/L4/b2")
    compiled = next(c for c in plan.candidates if c.compiled)
    assert compiled.name == "f24/L4/b2+compile" and compiled.name in plan.table()
    # both plans fit in what the trial left, whichever is chosen
    for c in (eager, compiled):
        assert c.steps * c.s_per_step * LIGHTNING_OVERHEAD + c.compile_s < 1800 - 600
    if compiled_s_per_step == 0.3:  # 1.7x faster: worth a minute of compiling
        assert plan.chosen == compiled.name and planned.models.compile is True
        assert compiled.steps > eager.steps and "compiled" in plan.why
    else:  # 2% faster does not pay for the compilation
        assert plan.chosen == eager.name and compiled.note == "not worth its compilation"
        assert planned.models.compile is False


def test_compile_mode() -> None:
    from hsftrain.training.budget import _compile_mode

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = compose("config", ["datasets=synth"])
    assert _compile_mode(auto, cpu, 1800.0) == "if_faster"
    assert _compile_mode(auto, cpu, 600.0) == "never"  # too short to pay for compiling
    forced = compose("config", ["datasets=synth", "models.compile=true"])
    assert _compile_mode(forced, cpu, 600.0) == "always"  # the run compiles: time it so
    off = compose("config", ["datasets=synth", "models.compile=false"])
    assert _compile_mode(off, cpu, 1800.0) == _compile_mode(off, cuda, 1800.0) == "never"


def test_compile_trial_that_fails_leaves_eager(prepared) -> None:
    from hsftrain.training import budget

    _, subjects = prepared

    def broken(cfg):
        raise RuntimeError("no C++ compiler")

    chosen = budget.Candidate(8, 3, 2, [16, 24, 16], s_per_step=0.5, val_s=1.0)
    cfg = compose("config", ["datasets=synth"])
    c = budget._compile_trial(
        cfg, chosen, subjects[:6], subjects[6:], broken, torch.device("cpu"), False
    )
    assert c.compiled and c.s_per_step != c.s_per_step and c.note == "compile failed"


def test_finetune_plan_counts_faster_frozen_steps(
    prepared, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fine-tuning thaws one level every few epochs; its frozen steps are faster, so the
    plan adds epochs up stage by stage instead of counting each at the all-trainable time
    (which ended a 2-minute fine-tuning after 43 s). Timings stubbed: 0.1 s per step plus
    0.4 s times the trainable share of the weights."""
    import time

    from hsftrain.planning.settings import planning_settings
    from hsftrain.training import budget, finetuning
    from hsftrain.training.build import module_for

    found, subjects = prepared

    def fake(module, *args, **kwargs):
        params = list(module.net.parameters())
        share = sum(p.numel() for p in params if p.requires_grad) / sum(p.numel() for p in params)
        return 0.1 + 0.4 * share, 1.0

    monkeypatch.setattr(budget, "time_steps", fake)
    overrides = ["datasets=synth", "budget=10m", "finetuning.unfreeze_frequency=10"]
    overrides += ["models.hparams.f_maps=4", "models.hparams.num_levels=3"]  # the network
    cfg = compose("config", overrides)
    plans = {}
    for stages in (True, False):
        if not stages:  # the old plan: every epoch at the all-trainable step time
            monkeypatch.setattr(budget, "thawing_step_s", lambda *a: None)
        _, plans[stages] = make_plan(
            cfg, subjects[:6], subjects[6:], lambda c: module_for(c, found, 100),
            time.monotonic(), network=(4, 3),
        )  # fmt: skip
    staged, flat = plans[True], plans[False]
    assert staged.epochs > flat.epochs >= 1
    # the staged plan still fits: each epoch's 3 steps at its stage's time, and validation
    step_s = finetuning.thawing_step_s(
        module_for(cfg, found, 100), cfg.finetuning, 0.5, time.monotonic() + 60,
        lambda m: fake(m)[0],
    )  # fmt: skip
    k = staged.check_val_every_n_epoch
    spent = sum(3 * step_s(e) + 1.0 / k for e in range(staged.epochs)) * LIGHTNING_OVERHEAD
    assert 0.9 * 600 < spent <= 600 - planning_settings(cfg).reserve_max_s
    assert step_s(0) < step_s(10) < step_s(50) == 0.5


def test_a_candidate_may_give_the_channels_of_each_level(
    prepared, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A candidate's f_maps may be a list (e.g. a narrow first level under wide deeper ones,
    cheaper on CPUs whose bf16 convolutions block channels by 16): the planner times that
    network, names it by its widths and applies the list (timings stubbed)."""
    import time

    from omegaconf import OmegaConf
    from torch import nn

    from hsftrain.training import budget
    from hsftrain.training.build import module_for

    found, subjects = prepared
    widths: list[set[int]] = []

    def fake(module, *args, **kwargs):
        widths.append({m.out_channels for m in module.net.modules() if isinstance(m, nn.Conv3d)})
        return 0.1, 1.0

    monkeypatch.setattr(budget, "time_steps", fake)
    candidates = "planning.candidates.cpu=[[8,3],[[8,24,48],3]]"
    cfg = compose(
        "config", ["datasets=synth", "budget=10m", "lightning.accelerator=cpu", candidates]
    )
    planned, plan = make_plan(
        cfg, subjects[:6], subjects[6:], lambda c: module_for(c, found, 100), time.monotonic()
    )
    assert [c.name for c in plan.candidates] == ["f8/L3/b2", "f8-24-48/L3/b2"]
    assert {8, 16, 32} <= widths[0] and {8, 24, 48} <= widths[1] and 16 not in widths[1]
    assert plan.chosen == "f8-24-48/L3/b2" and plan.chosen in plan.table()
    assert list(planned.models.hparams.f_maps) == [8, 24, 48]
    assert planned.models.hparams.num_levels == 3
    plan.save(tmp_path / "plan.yaml")
    saved = OmegaConf.load(tmp_path / "plan.yaml")
    assert list(saved.overrides["models.hparams.f_maps"]) == [8, 24, 48]


@pytest.mark.parametrize(("second_s", "chosen"), [(0.1, "f16/L4/b2"), (5.0, "f16/L3/b2")])
def test_a_larger_network_slowed_by_other_load_is_timed_again(
    prepared, monkeypatch: pytest.MonkeyPatch, second_s: float, chosen: str
) -> None:
    """A larger network timed while something else ran (one busy core of two doubled a step)
    loses to a smaller one; it is timed a second time and the faster timing kept, so it is
    chosen when the slowness was the other load's, not when it is its own (timings stubbed)."""
    import time

    from hsftrain.training import budget
    from hsftrain.training.build import module_for

    found, subjects = prepared
    timings = iter([(0.1, 1.0), (0.1, 1.0), (5.0, 1.0), (second_s, 1.0)])
    calls: list[int] = []

    def fake(module, train, val, shape, *args):
        calls.append(shape.num_levels)
        return next(timings)

    monkeypatch.setattr(budget, "time_steps", fake)
    candidates = "planning.candidates.cpu=[[8,3],[16,3],[16,4]]"
    cfg = compose(
        "config", ["datasets=synth", "budget=10m", "lightning.accelerator=cpu", candidates]
    )
    planned, plan = make_plan(
        cfg, subjects[:6], subjects[6:], lambda c: module_for(c, found, 100), time.monotonic()
    )
    assert calls == [3, 3, 4, 4]  # only the rejected larger network is timed again
    larger = plan.candidates[2]
    assert larger.s_per_step == min(5.0, second_s) and larger.note == "timed twice, the faster kept"
    assert plan.chosen == chosen and planned.models.hparams.num_levels == int(chosen[-4])


def test_network_of_a_pretrained_model() -> None:
    """Fine-tuning with budget= plans the pretrained network: its f_maps may be a list (a
    model trained with models.hparams.f_maps=[...]), whose length is its number of levels
    (int() of that list ended the run with a TypeError)."""
    from omegaconf import OmegaConf

    from hsftrain.training.budget import network_of

    assert network_of({"f_maps": 24, "num_levels": 4}) == (24, 4)
    assert network_of({}) == (64, 4)  # hsf_train's defaults
    listed = OmegaConf.create({"f_maps": [16, 48, 96], "num_levels": 4})  # num_levels stale
    assert network_of(listed) == ([16, 48, 96], 3)
