"""Batched L-BFGS: one independent L-BFGS per batch entry, sharing every forward and backward
pass.

``objective()`` returns (B,) values where entry ``b`` depends only on row ``b`` of every
optimised tensor (a separable objective). Each entry keeps its own curvature pairs, direction,
Armijo backtracking step and evaluation budget (Nocedal & Wright, Algorithms 7.4 and 3.1,
initial scaling eq. 7.20), so an entry follows the same path in a batch as alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["batched_lbfgs"]


def _flatten(params: Sequence[Tensor]) -> Tensor:
    """(B, ...) tensors -> (B, P) concatenation."""
    return torch.cat([p.detach().reshape(p.shape[0], -1) for p in params], dim=1)


@torch.no_grad()
def _assign(params: Sequence[Tensor], x: Tensor) -> None:
    """Write the (B, P) concatenation ``x`` back into the (B, ...) leaf tensors."""
    offset = 0
    for p in params:
        n = p[0].numel()
        p.copy_(x[:, offset : offset + n].view_as(p))
        offset += n


def _evaluate(objective: Callable[[], Tensor], params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-image values (B,) and gradients (B, P) of a batch-separable objective."""
    for p in params:
        p.grad = None
    values = objective()
    values.sum().backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    return values.detach(), _flatten(grads)


def _push(memory: Tensor, new: Tensor, where: Tensor) -> Tensor:
    """Append ``new`` (B, ...) as the newest slot of ``memory`` (B, m, ...) where ``where``."""
    shifted = torch.cat([memory[:, 1:], new[:, None]], dim=1)
    return torch.where(where.view(-1, *[1] * (memory.dim() - 1)), shifted, memory)


class _Evaluations:
    """Batched evaluations of the objective, counting the budget each entry has used."""

    def __init__(
        self,
        objective: Callable[[], Tensor],
        params: Sequence[Tensor],
        batch: int,
        device: torch.device,
        history: list[float] | None,
    ):
        self.objective, self.params, self.history = objective, params, history
        self.calls = 0
        self.used = torch.zeros(batch, dtype=torch.long, device=device)  # per entry

    def __call__(self, current: Tensor, which: Tensor) -> tuple[Tensor, Tensor]:
        """Values and gradients at ``params``; ``which`` (B,) entries are charged for it and
        the others count in the history with their ``current`` value."""
        f_, g_ = _evaluate(self.objective, self.params)
        self.calls += 1
        self.used.add_(which.long())
        if self.history is not None:
            self.history.append(float(torch.where(which, f_, current).sum()))
        return f_, g_


@dataclass
class _State:
    """Every entry's point, value, gradient, curvature pairs and convergence bookkeeping."""

    x: Tensor  # (B, n)
    f: Tensor  # (B,)
    g: Tensor  # (B, n)
    s_mem: Tensor  # (B, m, n)
    y_mem: Tensor  # (B, m, n)
    rho: Tensor  # (B, m); 0 marks an empty slot; the newest pair is last
    done: Tensor  # (B,) bool
    stalls: Tensor  # (B,) accepted steps in a row with too small a decrease


def _start(x: Tensor, evaluate: _Evaluations, memory: int, max_evaluations: int) -> _State:
    """Evaluate the starting point of every entry; no curvature pairs yet."""
    b, n = x.shape
    f = x.new_zeros(b)
    f, g = evaluate(f, torch.ones(b, dtype=torch.bool, device=x.device))
    return _State(
        x=x,
        f=f,
        g=g,
        s_mem=x.new_zeros(b, memory, n),
        y_mem=x.new_zeros(b, memory, n),
        rho=x.new_zeros(b, memory),
        done=evaluate.used >= max_evaluations,
        stalls=torch.zeros(b, dtype=torch.long, device=x.device),
    )


