import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hsftrain.optim import AdamP, agc_, demon_beta, warmup_cosine_factor


def test_demon_decays_momentum_to_zero():
    betas = [demon_beta(0.9, t, 100) for t in (0, 50, 100)]
    assert betas[0] == pytest.approx(0.9)
    assert betas[1] == pytest.approx(0.9 * 0.5 / (0.1 + 0.45))
    assert betas[2] == 0.0


def test_agc_clips_units_with_large_gradient_only():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    g = torch.tensor([[10.0, 0.0], [0.0, 0.001]])
    agc_(w, g, clipping=0.01)
    assert g[0].norm().item() == pytest.approx(0.01)  # clipped to 0.01 * |w_0|
    assert g[1, 1].item() == pytest.approx(0.001)  # untouched


@pytest.mark.parametrize(
    "options", [{}, {"demon": True, "total_steps": 300}, {"adanorm": True, "nesterov": True}]
)
def test_adamp_solves_tiny_regression(options):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    true = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    y = x @ true
    model = torch.nn.Linear(4, 1)
    opt = AdamP(model.parameters(), lr=0.05, agc_clipping=None, **options)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.mean((model(x) - y) ** 2)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_gradient_centralisation_zeroes_row_means():
    w = torch.nn.Parameter(torch.randn(3, 5))
    opt = AdamP([w], lr=0.01, agc_clipping=None, use_gc=True)
    (w * torch.randn(3, 5)).sum().backward()
    opt.step()
    assert opt.state[w]["exp_avg"].mean(dim=1).abs().max().item() < 1e-7


def test_adamp_with_agc_still_decreases_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    opt = AdamP(model.parameters(), lr=0.01, agc_clipping=0.01)
    first = None
    for _ in range(100):
        opt.zero_grad()
        loss = torch.mean((model(x) - y) ** 2)
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_projection_keeps_scale_invariant_weight_norm():
    # A weight followed by normalisation: its gradient is orthogonal to it; AdamP removes the
    # radial part of the update, so the norm barely grows (Adam would inflate it).
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 16))
    opt = AdamP([w], lr=0.1, agc_clipping=None)
    start = w.norm().item()
    for _ in range(50):
        opt.zero_grad()
        normed = w / w.norm(dim=1, keepdim=True)
        loss = (normed * torch.randn(8, 16)).sum()
        loss.backward()
        opt.step()
    assert w.norm().item() < start * 1.1


def test_warmup_cosine_factor():
    assert warmup_cosine_factor(0, 10, 110) == pytest.approx(0.1)
    assert warmup_cosine_factor(9, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine_factor(60, 10, 110) == pytest.approx(0.5)
    assert warmup_cosine_factor(110, 10, 110, min_factor=0.01) == pytest.approx(0.01)
    assert warmup_cosine_factor(35, 10, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


REFERENCE = Path(__file__).parent / "adamp_reference.npz"
REFERENCE_OPTIONS = {
    "plain": {},
    "demon_agc": {"demon": True, "total_steps": 6, "agc_clipping": 0.01, "weight_decay": 1e-2},
    "nesterov_adanorm_gc": {
        "nesterov": True,
        "adanorm": True,
        "use_gc": True,
        "agc_clipping": None,
        "weight_decay": 1e-3,
    },
}


def _reference_params() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 2, 3, 3, 3), (4,), (1, 4, 1, 1, 1), (3, 5)]
    return [torch.randn(s, generator=g) for s in shapes]


def _reference_grads(step: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    grads = [torch.randn(p.shape, generator=g) for p in params]
    # orthogonal to its weight: takes the AdamP projection branch
    w = params[3]
    grads[3] = grads[3] - (grads[3] * w).sum() / (w**2).sum() * w
    return grads


@pytest.mark.parametrize("name", sorted(REFERENCE_OPTIONS))
def test_adamp_matches_the_per_parameter_reference(name):
    """Six steps on conv/bias/norm/linear weights give the parameters recorded with the
    previous per-parameter implementation (Python branching on tensor values)."""
    expected = np.load(REFERENCE)
    params = [torch.nn.Parameter(p) for p in _reference_params()]
    opt = AdamP(params, lr=0.01, **REFERENCE_OPTIONS[name])
    for step in range(6):
        for p, grad in zip(
            params, _reference_grads(step, [p.detach() for p in params]), strict=True
        ):
            p.grad = grad
        opt.step()
    for i, p in enumerate(params):
        np.testing.assert_allclose(p.detach().numpy(), expected[f"{name}/{i}"], atol=1e-6)


def test_adamp_parameters_unfrozen_later_get_their_own_bias_correction():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = AdamP([a, b], lr=0.1, agc_clipping=None)
    for step in range(3):
        a.grad = torch.full((3,), 0.5)
        b.grad = torch.full((3,), 0.5) if step == 2 else None
        opt.step()
    assert opt.state[a]["step"] == 3 and opt.state[b]["step"] == 1
    # a first Adam step moves each weight by lr (bias-corrected m / sqrt(v) = 1)
    assert torch.allclose(b.detach(), torch.full((3,), 0.9), atol=1e-5)
