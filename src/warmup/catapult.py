"""η_init from the loss catapult (paper §5, Alg. 1–2) and persistent-catapult warmup (Alg. 3).

The search looks for the critical learning rate η_c at which one optimiser step from θ₀ starts to raise the loss:
a catapult. It needs one gradient (for the first direction d₀) and then only forward passes, each a probe
L(θ₀ − η·d₀). With η_init = η_c the linear warmup η_t = η_c + η_trgt·t/T_wrm starts right at the edge of
stability, reaching η_trgt after T_reach = T_wrm(1 − η_c/η_trgt) steps instead of T_wrm.

The searches run on the host (their control flow depends on every probe's value); each probe is one call of a
jitted function in which η is traced, so a search compiles once per loss function.
"""
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from warmup.schedules import ScheduleParams, schedule_params


class SearchResult(NamedTuple):
    eta_c: float  # = eta_upper: the first η whose one step raises the loss by more than δ (lr_max if not found)
    eta_lower: float  # largest η seen to lower the loss (η_upper/2 if the first probe already rose)
    eta_upper: float
    forward_passes: int  # loss evaluations used, L(θ₀) included
    probes: list[tuple[float, float]]  # (η, L(θ₀ − η·d₀)) in the order they were tried
    found: bool  # False when no η tried (all ≤ lr_max, within the budget) raised the loss
    initial_loss: float  # L(θ₀)


def _probe_loss(loss_fn, params, direction, eta):
    """L(θ₀ − η·d₀); jitted with `loss_fn` static, so each loss function compiles once and η is traced."""
    return loss_fn(jax.tree.map(lambda p, d: p - eta * d, params, direction))


_probe = jax.jit(_probe_loss, static_argnums=0)
_evaluate = jax.jit(lambda loss_fn, params: loss_fn(params), static_argnums=0)


def _as_float(loss) -> float:
    """A host float in which an overflowed (NaN) loss counts as +inf, i.e. as a rise."""
    value = float(loss)
    return value if math.isfinite(value) else math.inf


def search_eta_c(loss_fn: Callable, params, direction, *, lr_start: float = 1e-4, lr_max: float | None = None,
                 delta: float = 0.1, max_forward_passes: int = 30) -> SearchResult:
    """Alg. 1–2: exponential then binary search for the η at which one step θ₀ − η·d₀ raises the loss.

    `loss_fn(params) -> scalar` is a forward pass only; `direction` is d₀, the optimiser's first update direction
    at θ₀ (see `first_direction`). Exponential phase: double η from `lr_start` while the loss decreases, capped
    at `lr_max`; reaching `lr_max` without a rise returns found=False with η_c = lr_max. Binary phase: while the
    loss at η_upper exceeds L(θ₀)(1 + δ), probe the midpoint of [η_lower, η_upper]. The search stops early
    (returning what it has) rather than use more than `max_forward_passes` loss evaluations. A non-finite
    loss counts as a rise. Searches with the same `loss_fn` object share one compilation.
    """
    if max_forward_passes < 2:
        raise ValueError(f"max_forward_passes={max_forward_passes}: must be >= 2 (L(θ₀) and one probe)")
    if not (lr_start > 0 and (lr_max is None or lr_max > 0) and delta >= 0):
        raise ValueError(f"need lr_start > 0, lr_max > 0 (or None), delta >= 0; got {lr_start}, {lr_max}, {delta}")
    probes: list[tuple[float, float]] = []

    def probe(eta: float) -> float:
        loss = _as_float(_probe(loss_fn, params, direction, jnp.float32(eta)))
        probes.append((eta, loss))
        return loss

    loss0 = _as_float(_evaluate(loss_fn, params))
    budget_left = lambda: len(probes) + 1 < max_forward_passes
    result = lambda lower, upper, found: SearchResult(upper, lower, upper, len(probes) + 1, probes, found, loss0)

    eta, last_decrease = lr_start if lr_max is None else min(lr_start, lr_max), None
    while True:
        loss = probe(eta)
        if loss >= loss0:
            break
        last_decrease = eta
        if eta == lr_max or not budget_left():
            return result(eta, eta, found=False)
        eta = 2 * eta if lr_max is None else min(2 * eta, lr_max)

    # η_upper/2 as in the paper; when lr_max capped the last doubling, the last decrease is a tighter η_lower.
    lower = eta / 2 if last_decrease is None else last_decrease
    upper, loss_upper = eta, loss
    while loss_upper > loss0 * (1 + delta) and budget_left():
        mid = (lower + upper) / 2
        loss = probe(mid)
        if loss < loss0:
            lower = mid
        else:
            upper, loss_upper = mid, loss
    return result(lower, upper, found=True)


def first_direction(tx: optax.GradientTransformation, grads, params):
    """The direction d₀ a real first step of `tx` applies, from a fresh state: for Adam m̂/(√v̂+ε) ≈ sign(g)."""
    return tx.update(grads, tx.init(params), params)[0]