def _two_loop(state: _State) -> tuple[Tensor, Tensor]:
    """L-BFGS two-loop recursion: ``(H g (B, n), fresh (B,))``, ``fresh`` where an entry has no
    curvature pair yet (its ``H`` is then a scaling to a first step of unit length)."""
    g, s_mem, y_mem, rho = state.g, state.s_mem, state.y_mem, state.rho
    b, memory = rho.shape
    # empty slots have rho = 0 and drop out
    q = g.clone()
    alpha = state.x.new_zeros(b, memory)
    for i in range(memory - 1, -1, -1):
        alpha[:, i] = rho[:, i] * (s_mem[:, i] * q).sum(1)
        q = q - alpha[:, i, None] * y_mem[:, i]
    fresh = rho[:, -1] == 0  # no curvature pair yet
    sy = (s_mem[:, -1] * y_mem[:, -1]).sum(1)
    yy = (y_mem[:, -1] ** 2).sum(1)
    gamma = torch.where(
        fresh, 1.0 / g.norm(dim=1).clamp_min(1e-30), sy / yy.clamp_min(1e-30)
    )  # without curvature information, a first step of unit length
    r = gamma[:, None] * q
    for i in range(memory):
        beta = rho[:, i] * (y_mem[:, i] * r).sum(1)
        r = r + (alpha[:, i] - beta)[:, None] * s_mem[:, i]
    return r, fresh


def _direction(state: _State) -> tuple[Tensor, Tensor, Tensor]:
    """Search directions ``(d (B, n), slope (B,), fresh (B,))``; zero for finished entries.

    An entry whose L-BFGS direction is not a descent one restarts from the normalised
    gradient and forgets its curvature pairs (``state.rho`` is updated); ``fresh`` marks
    the entries without curvature information.
    """
    g = state.g
    r, fresh = _two_loop(state)
    d = -r
    slope = (g * d).sum(1)
    uphill = slope >= 0  # not a descent direction: restart from the gradient
    d = torch.where(uphill[:, None], -g / g.norm(dim=1, keepdim=True).clamp_min(1e-30), d)
    state.rho = torch.where(uphill[:, None], torch.zeros_like(state.rho), state.rho)
    fresh = fresh | uphill
    d = torch.where(state.done[:, None], torch.zeros_like(d), d)
    slope = (g * d).sum(1)
    return d, slope, fresh


