"""The plan's cost model and BudgetPace: a run re-fits its epochs to its measured pace."""

from __future__ import annotations

import types

import pytest
import torch

from hsftrain.data.splits import Split
from hsftrain.optim import AdamP, WarmupCosine, warmup_cosine, warmup_cosine_factor
from hsftrain.planning.candidates import LIGHTNING_OVERHEAD, Candidate
from hsftrain.planning.plan import PACE_EPOCH, Plan
from hsftrain.training import pace as plan_module
from hsftrain.training.pace import BudgetPace, stretch_schedule

STEPS = 10  # per epoch


def _plan(available: float = 1000.0, s_per_step: float = 1.0, val_s: float = 0.5) -> Plan:
    c = Candidate(8, 3, 2, [16, 16, 16], s_per_step=s_per_step, val_s=val_s)
    c.fit(available, STEPS)
    return Plan(
        budget_s=available, device="cpu", fingerprint={}, candidates=[c], chosen=c.name,
        epochs=c.epochs, steps=c.steps, check_val_every_n_epoch=c.val_every, train_s=0.0,
        planning_s=0.0, why="", epochs_end_s=available - 2 * val_s,
    )  # fmt: skip


def test_fit_keeps_the_epoch_costs_it_planned_with() -> None:
    p = _plan()
    c = p.chosen_candidate()
    # 10 steps of 1 s, validation every epoch (0.5 s), Lightning's overhead
    assert c.val_every == 1 and c.epoch_s[0] == pytest.approx(10.5 * LIGHTNING_OVERHEAD)
    assert c.epochs == int((1000 - 1) // (10.5 * LIGHTNING_OVERHEAD)) == 86
    assert len(c.epoch_s) == 172  # up to twice the time: what a pace of 0.5 could use
    assert "epoch_s" not in (str(c) + p.table())


@pytest.mark.parametrize(("pace", "expect"), [(1.0, 86), (0.9, 96), (1.25, 69), (20.0, 25)])
def test_paced_epochs_follow_the_measured_pace(pace: float, expect: int) -> None:
    """Epochs 0 and 1 ran at the plan's pace times ``pace``; the rest of the plan is scaled
    by it (a 20x stall counts as 2x: PACE_LIMITS)."""
    p = _plan()
    epoch = p.chosen_candidate().epoch_s[PACE_EPOCH]
    elapsed = 2 * epoch * pace
    assert p.paced_epochs(PACE_EPOCH + 1, epoch * pace, 1, elapsed) == expect


def test_paced_epochs_without_validation_in_the_measured_epoch() -> None:
    """Validating every 3rd epoch: epoch 1 did not validate, so it is compared with its
    training share only (not read as a faster pace)."""
    p = _plan(val_s=6.0)
    c = p.chosen_candidate()
    assert c.val_every > 1
    train_only = c.epoch_s[PACE_EPOCH] - c.val_s / c.val_every * LIGHTNING_OVERHEAD
    elapsed = 2 * c.epoch_s[0]
    assert p.paced_epochs(PACE_EPOCH + 1, train_only, 0, elapsed) == c.epochs
    assert p.paced_epochs(PACE_EPOCH + 1, train_only, 1, elapsed) > c.epochs
    # over epochs 1-8 (one validation among them, every 8th), at the planned pace: on plan
    eight = sum(c.epoch_s[1:9])
    assert c.val_every == 8 and p.paced_epochs(9, eight, 1, c.epoch_s[0] + eight) == c.epochs


def _trainer(max_epochs: int, total_steps: int) -> tuple[types.SimpleNamespace, torch.nn.Module]:
    net = torch.nn.Linear(3, 2)
    optimizer = AdamP(net.parameters(), lr=1.0, demon=True, total_steps=total_steps)
    scheduler = warmup_cosine(optimizer, 5, total_steps)
    trainer = types.SimpleNamespace(
        current_epoch=0,
        fit_loop=types.SimpleNamespace(max_epochs=max_epochs),
        strategy=types.SimpleNamespace(broadcast=lambda value, src=0: value),
        lr_scheduler_configs=[types.SimpleNamespace(scheduler=scheduler)],
        optimizers=[optimizer],
        sanity_checking=False,
    )
    module = types.SimpleNamespace(total_steps=total_steps)
    return trainer, module


def _pacer(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Plan, float, list[float], list[int], BudgetPace]:
    """A plan, its epoch 1's planned seconds, a clock to set, the changes seen, the callback."""
    p = _plan()
    now = [0.0]
    monkeypatch.setattr(plan_module.time, "monotonic", lambda: now[0])
    changed: list[int] = []
    pace = BudgetPace(p, started=0.0, on_change=changed.append)
    return p, p.chosen_candidate().epoch_s[PACE_EPOCH], now, changed, pace


def _epochs(pace: BudgetPace, trainer, module, now: list[float], times: dict[int, float]) -> None:
    """Start epochs 0, 1, ... at the given times (validating in each before the next)."""
    for e, seconds in sorted(times.items()):
        trainer.current_epoch, now[0] = e, seconds
        pace.on_train_epoch_start(trainer, module)
        pace.on_validation_end(trainer, module)


def test_budget_pace_stretches_the_run_and_its_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    p, epoch, now, changed, pace = _pacer(monkeypatch)
    assert pace.checks == [2, 22, 43, 64]  # epoch 2, then a quarter, half, three quarters
    trainer, module = _trainer(p.epochs, p.steps)
    _epochs(pace, trainer, module, now, {e: e * epoch * 0.9 for e in range(3)})  # 10% faster
    new = trainer.fit_loop.max_epochs
    assert new == 96 and changed == [new] and p.epochs == new and p.steps == new * STEPS
    assert module.total_steps == new * STEPS and f"{new} epochs instead of 86" in p.paced
    schedule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert isinstance(schedule, WarmupCosine) and schedule.total_steps == new * STEPS
    assert schedule(new * STEPS) == warmup_cosine_factor(new * STEPS, 5, new * STEPS) == 0.0
    assert trainer.optimizers[0].param_groups[0]["total_steps"] == new * STEPS
    # between the checks nothing changes; at a quarter, still 10% faster: on pace
    _epochs(pace, trainer, module, now, {e: e * epoch * 0.9 for e in range(3, 23)})
    assert trainer.fit_loop.max_epochs == new and changed == [new]
    # by half of the plan the machine slowed down: the mean pace since epoch 1 is the
    # plan's, so fewer epochs (86 again) and a schedule shortened to match
    slow = {e: 22 * epoch * 0.9 + (e - 22) * epoch * 1.12 for e in range(23, 44)}
    _epochs(pace, trainer, module, now, slow)
    assert changed == [96, trainer.fit_loop.max_epochs] and 84 <= changed[-1] <= 88
    assert schedule.total_steps == changed[-1] * STEPS and p.paced.count("instead of") == 2


def test_budget_pace_on_pace_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    p, epoch, now, changed, pace = _pacer(monkeypatch)
    trainer, module = _trainer(p.epochs, p.steps)
    _epochs(pace, trainer, module, now, {e: e * epoch for e in range(80)})
    assert trainer.fit_loop.max_epochs == 86 and not changed and not p.paced


def test_warmup_cosine_total_survives_a_resume() -> None:
    """The stretched schedule is in the scheduler's state: a resumed run keeps it."""
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    scheduler = warmup_cosine(optimizer, 5, 100)
    scheduler.lr_lambdas[0].total_steps = 150
    state = scheduler.state_dict()
    resumed = warmup_cosine(torch.optim.SGD(net.parameters(), lr=1.0), 5, 100)
    resumed.load_state_dict(state)
    assert resumed.lr_lambdas[0].total_steps == 150


def test_budget_run_follows_its_pace(phantoms, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``hsftrain train budget=...`` end to end: the plan (timings stubbed: 10 s a step, so
    3 epochs) is re-fitted at epoch 2 (the pace stubbed: 5 epochs fit), the run trains 5
    epochs with a cosine that ends with them, and plan.yaml / config.yaml say so."""
    import yaml
    from typer.testing import CliRunner

    from hsftrain.cli.app import app
    from hsftrain.training import budget

    monkeypatch.setattr(budget, "time_steps", lambda *a, **k: (10.0, 1.0))
    monkeypatch.setattr(Plan, "paced_epochs", lambda self, *a: 5)
    saved: list[object] = []
    save_split = Split.save
    monkeypatch.setattr(Split, "save", lambda self, *a: saved.append(a) or save_split(self, *a))
    args = ["datasets=synth", f"datasets.main_path={phantoms}", f"datasets.output_path={tmp_path}"]
    args += ["run_name=paced", "budget=2m", "lightning.enable_progress_bar=false"]
    args += ["export_onnx=false", "augmentation.elastic.p=0", "augmentation.motion.p=0"]
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    run = tmp_path / "paced"
    plan = yaml.safe_load((run / "plan.yaml").read_text())
    assert plan["epochs"] == 5 and "5 epochs instead of 3" in plan["paced"]
    assert yaml.safe_load((run / "config.yaml").read_text())["lightning"]["max_epochs"] == 5
    assert len(saved) == 1  # split.json once: the pace rewrites the config, not the split
    ckpt = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 4 and ckpt["global_step"] == 5 * 3
    schedule = ckpt["lr_schedulers"][0]
    assert schedule["lr_lambdas"][0]["total_steps"] == 5 * 3
    lr, floor = schedule["_last_lr"][0], 5e-3 * 0.01  # the recipe's lr, min_factor 0.01
    assert floor <= lr < 1.01 * floor  # the cosine ended with the run


@pytest.mark.parametrize("new_epochs", [20, 5])
def test_re_pacing_goes_on_from_the_current_learning_rate(new_epochs: int) -> None:
    """More (or fewer) epochs mid-run: the learning rate neither jumps back up nor drops;
    it keeps decreasing to the end of the new schedule."""
    trainer, module = _trainer(10, 100)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    optimizer = trainer.optimizers[0]
    for _ in range(40):
        optimizer.step()
        scheduler.step()
    before = optimizer.param_groups[0]["lr"]
    total = stretch_schedule(trainer, module, 10, new_epochs)  # type: ignore[arg-type]
    assert total == new_epochs * 10
    lrs = [before]
    for _ in range(total - 40):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert 0.8 * before <= lrs[1] <= before  # no jump either way
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)
