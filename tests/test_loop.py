"""warmup.loop's curvature tracking: measuring must not change training, must match a standalone solve at the same
θ_t, and must warm-start from the last measurement at a step of the same parity."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from warmup import curvature, loop, losses, schedules
from warmup.models import build_model
from warmup.optim import build_optimizer

STEPS = 24


@pytest.fixture(scope="module")
def setup():
    """A tiny FCN on random data, full batch, GD warming up to η = 1.8/λ₀ᴴ (near the edge of stability)."""
    model = build_model("fcn", param="sp", num_classes=3, width=8, depth=3)
    kx, ky, kp = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (32, 4, 4, 1))
    y = jax.nn.one_hot(jax.random.randint(ky, (32,), 0, 3), 3)
    params = model.init(kp, x)["params"]
    loss_fn = losses.get("mse")
    arrays = loop.Arrays(x, y, x, y, x, y, jnp.ones(32))
    measure_loss = lambda p: loop.mean_loss(model.apply, loss_fn, p, x, y)[0]
    flat = ravel_pytree(params)[0]
    eig0 = curvature.sharpness(measure_loss, params, jnp.zeros(flat.size), max_iters=64, tol=1e-7)
    sched = schedules.schedule_params(lr_trgt=1.8 / float(eig0.value), warmup_steps=4, total_steps=STEPS)
    cfg = loop.LoopConfig(optimizer="sgd", sharpness_every=1, chunk_steps=1)
    return model, loss_fn, params, arrays, measure_loss, eig0, sched, cfg


def trajectory(setup, **changes):
    """(states after each step, metric rows) of a run with `changes` to the loop config."""
    model, loss_fn, params, arrays, _, eig0, sched, cfg = setup
    tx = build_optimizer("sgd")
    chunk = loop.make_chunk_fn(dataclasses.replace(cfg, **changes), model.apply, loss_fn, tx)
    state = loop.init_state(params, tx.init(params), jax.random.PRNGKey(1), eig0.vector)
    states, rows = [state], []
    for state, r in loop.run(chunk, state, sched, arrays, loss_bound=1e6, total_steps=STEPS):
        states.append(state)
        rows.append(r)
    return states, {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def test_a_full_batch_run_measures_on_its_own_batch():
    assert loop.LoopConfig(optimizer="sgd").measures_train_batch
    assert not loop.LoopConfig(optimizer="sgd", batch_size=8).measures_train_batch
    assert not loop.LoopConfig(optimizer="sgd", flip=True).measures_train_batch


def test_tracking_leaves_the_trajectory_unchanged_and_matches_a_standalone_solve(setup):
    """The tracked step takes its update from the linearisation that measures λᴴ; it must be the same update."""
    tracked, rows = trajectory(setup)
    untracked, plain = trajectory(setup, sharpness_every=0)
    np.testing.assert_allclose(rows["train_loss"], plain["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(ravel_pytree(tracked[-1].params)[0], ravel_pytree(untracked[-1].params)[0],
                               rtol=1e-4, atol=1e-6)
    assert np.isnan(plain["sharpness"]).all()

    measure_loss = setup[4]
    dim = ravel_pytree(setup[2])[0].size
    cold = jax.jit(lambda p: curvature.sharpness(measure_loss, p, jnp.zeros(dim), max_iters=64, tol=1e-7))
    solves = [cold(state.params) for state in tracked[:-1]]
    assert max(float(s.residual) for s in solves) < 1e-6  # converged
    reference = np.array([float(s.value) for s in solves])
    assert np.ptp(reference) > 0.05 * reference[0]  # λᴴ moves along the trajectory
    np.testing.assert_allclose(rows["sharpness"], reference, rtol=1e-3)
    np.testing.assert_allclose(rows["sharpness_threshold"], 2 / rows["lr"], rtol=1e-6)


def test_warm_starts_follow_the_step_parity(setup):
    """A measurement at step t starts from, and replaces, the eigenvector last measured at a step of t's parity."""
    states, rows = trajectory(setup)
    eig0 = setup[5].vector
    np.testing.assert_array_equal(states[0].eigvec, np.stack([eig0, eig0]))
    for t in range(STEPS):
        before, after = np.asarray(states[t].eigvec), np.asarray(states[t + 1].eigvec)
        np.testing.assert_array_equal(after[1 - t % 2], before[1 - t % 2])
        assert not np.array_equal(after[t % 2], before[t % 2])
    start = jax.jit(lambda p, v: curvature.sharpness(setup[4], p, v, method="lanczos", max_iters=20, tol=1e-3))
    for t in (5, 6):  # the in-loop result is the solve started from that slot
        eig = start(states[t].params, states[t].eigvec[t % 2])
        assert float(eig.value) == pytest.approx(float(rows["sharpness"][t]), rel=1e-6)
        assert int(eig.iterations) == int(rows["sharpness_iters"][t])
