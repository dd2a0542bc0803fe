"""AdamP (Heo et al., 2021) with adaptive gradient clipping, Demon momentum decay,
gradient centralisation and AdaNorm, as used to train the HSF models."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """Norm per output unit (dim 0) for weights, whole norm for vectors and scalars."""
    if x.ndim <= 1:
        return x.norm(2)
    return x.norm(2, dim=tuple(range(1, x.ndim)), keepdim=True)


def agc_(param: torch.Tensor, grad: torch.Tensor, clipping: float, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (Brock et al., 2021), in place on ``grad``.

    Each unit's gradient is rescaled so that ``|g| / max(|w|, eps) <= clipping``.
    """
    max_norm = unitwise_norm(param).clamp_min(eps) * clipping
    grad_norm = unitwise_norm(grad)
    scale = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp_min(1e-6), 1.0)
    grad.mul_(scale)


def demon_beta(beta_init: float, step: int, total_steps: int) -> float:
    """Decaying momentum (Chen et al., 2022): ``beta_init`` at step 0 down to 0 at the end."""
    remaining = max(0.0, 1.0 - step / max(total_steps, 1))
    return beta_init * remaining / ((1 - beta_init) + beta_init * remaining)


def _projection(
    p: torch.Tensor,
    grad: torch.Tensor,
    perturb: torch.Tensor,
    delta: float,
    wd_ratio: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove the radial component of the update for scale-invariant weights (AdamP).

    The channel view is tried first, then the layer view; both are computed and the
    choice is made with ``torch.where``, so nothing is read back to the host.

    Returns:
        The projected update and the weight-decay factor (a 0-d tensor: ``wd_ratio`` when
        projected, else 1).
    """
    one = torch.ones((), device=p.device, dtype=p.dtype)
    out, factor = perturb, one
    # the layer view is the fallback: apply it first, then let the channel view override
    for view in (_layer_view, _channel_view):
        p_v, g_v = view(p), view(grad)
        cosine = (p_v * g_v).sum(1).abs() / (p_v.norm(dim=1) * g_v.norm(dim=1) + eps)
        hit = cosine.max() < delta / math.sqrt(p_v.shape[1])
        shape = [-1] + [1] * (p.ndim - 1)
        p_n = p / view(p).norm(dim=1).add(eps).reshape(shape)
        projected = perturb - p_n * view(p_n * perturb).sum(1).reshape(shape)
        out = torch.where(hit, projected, out)
        factor = torch.where(hit, one * wd_ratio, factor)
    return out, factor


def _channel_view(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _layer_view(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(1, -1)


class AdamP(Optimizer):
    """AdamP with optional AGC, Demon, gradient centralisation and AdaNorm.

    Args:
        params: parameters or groups.
        lr: learning rate.
        betas: Adam betas; ``betas[0]`` is the initial momentum when ``demon`` is on.
        weight_decay: decoupled weight decay (scaled by ``wd_ratio`` on projected weights).
        delta, wd_ratio: AdamP projection threshold and weight-decay ratio.
        nesterov: Nesterov momentum.
        agc_clipping: AGC threshold lambda; ``None`` or 0 disables AGC.
        demon: decay the momentum to 0 over ``total_steps``.
        total_steps: steps of the whole run (needed by ``demon``).
        use_gc: gradient centralisation on weights with more than one dimension.
        adanorm: AdaNorm gradient-norm correction with EMA factor ``adanorm_r``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
        agc_clipping: float | None = 0.01,
        agc_eps: float = 1e-3,
        demon: bool = False,
        total_steps: int | None = None,
        use_gc: bool = False,
        adanorm: bool = False,
        adanorm_r: float = 0.95,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"models.lr must be positive, got {lr}")
        if demon and not total_steps:
            raise ValueError("AdamP(demon=True) needs total_steps")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            delta=delta,
            wd_ratio=wd_ratio,
            nesterov=nesterov,
            agc_clipping=agc_clipping,
            agc_eps=agc_eps,
            demon=demon,
            total_steps=total_steps,
            use_gc=use_gc,
            adanorm=adanorm,
            adanorm_r=adanorm_r,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params)
        return loss

    def _update(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """One step for the parameters of ``group`` that have a gradient.

        Moments are updated with ``torch._foreach`` ops; per-parameter work (AGC, AdaNorm,
        the AdamP projection) uses tensor ops only: no ``.item()`` or host branching on
        tensor values, so a CUDA step never waits for the device.
        """
        grads = [p.grad.clone() for p in params if p.grad is not None]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
                if group["adanorm"]:
                    state["exp_grad_norm"] = torch.zeros((), device=p.device)
            state["step"] += 1
        for p, grad in zip(params, grads, strict=True):
            if group["use_gc"] and grad.ndim > 1:
                grad.sub_(grad.mean(dim=tuple(range(1, grad.ndim)), keepdim=True))
            if group["agc_clipping"]:
                agc_(p, grad, group["agc_clipping"], group["agc_eps"])
            if group["adanorm"]:
                norm = grad.norm()
                ema = self.state[p]["exp_grad_norm"]
                ema.mul_(group["adanorm_r"]).add_(norm, alpha=1 - group["adanorm_r"])
                grad.mul_(torch.where(ema > norm, ema / (norm + group["eps"]), 1.0))
        # parameters unfrozen later (fine-tuning) have taken fewer steps: one foreach pass per
        # distinct step count
        by_step: dict[int, list[int]] = {}
        for i, p in enumerate(params):
            by_step.setdefault(self.state[p]["step"], []).append(i)
        for step, index in by_step.items():
            self._moments(group, step, [params[i] for i in index], [grads[i] for i in index])

    def _moments(
        self,
        group: dict[str, Any],
        step: int,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
    ) -> None:
        """Adam moments, bias correction, projection and decoupled weight decay for
        parameters that all have taken ``step`` steps."""
        beta1_init, beta2 = group["betas"]
        beta1 = (
            demon_beta(beta1_init, step - 1, group["total_steps"]) if group["demon"] else beta1_init
        )
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        bias1 = 1 - beta1_init**step
        bias2 = 1 - beta2**step
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, math.sqrt(bias2))
        torch._foreach_add_(denoms, group["eps"])
        numerators: list[torch.Tensor] | tuple[torch.Tensor, ...]
        if group["nesterov"]:
            numerators = torch._foreach_mul(exp_avgs, beta1)
            torch._foreach_add_(numerators, grads, alpha=1 - beta1)
        else:
            numerators = exp_avgs
        perturbs = torch._foreach_div(numerators, denoms)
        step_size = group["lr"] / bias1
        for p, grad, perturb in zip(params, grads, perturbs, strict=True):
            if p.ndim > 1:
                perturb, wd_ratio = _projection(
                    p, grad, perturb, group["delta"], group["wd_ratio"], group["eps"]
                )
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"] * wd_ratio)
            elif group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(perturb, alpha=-step_size)
