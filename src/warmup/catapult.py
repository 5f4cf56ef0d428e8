"""η_init from the loss catapult (paper §5, Alg. 1–2) and persistent-catapult warmup (Alg. 3).

The search looks for the critical learning rate η_c at which one optimiser step from θ₀ starts to raise the loss:
a catapult. It needs one gradient (for the first direction d₀) and then only forward passes, each a probe
L(θ₀ − η·d₀). With η_init = η_c the linear warmup η_t = η_c + η_trgt·t/T_wrm starts right at the edge of
stability, reaching η_trgt after T_reach = T_wrm(1 − η_c/η_trgt) steps instead of T_wrm.

The searches run on the host (their control flow depends on every probe's value); each probe is one call of a
jitted function in which η is traced, so a search compiles once per loss function. The drivers at the end
(`plan_catapult`, `check_catapult`, `persistent_warmup`) run them for a built run (`build.Built`).
"""
import logging
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from warmup import loop
from warmup.schedules import ScheduleParams, schedule_params

log = logging.getLogger(__name__)


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

    When the loss already rises at the first η, the authors' code returns that η; this search bisects
    [η/2, η] like every other bracket (paper §5: η_lower = η_upper/2), so η_c always meets the same ≤ δ rule. With
    η₀ = η_trgt/T_wrm the two differ by at most η₀/2, i.e. T_reach by at most half a step.
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


# ---- drivers for a built run ----------------------------------------------------------------------------------

def search_catapult(b, lr_trgt: float, warmup_steps: int, search) -> SearchResult:
    """η_c (Alg. 1–2) of a built run `b` from the optimiser's real first step at θ₀, probed on the measurement batch
    (the training set for full-batch runs); η is capped at η_trgt, so `found=False` means η_trgt ≤ η_c. `search`:
    a `build.Search`."""
    measure_loss = b.measurement_loss()
    direction = first_direction(b.tx, jax.grad(measure_loss)(b.params), b.params)
    return search_eta_c(measure_loss, b.params, direction, lr_start=search.first_lr(lr_trgt, warmup_steps),
                        lr_max=lr_trgt, delta=search.delta, max_forward_passes=search.max_forward_passes)


class CatapultCheck(NamedTuple):
    outcome: str  # "recovered" (a catapult), "diverged" (no catapult), or "undecided" within the steps
    steps: int  # updates taken
    losses: list[float]  # L(θ_t)/L(θ₀) on the measurement batch, t = 0 … steps


def check_catapult(b, eta_c: float, max_steps: int, divergence_factor: float) -> CatapultCheck:
    """Train from θ₀ at constant η_c on the measurement batch (the optimiser's real updates) until the loss returns
    below L(θ₀) — the loss rise of the search was a catapult — or diverges (non-finite, or above divergence_factor ×
    L(θ₀)): then the rise was the onset of divergence and there is no catapult to start the warmup from. SGD on a
    Transformer is such a case (the paper sees no catapults there): LM-4-128 on the pydoc corpus first raises its
    one-step loss near 58/λ₀ᴴ, and GD at that η multiplies the loss by 10⁴ within 4 steps."""
    measure_loss = b.measurement_loss()

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(measure_loss)(params)
        updates, opt_state = b.tx.update(grads, opt_state, params)
        return jax.tree.map(lambda p, u: p - eta_c * u, params, updates), opt_state, loss

    params, opt_state = b.params, b.tx.init(b.params)
    losses = []
    relative = lambda: [x / losses[0] for x in losses]
    for t in range(max_steps + 1):
        params, opt_state, loss = step(params, opt_state)  # `loss` is L(θ_t), before this update
        losses.append(float(loss))
        ratio = losses[-1] / losses[0]
        if not math.isfinite(ratio) or ratio > divergence_factor:
            return CatapultCheck("diverged", t, relative())
        if t > 0 and ratio < 1:
            return CatapultCheck("recovered", t, relative())
    return CatapultCheck("undecided", max_steps, relative())


def plan_catapult(b, run, lr_trgt: float, linear: ScheduleParams) -> tuple[ScheduleParams, dict]:
    """`schedule.init=catapult`: the η_c search (and its check), then the catapult schedule — or `linear` when the
    check finds no catapult — and the summary fields of the search. `run`: a `build.RunSpec`."""
    found = search_catapult(b, lr_trgt, run.warmup_steps, run.search)
    search = dict(eta_c=found.eta_c, eta_c_found=found.found, search_forward_passes=found.forward_passes)
    if found.found and run.search.check_steps > 0:
        check = check_catapult(b, found.eta_c, run.search.check_steps, run.divergence_factor)
        search.update(catapult_check=check.outcome, catapult_check_steps=check.steps,
                      catapult_check_losses=check.losses)
        if check.outcome == "diverged":  # no catapult: report it, and warm up linearly from lr_init instead
            log.info(f"schedule.init=catapult: no catapult — one step at η = {found.eta_c:.4g} raises the loss, but "
                     f"training at that η diverges within {check.steps} steps; warming up from schedule.lr_init")
            search.update(eta_c=None, eta_c_found=False, no_catapult_lr=found.eta_c, t_reach=None, t_save=None)
            return linear, search
    search.update(t_reach=float(t_reach(found.eta_c, lr_trgt, run.warmup_steps)),
                  t_save=float(t_save(found.eta_c, lr_trgt, run.warmup_steps, found.forward_passes)))
    return catapult_schedule(found.eta_c, lr_trgt, run.warmup_steps, **run.decay), search


def persistent_warmup(b, run, state: loop.LoopState, lr_trgt: float, loss_bound: float,
                      record: Callable) -> tuple[loop.LoopState, ScheduleParams, dict]:
    """Alg. 3 (`persistent_catapult_warmup`) driving the compiled loop of a built run one update at a time, so its
    steps log the usual metrics (λᴴ included) through `record(state, rows)`. Catapults are judged on the measurement
    batch (the training set for full-batch runs) and each search probes the optimiser's real next direction there.

    Returns the state when η_trgt is reached, the schedule for the remaining steps (η_trgt from then on, then the
    configured decay), and the summary fields: `t_reach` (updates until η_trgt; None if never) and
    `persistent_catapults` (each catapult's η, start step, recovery step and reference loss L(θ*)).
    """
    one_step = b.chunk_fn(chunk_steps=1)
    measure_loss = b.measurement_loss()
    direction = jax.jit(lambda p, opt_state: b.tx.update(jax.grad(measure_loss)(p), opt_state, p)[0])

    def step_fn(state, lr):
        sched = schedule_params(lr_trgt=lr, warmup_steps=1)
        state, rows = loop.run_chunk(one_step, state, sched, b.arrays, loss_bound=loss_bound, total_steps=run.steps)
        record(state, rows)
        return state, math.nan if bool(state.frozen) else float(rows["train_loss"][-1])

    state, _, events, reached = persistent_catapult_warmup(
        step_fn, measure_loss, lambda st: direction(st.params, st.opt_state), state, params_of=lambda st: st.params,
        lr_trgt=lr_trgt, delta=run.search.delta, lr_start=run.search.first_lr(lr_trgt, run.warmup_steps),
        max_steps=run.steps, max_forward_passes=run.search.max_forward_passes)
    steps_taken = int(state.step)
    after = schedule_params(lr_trgt=lr_trgt, warmup_steps=max(steps_taken, 1), lr_init=lr_trgt, **run.decay)
    found = dict(t_reach=steps_taken if reached else None,
                 persistent_catapults=[dict(lr=e.lr, start_step=e.start_step, recovery_step=e.recovery_step,
                                            reference_loss=e.reference_loss) for e in events])
    return state, after, found
