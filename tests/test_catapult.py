import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from warmup import build
from warmup.catapult import (catapult_schedule, first_direction, persistent_catapult_warmup, search_eta_c,
                             t_reach, t_save)
from warmup.optim import build_optimizer
from warmup.schedules import learning_rate

# H = Q diag(λ) Qᵀ with a random rotation, so the top eigenvector mixes both parameter leaves.
EIGS = np.array([5.0, 2.0, 1.0, 0.5, 0.1])
LAM = EIGS[0]
Q = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 5)))[0]
H = jnp.asarray(Q @ np.diag(EIGS) @ Q.T, jnp.float32)
SPLIT = lambda theta: {"a": theta[:2], "b": theta[2:]}


def quadratic(params):
    theta = ravel_pytree(params)[0]
    return 0.5 * theta @ H @ theta


def top_eigvec_start():
    """θ₀ = 3·q_max and the GD direction d₀ = Hθ₀ (via `first_direction` for SGD)."""
    params = SPLIT(jnp.asarray(3.0 * Q[:, 0], jnp.float32))
    grads = jax.grad(quadratic)(params)
    return params, first_direction(build_optimizer("sgd"), grads, params)


def generic_start():
    """θ₀ = Q·(1, 1, 1, 1, 1) mixes every eigendirection: one GD step raises the loss from η* = 2gᵀg/(gᵀHg) ≈ 0.451,
    between 2/λ_max = 0.4 and 2/λ_min, and not on the search's grid of doublings."""
    params = SPLIT(jnp.asarray(Q @ np.ones(5), jnp.float32))
    return params, first_direction(build_optimizer("sgd"), jax.grad(quadratic)(params), params)


@pytest.mark.parametrize("start", [top_eigvec_start, generic_start])
@pytest.mark.parametrize("delta", [0.1, 0.01])
def test_search_finds_the_gd_closed_form_within_the_bisection_tolerance(delta, start):
    """For L(θ) = ½θᵀHθ and d₀ = g₀ = Hθ₀, L(θ₀ − ηg₀) = L₀ − η gᵀg + ½η² gᵀHg (exactly): it rises iff
    η > η* = 2gᵀg/(gᵀHg) (= 2/λ along the top eigenvector). The search must bracket η*, and its stopping rule
    L(η_upper) ≤ (1 + δ)L₀ puts η_upper below the root of ½gᵀHg·η(η − η*) = δL₀."""
    params, d0 = start()
    theta = np.asarray(ravel_pytree(params)[0], np.float64)
    hessian = np.asarray(H, np.float64)
    g = hessian @ theta
    np.testing.assert_allclose(ravel_pytree(d0)[0], g, rtol=1e-5)  # SGD's first direction is the gradient
    loss0, gg, ghg = 0.5 * theta @ hessian @ theta, g @ g, g @ hessian @ g
    eta_star = 2 * gg / ghg
    eta_root = (eta_star + math.sqrt(eta_star**2 + 8 * delta * loss0 / ghg)) / 2
    res = search_eta_c(quadratic, params, d0, delta=delta, max_forward_passes=60)
    assert res.found and res.eta_c == res.eta_upper
    np.testing.assert_allclose(res.initial_loss, loss0, rtol=1e-6)
    assert res.eta_lower < eta_star <= res.eta_upper <= eta_root * (1 + 1e-6)
    assert res.eta_upper - eta_star <= (eta_root - eta_star) * (1 + 1e-6)  # the bisection tolerance δ sets
    if start is top_eigvec_start:  # the root is (1 + √(1 + δ))/λ there
        assert eta_star == pytest.approx(2 / LAM, rel=1e-6)
        assert eta_root == pytest.approx((1 + math.sqrt(1 + delta)) / LAM, rel=1e-6)
    else:
        assert eta_star == pytest.approx(0.4512, abs=1e-3)
    loss_upper = dict(res.probes)[res.eta_upper]
    assert loss_upper <= (1 + delta) * loss0
    etas, losses = np.array(res.probes).T
    np.testing.assert_allclose(losses, loss0 - etas * gg + 0.5 * etas**2 * ghg, rtol=1e-4)
    # Exponential phase: 1e-4·2^k up to the first rise, then bisection inside the last doubling.
    doublings = int(np.ceil(np.log2(eta_star / 1e-4)))
    np.testing.assert_allclose(etas[:doublings + 1], 1e-4 * 2.0 ** np.arange(doublings + 1))
    assert np.all((etas[doublings + 1:] > 1e-4 * 2.0 ** (doublings - 1)) & (etas[doublings + 1:] < etas[doublings]))
    assert res.forward_passes == len(res.probes) + 1 <= 60