def _line_search(
    evaluate: _Evaluations,
    state: _State,
    d: Tensor,
    slope: Tensor,
    max_evaluations: int,
    max_backtracks: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Armijo backtracking, every entry with its own step.

    Returns ``(x, f, g, failed)``: the accepted points (the old ones where none was
    accepted) and (B,) True where no acceptable step was found.
    """
    x, f, g = state.x, state.f, state.g
    b = x.shape[0]
    t = torch.ones(b, dtype=x.dtype, device=x.device)
    pending = ~state.done
    x_new, f_new, g_new = x.clone(), f.clone(), g.clone()
    for _ in range(max_backtracks + 1):
        pending = pending & (evaluate.used < max_evaluations)
        if not bool(pending.any()):
            break
        trial = torch.where(pending[:, None], x + t[:, None] * d, x_new)
        _assign(evaluate.params, trial)
        f_try, g_try = evaluate(f_new, pending)
        ok = pending & torch.isfinite(f_try) & (f_try <= f + 1e-4 * t * slope)
        x_new = torch.where(ok[:, None], trial, x_new)
        f_new = torch.where(ok, f_try, f_new)
        g_new = torch.where(ok[:, None], g_try, g_new)
        pending = pending & ~ok
        t = torch.where(pending, t * 0.5, t)
    return x_new, f_new, g_new, pending


def _remember(state: _State, s_new: Tensor, y_new: Tensor, moved: Tensor) -> None:
    """Store the curvature pair ``(s, y)`` of the entries that moved with ``s . y > 0``."""
    curvature = (s_new * y_new).sum(1)
    store = moved & (curvature > 1e-10 * (y_new**2).sum(1).clamp_min(1e-30))
    if bool(store.any()):
        state.s_mem = _push(state.s_mem, s_new, store)
        state.y_mem = _push(state.y_mem, y_new, store)
        state.rho = _push(
            state.rho, 1.0 / curvature.where(store, torch.ones_like(curvature)), store
        )


def _take_step(
    state: _State,
    step: tuple[Tensor, Tensor, Tensor, Tensor],
    fresh: Tensor,
    tolerance: float,
) -> None:
    """Move every entry to its accepted point, update its curvature pairs and test it.

    An entry whose line search failed forgets its pairs, or stops if it had none (a
    steepest-descent step failed); one stops when its value decreased by less than
    ``tolerance * (1 + |f|)`` on two accepted steps in a row.
    """
    x_new, f_new, g_new, failed = step
    x, f, g = state.x, state.f, state.g
    # no acceptable step: forget the pairs, or stop if fresh
    state.done = state.done | (failed & fresh)
    state.rho = torch.where(failed[:, None], torch.zeros_like(state.rho), state.rho)
    moved = ~state.done & ~failed
    _remember(state, x_new - x, g_new - g, moved)
    small = moved & (f - f_new <= tolerance * (1 + f.abs()))
    stalls = state.stalls
    state.stalls = torch.where(small, stalls + 1, torch.where(moved, 0, stalls))
    state.done = state.done | (state.stalls >= 2)
    state.x, state.f, state.g = x_new, f_new, g_new


def _refresh(
    evaluate: _Evaluations,
    state: _State,
    refresh: Callable[[], Tensor],
    max_evaluations: int,
) -> None:
    """Call ``refresh`` and evaluate again the running entries whose objective changed."""
    changed = refresh() & ~state.done & (evaluate.used < max_evaluations)
    if bool(changed.any()):
        f_again, g_again = evaluate(state.f, changed)
        state.f = torch.where(changed, f_again, state.f)
        state.g = torch.where(changed[:, None], g_again, state.g)


def batched_lbfgs(
    objective: Callable[[], Tensor],
    params: Sequence[Tensor],
    max_evaluations: int,
    *,
    memory: int = 60,
    max_backtracks: int = 6,
    tolerance: float = 1e-9,
    history: list[float] | None = None,
    refresh: Callable[[], Tensor] | None = None,
) -> int:
    """Minimise a batch of independent objectives with one L-BFGS per batch entry.

    ``objective()`` returns (B,) values where entry ``b`` depends only on row ``b`` of every
    tensor in ``params`` (a separable objective). All entries share every forward and backward
    pass, but each keeps its own curvature pairs, direction, Armijo backtracking step and
    evaluation budget (Nocedal & Wright, Algorithms 7.4 and 3.1, initial scaling eq. 7.20), so
    an entry follows the same path in a batch as alone. ``torch.optim.LBFGS`` on the summed
    objective couples the entries through one line search and one curvature history instead.

    Args:
        objective: closure computing the (B,) values from the current ``params``.
        params: (B, ...) leaf tensors with ``requires_grad``; updated in place.
        max_evaluations: budget of evaluations per entry (the batch runs until every entry
            has used its budget or converged).
        memory: curvature pairs kept per entry.
        max_backtracks: halvings of the step before an entry drops its curvature pairs.
        tolerance: an entry stops when an accepted step lowers its value by less than
            ``tolerance * (1 + |f|)`` twice in a row, or when a steepest-descent step fails.
        history: if given, the summed objective at every batched evaluation is appended
            (entries not being moved count with their current value).
        refresh: called after every accepted step (``params`` hold the new point); returns a
            (B,) bool mask of the entries whose objective itself changed there (e.g.
            re-picked contour rows), which are evaluated again. Line searches never see such a
            change.

    Returns:
        The number of batched evaluations (forward and backward passes over the batch).
    """
    if max_evaluations <= 0:
        return 0
    x = _flatten(params)
    evaluate = _Evaluations(objective, params, x.shape[0], x.device, history)
    state = _start(x, evaluate, memory, max_evaluations)
    while not bool(state.done.all()):
        d, slope, fresh = _direction(state)
        step = _line_search(evaluate, state, d, slope, max_evaluations, max_backtracks)
        _take_step(state, step, fresh, tolerance)
        _assign(params, state.x)
        if refresh is not None:
            _refresh(evaluate, state, refresh, max_evaluations)
        state.done = state.done | (evaluate.used >= max_evaluations)
    _assign(params, state.x)
    return evaluate.calls
