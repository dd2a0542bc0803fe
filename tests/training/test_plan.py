"""The plan's cost model and BudgetPace: a run re-fits its epochs to its measured pace."""

from __future__ import annotations

import types

import pytest
import torch

from hsftrain.optim import AdamP, WarmupCosine, warmup_cosine, warmup_cosine_factor
from hsftrain.training import plan as plan_module
from hsftrain.training.plan import (
    LIGHTNING_OVERHEAD,
    PACE_EPOCH,
    BudgetPace,
    Candidate,
    Plan,
)

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
    assert p.paced_epochs(epoch * pace, True, elapsed) == expect


def test_paced_epochs_without_validation_in_the_measured_epoch() -> None:
    """Validating every 3rd epoch: epoch 1 did not validate, so it is compared with its
    training share only (not read as a faster pace)."""
    p = _plan(val_s=6.0)
    c = p.chosen_candidate()
    assert c.val_every > 1
    train_only = c.epoch_s[PACE_EPOCH] - c.val_s / c.val_every * LIGHTNING_OVERHEAD
    elapsed = 2 * c.epoch_s[0]
    assert p.paced_epochs(train_only, False, elapsed) == c.epochs
    assert p.paced_epochs(train_only, True, elapsed) > c.epochs


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
    )
    module = types.SimpleNamespace(total_steps=total_steps)
    return trainer, module


def test_budget_pace_stretches_the_run_and_its_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _plan()
    epoch = p.chosen_candidate().epoch_s[PACE_EPOCH]
    now = [0.0]
    monkeypatch.setattr(plan_module.time, "monotonic", lambda: now[0])
    changed: list[int] = []
    pace = BudgetPace(p, started=0.0, on_change=changed.append)
    trainer, module = _trainer(p.epochs, p.steps)
    for e, seconds in ((0, 0.0), (1, epoch * 0.9), (2, epoch * 1.8)):  # 10% faster
        trainer.current_epoch, now[0] = e, seconds
        if e == PACE_EPOCH:
            pace.on_validation_end(trainer, module)  # type: ignore[arg-type]
        pace.on_train_epoch_start(trainer, module)  # type: ignore[arg-type]
    new = trainer.fit_loop.max_epochs
    assert new == 96 and changed == [new] and p.epochs == new and p.steps == new * STEPS
    assert module.total_steps == new * STEPS and f"{new} epochs instead of 86" in p.paced
    schedule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert isinstance(schedule, WarmupCosine) and schedule.total_steps == new * STEPS
    assert schedule(new * STEPS) == warmup_cosine_factor(new * STEPS, 5, new * STEPS) == 0.0
    assert trainer.optimizers[0].param_groups[0]["total_steps"] == new * STEPS
    # once only: a later epoch changes nothing
    trainer.current_epoch, now[0] = 3, epoch * 10
    pace.on_train_epoch_start(trainer, module)  # type: ignore[arg-type]
    assert trainer.fit_loop.max_epochs == new and changed == [new]


def test_budget_pace_on_pace_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _plan()
    epoch = p.chosen_candidate().epoch_s[PACE_EPOCH]
    now = [0.0]
    monkeypatch.setattr(plan_module.time, "monotonic", lambda: now[0])
    changed: list[int] = []
    pace = BudgetPace(p, started=0.0, on_change=changed.append)
    trainer, module = _trainer(p.epochs, p.steps)
    for e in range(3):
        trainer.current_epoch, now[0] = e, e * epoch
        if e == PACE_EPOCH:
            pace.on_validation_end(trainer, module)  # type: ignore[arg-type]
        pace.on_train_epoch_start(trainer, module)  # type: ignore[arg-type]
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