def catapult_schedule(eta_c, lr_trgt, warmup_steps, **decay) -> ScheduleParams:
    """η_t = η_c + η_trgt·t/T_wrm capped at η_trgt (paper §5), as the project's schedule: a linear warmup from
    η_c over T_reach = T_wrm(1 − η_c/η_trgt) steps counted from t (not t+1); no warmup when η_c ≥ η_trgt.
    `decay` (decay_power, total_steps, lr_min_ratio) is passed on: decay starts at T_reach. A T_reach in (0, 1) is
    rounded up to 1 step: on integer steps both give η_0 = η_c and η_t = η_trgt from t = 1 on."""
    reach = float(t_reach(eta_c, lr_trgt, warmup_steps))
    if reach <= 0:
        return schedule_params(lr_trgt=lr_trgt, warmup_steps=1, **decay)
    return schedule_params(lr_trgt=lr_trgt, warmup_steps=max(reach, 1.0), lr_init=min(eta_c, lr_trgt),
                           step_offset=0.0, **decay)


def t_reach(eta_c, lr_trgt, warmup_steps):
    """Steps until `catapult_schedule` reaches η_trgt: T_wrm(1 − η_c/η_trgt), 0 if η_c ≥ η_trgt. Broadcasts."""
    return warmup_steps * (1 - np.minimum(np.divide(eta_c, lr_trgt), 1.0))


def t_save(eta_c, lr_trgt, warmup_steps, forward_passes):
    """Steps saved against a warmup from 0: T_wrm·min(η_c/η_trgt, 1) minus the search at 2 passes/step."""
    return warmup_steps * np.minimum(np.divide(eta_c, lr_trgt), 1.0) - np.divide(forward_passes, 2)


class CatapultEvent(NamedTuple):
    lr: float  # the η this catapult was induced with
    start_step: int  # index of the first update at that η
    recovery_step: int | None  # number of updates taken when L(θ_t) < L(θ*) again; None if never, within max_steps
    reference_loss: float  # L(θ*)


def persistent_catapult_warmup(step_fn: Callable, loss_fn: Callable, direction_fn: Callable, state, *,
                               params_of: Callable = lambda state: state, lr_trgt: float, delta: float,
                               lr_start: float = 1e-4, max_steps: int,
                               max_forward_passes: int = 30) -> tuple[Any, np.ndarray, list[CatapultEvent], bool]:
    """Alg. 3: warm up by a chain of catapults, each induced at the edge of stability, until η reaches η_trgt.

    From a reference point θ*, `search_eta_c` (with lr_max = η_trgt) brackets [η_lower, η_upper]; training
    continues at η = max(η_upper, previous η) (η never decreases) until L(θ_t) < L(θ*), which makes θ_t the new
    θ*. It returns as soon as η = η_trgt and that last catapult has recovered (at once when η_trgt raises no
    loss), after a divergence, or after `max_steps` updates; the caller goes on training at η_trgt.

    `state` is whatever the caller trains (e.g. (params, opt_state), or a whole loop state); `params_of(state)`
    gives the parameters that `loss_fn` and the searches see.
    `step_fn(state, lr) -> (state, loss)` is one training update, typically a `jax.jit`-ed function: `lr` arrives
    as a float32 scalar array, so changing η never recompiles; a non-finite `loss` stops the procedure
    (divergence). `loss_fn(params) -> scalar` is the loss the catapults are judged by (a fixed batch, or the full
    training set); it is evaluated after every update until recovery. `direction_fn(state)` is the direction the
    next update would apply, e.g. `tx.update(grad(params), opt_state, params)[0]`.

    Returns the final state, η of every update taken, the catapults in order, and whether η_trgt was reached.
    """
    lrs: list[float] = []
    events: list[CatapultEvent] = []
    lr = 0.0
    while lr < lr_trgt and len(lrs) < max_steps:
        params = params_of(state)
        search = search_eta_c(loss_fn, params, direction_fn(state), lr_start=lr_start, lr_max=lr_trgt,
                              delta=delta, max_forward_passes=max_forward_passes)
        lr = min(max(lr, search.eta_upper), lr_trgt)
        if not search.found:
            break
        start, recovery = len(lrs), None
        while len(lrs) < max_steps:  # train at η until L(θ_t) < L(θ*)
            state, step_loss = step_fn(state, jnp.float32(lr))
            lrs.append(lr)
            if not math.isfinite(float(step_loss)):
                events.append(CatapultEvent(lr, start, None, search.initial_loss))
                return state, np.asarray(lrs), events, False
            if _as_float(_evaluate(loss_fn, params_of(state))) < search.initial_loss:
                recovery = len(lrs)
                break
        events.append(CatapultEvent(lr, start, recovery, search.initial_loss))
        if recovery is None:
            break
    return state, np.asarray(lrs), events, lr >= lr_trgt
