"""Minimise a batch-separable objective by name: the batched L-BFGS or a ``torch.optim``
baseline (``torch.optim.LBFGS`` on the summed objective, or Adam)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from emorig.optim.lbfgs import batched_lbfgs

__all__ = ["OPTIMIZERS", "minimise"]

#: The names :func:`minimise` accepts.
OPTIMIZERS = ("lbfgs", "torch-lbfgs", "adam")


def _torch_lbfgs(
    objective: Callable[[], Tensor],
    params: list[Tensor],
    steps: int,
    history: list[float],
    refresh: Callable[[], Tensor] | None,
) -> int:
    """``torch.optim.LBFGS`` with a strong-Wolfe line search on the summed objective."""
    evaluations = 0
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=steps,
        max_eval=steps,
        history_size=10,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        nonlocal evaluations
        opt.zero_grad(set_to_none=True)
        if refresh is not None:
            refresh()
        loss = objective().sum()
        loss.backward()
        evaluations += 1
        history.append(float(loss.detach()))
        return loss

    opt.step(closure)
    return evaluations


def _adam(
    objective: Callable[[], Tensor],
    params: list[Tensor],
    steps: int,
    lr: float,
    history: list[float],
    refresh: Callable[[], Tensor] | None,
) -> int:
    """``steps`` Adam steps on the summed objective."""
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        if refresh is not None:
            refresh()
        loss = objective().sum()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return steps


def minimise(
    objective: Callable[[], Tensor],
    params: list[Tensor],
    steps: int,
    optimizer: str,
    lr: float,
    history: list[float],
    tolerance: float,
    refresh: Callable[[], Tensor] | None = None,
) -> int:
    """Minimise the (B,) separable ``objective``; returns the evaluations used.

    ``"lbfgs"``: :func:`~emorig.optim.lbfgs.batched_lbfgs` with the given relative
    ``tolerance``; ``"torch-lbfgs"``: ``torch.optim.LBFGS`` with a strong-Wolfe line search on
    the summed objective; ``"adam"``: ``steps`` Adam steps with learning rate ``lr``.
    ``refresh`` is called after accepted steps (batched L-BFGS) or before every evaluation
    (the others). The objective value (summed over the batch) of every evaluation is appended
    to ``history``.
    """
    if steps <= 0:
        return 0
    if optimizer == "lbfgs":
        return batched_lbfgs(
            objective, params, steps, tolerance=tolerance, history=history, refresh=refresh
        )
    if optimizer == "torch-lbfgs":
        return _torch_lbfgs(objective, params, steps, history, refresh)
    if optimizer == "adam":
        return _adam(objective, params, steps, lr, history, refresh)
    raise ValueError(f"optimizer must be 'lbfgs', 'torch-lbfgs' or 'adam', got {optimizer!r}")