def test_search_counts_every_forward_pass_and_compiles_once():
    params, d0 = top_eigvec_start()
    evaluations, traces = [], []

    def counted(p):
        traces.append(1)  # Python side effect: runs only when traced
        loss = quadratic(p)
        jax.debug.callback(lambda _: evaluations.append(1), loss)  # runs at every evaluation
        return loss

    res = search_eta_c(counted, params, d0, delta=0.01)
    assert len(evaluations) == res.forward_passes == len(res.probes) + 1
    assert len(res.probes) > 13
    assert len(traces) == 2  # L(θ₀) and the probe, whatever the number of probes


@pytest.mark.parametrize("lr_start, budget, found", [(1e-4, 5, False), (0.15, 6, True)])
def test_search_stops_at_the_forward_pass_budget(lr_start, budget, found):
    params, d0 = top_eigvec_start()
    res = search_eta_c(quadratic, params, d0, lr_start=lr_start, delta=0.01, max_forward_passes=budget)
    assert res.forward_passes == len(res.probes) + 1 == budget
    assert res.found == found
    if found:  # 0.15, 0.3 decrease; 0.6 rises; bisection tries 0.45 (rise) then 0.375 (decrease) and stops
        assert [eta for eta, _ in res.probes] == pytest.approx([0.15, 0.3, 0.6, 0.45, 0.375])
        assert (res.eta_lower, res.eta_upper) == pytest.approx((0.375, 0.45))
    else:  # the budget ended the exponential phase: η_c is the largest η known to lower the loss
        assert res.eta_c == res.eta_lower == res.probes[-1][0]
        assert res.probes[-1][1] < res.initial_loss


def test_search_counts_an_overflowed_loss_as_a_rise():
    params, d0 = top_eigvec_start()
    # NaN once |θ| > 1.5|θ₀|, i.e. for η > 0.5: the first rise (η = 0.6) overflows.
    blows_up = lambda p: jnp.where(jnp.linalg.norm(ravel_pytree(p)[0]) > 4.5, jnp.nan, quadratic(p))
    res = search_eta_c(blows_up, params, d0, lr_start=0.15, delta=0.01)
    assert res.found and res.probes[2] == (0.6, math.inf)
    assert res.eta_lower < 2 / LAM <= res.eta_upper <= (1 + math.sqrt(1.01)) / LAM


def test_search_reports_no_catapult_below_lr_max():
    params, d0 = top_eigvec_start()
    res = search_eta_c(quadratic, params, d0, lr_start=0.15, lr_max=0.35)
    assert not res.found
    assert res.eta_c == res.eta_upper == 0.35
    assert [eta for eta, _ in res.probes] == [0.15, 0.3, 0.35]  # the last doubling is capped at lr_max
    assert all(loss < res.initial_loss for _, loss in res.probes)


def test_search_capped_probe_that_rises_brackets_from_last_decrease():
    params, d0 = top_eigvec_start()
    res = search_eta_c(quadratic, params, d0, lr_start=0.15, lr_max=0.5, delta=10.0)
    assert res.found
    assert [eta for eta, _ in res.probes] == [0.15, 0.3, 0.5]  # (1 − 2.5)² = 2.25 ≤ 11: no bisection needed
    assert (res.eta_lower, res.eta_upper) == (0.3, 0.5)


def test_search_with_adam_direction_is_scale_free():
    """Adam's d₀ = sign(g): along an axis-aligned θ₀ = c·e₀, L(θ₀ − η e₀) ∝ (c − η)², so η_c = 2c for any λ."""
    c, delta = 1 / 30, 0.01
    loss = lambda p: 0.5 * jnp.sum(jnp.asarray(EIGS * 100, jnp.float32) * p**2)
    params = jnp.zeros(5).at[0].set(c)
    d0 = first_direction(build_optimizer("adam"), jax.grad(loss)(params), params)
    res = search_eta_c(loss, params, d0, delta=delta)
    assert res.eta_lower < 2 * c <= res.eta_upper <= 2 * c + c * (math.sqrt(1 + delta) - 1)


def test_first_direction_of_adam_and_gi_adam():
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(2)}
    grads = {"w": jnp.array([[0.3, -2.0, 0.0], [1e-3, -5e-2, 7.0]]), "b": jnp.array([-0.4, 12.0])}
    eps, b2 = 1e-8, 0.99
    for name, scale in (("adam", 1.0), ("gi_adam", math.sqrt(1 - b2))):
        d = first_direction(build_optimizer(name, b2=b2, eps=eps), grads, params)
        for key, g in grads.items():
            g = np.asarray(g, np.float64)
            # t = 1: m̂ = g; v̂ = g² for Adam, g²/(1−β₂) for GI-Adam (v₀ = g₀²).
            expected = g / (np.abs(g) / scale + eps)
            np.testing.assert_allclose(d[key], expected, rtol=1e-5)
            np.testing.assert_allclose(d[key], scale * np.sign(g), rtol=1e-4)


def test_t_reach_and_t_save_closed_forms():
    assert t_reach(0.25, 1.0, 100) == pytest.approx(75.0)
    assert t_save(0.25, 1.0, 100, forward_passes=10) == pytest.approx(20.0)  # 25 steps − 10/2
    # η_trgt < η_c: no warmup left, all of it saved (less the search).
    assert t_reach(2.0, 1.0, 100) == 0.0
    assert t_save(2.0, 1.0, 100, forward_passes=10) == pytest.approx(95.0)
    # Broadcasts over a grid (the T_reach/T_save heatmaps): T_reach + T_save + passes/2 = T_wrm.
    eta_c, lr_trgt, steps = 0.1, np.array([[0.05], [0.2], [0.8]]), np.array([64, 1024])
    np.testing.assert_allclose(t_reach(eta_c, lr_trgt, steps) + t_save(eta_c, lr_trgt, steps, 12) + 6,
                               np.broadcast_to(steps, (3, 2)))


def test_catapult_schedule_values_cap_and_jit():
    """The project schedule reproduces η_t = min(η_c + η_trgt·t/T_wrm, η_trgt) exactly."""
    steps = jnp.arange(0, 200, 25)
    lr = jax.jit(learning_rate)(steps, catapult_schedule(0.25, 1.0, 100))
    np.testing.assert_allclose(lr, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0], rtol=1e-6)
    dense = np.asarray(learning_rate(jnp.arange(200), catapult_schedule(0.3, 1.2, 64)))
    np.testing.assert_allclose(dense, np.minimum(0.3 + 1.2 * np.arange(200) / 64, 1.2), rtol=1e-6)
    # It first reaches η_trgt at t = T_reach.
    assert int(np.argmax(dense >= 1.2 - 1e-7)) == round(t_reach(0.3, 1.2, 64))
    # η_c ≥ η_trgt: constant η_trgt from the first step.
    np.testing.assert_allclose(learning_rate(steps, catapult_schedule(2.0, 1.0, 100)), 1.0)
    # 0 < T_reach < 1 (η_c just below η_trgt): η_c at t = 0, then η_trgt, as the closed form on integer steps.
    assert 0 < t_reach(0.99, 1.0, 64) < 1
    np.testing.assert_allclose(learning_rate(jnp.arange(4), catapult_schedule(0.99, 1.0, 64)), [0.99, 1, 1, 1],
                               rtol=1e-6)


def two_layer_linear_problem():
    """f(x) = xᵀUv/√n with MSE and full-batch GD, the classic catapult model: for 2/λ < η < 4/λ the loss spikes,
    λ falls and training recovers; η_trgt = 6/λ₀ diverges without warmup. Drawn with numpy, so JAX's PRNG
    settings do not change the problem."""
    rng = np.random.default_rng(0)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    width = 100
    x, y = normal(4, 4) / 2.0, normal(4, 1)
    params = {"u": normal(4, width), "v": normal(width, 1)}

    def loss_fn(p):
        return 0.5 * jnp.mean((x @ p["u"] @ p["v"] / math.sqrt(width) - y) ** 2)

    flat, unravel = ravel_pytree(params)
    lam0 = float(jnp.linalg.eigvalsh(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f))))(flat))[-1])
    tx = build_optimizer("sgd")

    traces = []

    @jax.jit
    def step(p, s, lr):
        traces.append(1)  # Python side effect: runs only when traced
        loss, g = jax.value_and_grad(loss_fn)(p)
        d, s = tx.update(g, s, p)
        return jax.tree.map(lambda a, b: a - lr * b, p, d), s, loss

    direction = jax.jit(lambda p, s: tx.update(jax.grad(loss_fn)(p), s, p)[0])
    return loss_fn, step, direction, params, tx.init(params), lam0, traces


def test_persistent_catapult_warmup_reaches_target_through_catapults():
    loss_fn, step, direction, params, opt_state, lam0, traces = two_layer_linear_problem()
    lr_trgt = 6 / lam0
    losses = []

    def recording_step(state, lr):
        p, s, loss = step(*state, lr)
        losses.append(float(loss))
        return (p, s), loss

    max_steps = 200
    state, lrs, events, reached = persistent_catapult_warmup(
        recording_step, loss_fn, lambda state: direction(*state), (params, opt_state), params_of=lambda s: s[0],
        lr_trgt=lr_trgt, delta=0.1, max_steps=max_steps)
    assert reached and len(lrs) < max_steps
    assert np.all(np.diff(lrs) >= 0) and lrs[-1] == lr_trgt and lrs[0] < lr_trgt
    assert len(events) >= 5 and 2 / lam0 < events[0].lr < events[-1].lr <= lr_trgt
    assert [e.start_step for e in events] == [0] + [e.recovery_step for e in events[:-1]]
    for event in events:
        assert event.recovery_step is not None and event.recovery_step > event.start_step
        np.testing.assert_array_equal(lrs[event.start_step:event.recovery_step], event.lr)
    assert all(a.reference_loss > b.reference_loss for a, b in zip(events, events[1:]))
    # The first η really catapults: the loss rises above L(θ*) before it recovers.
    first = events[0]
    assert max(losses[first.start_step:first.recovery_step]) > first.reference_loss
    for _ in range(max_steps - len(lrs)):  # the caller trains on at η_trgt
        state, _ = recording_step(state, jnp.float32(lr_trgt))
    assert float(loss_fn(state[0])) < 1e-4 * events[0].reference_loss
    assert len(traces) == 1  # η arrives traced: one compilation for every η

    # Without warmup the same η_trgt diverges.
    p, s = params, opt_state
    for _ in range(50):
        p, s, loss = step(p, s, jnp.float32(lr_trgt))
    assert not np.isfinite(float(loss_fn(p)))


def test_persistent_catapult_lr_never_decreases_when_eta_c_falls():
    """A scripted run whose direction doubles every step, so each new search finds η_c halved; η must hold."""
    loss_fn = lambda theta: 0.5 * LAM * theta**2
    direction_fn = lambda state: state[1] * LAM * state[0]
    step_fn = lambda state, lr: ((state[0] / 2, 2 * state[1]), loss_fn(state[0]))  # the loss always recovers at once
    (_, scale), lrs, events, reached = persistent_catapult_warmup(
        step_fn, loss_fn, direction_fn, (jnp.float32(1.0), jnp.float32(1.0)), params_of=lambda s: s[0],
        lr_trgt=10.0, delta=0.01, max_steps=5)
    assert float(scale) == 32.0 and len(events) == 5 and not reached
    assert [(e.start_step, e.recovery_step) for e in events] == [(t, t + 1) for t in range(5)]
    assert 2 / LAM <= events[0].lr <= (1 + math.sqrt(1.01)) / LAM
    np.testing.assert_array_equal(lrs, events[0].lr)


def test_the_search_starts_at_lr_start_or_at_the_first_warmup_step():
    """η₀ = schedule.search_lr_start (the paper's default 10⁻⁴), or with null η_trgt/T_wrm (its fair comparison with a
    linear warmup, Fig. 5); never above η_trgt."""
    search = build.Search(delta=0.1, lr_start=None, max_forward_passes=30, check_steps=0)
    assert search.first_lr(0.8, 16) == 0.05
    assert dataclasses.replace(search, lr_start=1e-4).first_lr(0.8, 16) == 1e-4
    assert dataclasses.replace(search, lr_start=2.0).first_lr(0.8, 16) == 0.8
