"""warmup.loop's curvature tracking: measuring must not change training, must match a standalone solve at the same
θ_t, and must warm-start from the last measurement at a step of the same parity."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from warmup import build, curvature, loop, losses, schedules
from warmup.models import build_model
from warmup.optim import build_optimizer
from conftest import TINY, compose_config

STEPS = 24


def sgd(tx):
    return loop.Optimizer(tx, lambda lr: curvature.thresholds(lr, optimizer="sgd"))


def full_batch(keys, arrays):
    return arrays.x_train, arrays.y_train


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
    cfg = loop.LoopConfig(sharpness_every=1, chunk_steps=1)
    return model, loss_fn, params, arrays, measure_loss, eig0, sched, cfg


def trajectory(setup, **changes):
    """(states after each step, metric rows) of a run with `changes` to the loop config."""
    model, loss_fn, params, arrays, _, eig0, sched, cfg = setup
    tx = build_optimizer("sgd")
    chunk = loop.make_chunk_fn(dataclasses.replace(cfg, **changes), model.apply, loss_fn, sgd(tx), full_batch)
    state = loop.init_state(params, tx.init(params), jax.random.PRNGKey(1), eig0.vector)
    states, rows = [state], []
    for state, r in loop.run(chunk, state, sched, arrays, loss_bound=1e6, total_steps=STEPS):
        states.append(state)
        rows.append(r)
    return states, {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


@pytest.fixture(scope="module")
def untracked(setup):
    return trajectory(setup, sharpness_every=0)


def test_a_full_batch_run_measures_on_its_own_batch(data_root):
    built = lambda *o: build._loop_cfg(compose_config([*TINY, f"data.root={data_root}", "schedule.lr_trgt=1", *o]))
    assert built().measures_train_batch and built().shares_linearisation
    assert not built("data.batch_size=8").measures_train_batch
    assert not built("data.augment.flip=true").measures_train_batch
    assert not built("sharpness.dtype=float64").shares_linearisation


def test_tracking_leaves_the_trajectory_unchanged_and_matches_a_standalone_solve(setup, untracked):
    """The tracked step takes its update from the linearisation that measures λᴴ; it must be the same update."""
    tracked, rows = trajectory(setup)
    plain_states, plain = untracked
    np.testing.assert_allclose(rows["train_loss"], plain["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(ravel_pytree(tracked[-1].params)[0], ravel_pytree(plain_states[-1].params)[0],
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
        # step 0 starts from θ₀'s own converged eigenvector, which a one-iteration solve may return bit for bit
        assert t == 0 or not np.array_equal(after[t % 2], before[t % 2])
    assert int(rows["sharpness_iters"][0]) <= 2 and (rows["sharpness_iters"][1:] > 2).any()
    start = jax.jit(lambda p, v: curvature.sharpness(setup[4], p, v, method="lanczos", max_iters=20, tol=1e-3))
    for t in (5, 6):  # the in-loop result is the solve started from that slot
        eig = start(states[t].params, states[t].eigvec[t % 2])
        assert float(eig.value) == pytest.approx(float(rows["sharpness"][t]), rel=1e-6)
        assert int(eig.iterations) == int(rows["sharpness_iters"][t])


def test_float64_measurements_keep_training_in_float32(setup, untracked):
    """sharpness.dtype=float64 traces the solve in double precision: the in-loop λᴴ_t equals a standalone float64
    solve and the dense float64 Hessian's top eigenvalue at θ_t, while the update is the plain float32 gradient's
    (the trajectory is the untracked one, bit for bit) and the state stays float32."""
    solver = dict(sharpness_dtype="float64", sharpness_tol=1e-10, sharpness_max_iters=64)
    tracked, rows = trajectory(setup, **solver)
    np.testing.assert_array_equal(rows["train_loss"], untracked[1]["train_loss"])
    assert {str(leaf.dtype) for leaf in jax.tree.leaves((tracked[-1].params, tracked[-1].eigvec))} == {"float32"}
    assert rows["sharpness"].dtype == np.float32

    measure_loss = setup[4]
    with jax.enable_x64(True):
        at = [curvature.cast(tracked[t].params, "float64") for t in (0, STEPS - 1)]
        flat, unravel = ravel_pytree(at[0])
        dense = [np.linalg.eigvalsh(np.asarray(jax.hessian(lambda f: measure_loss(unravel(f)))(ravel_pytree(p)[0])))[-1]
                 for p in at]
        solve = jax.jit(lambda p: curvature.sharpness(measure_loss, p, jnp.zeros(flat.size), max_iters=64, tol=1e-10))
        standalone = [solve(p) for p in at]
        assert all(s.value.dtype == jnp.float64 and float(s.residual) < 1e-10 for s in standalone)
    measured = rows["sharpness"][[0, STEPS - 1]]
    assert rows["sharpness_residual"].max() < 1e-10
    np.testing.assert_allclose(measured, dense, rtol=2e-7)  # float32 rounding of a float64 solve
    np.testing.assert_allclose(measured, [float(s.value) for s in standalone], rtol=2e-7)


def test_only_a_float64_measurement_traces_float64(setup):
    """The numbers above cannot tell the dtypes apart on so small a net (float32 is also within 2e-7 there); the
    traced program can: float64 arithmetic appears exactly when sharpness_dtype asks for it."""
    model, loss_fn, params, arrays, _, eig0, sched, cfg = setup
    tx = build_optimizer("sgd")
    state = loop.init_state(params, tx.init(params), jax.random.PRNGKey(1), eig0.vector)

    def program(dtype):
        chunk = loop.make_chunk_fn(dataclasses.replace(cfg, sharpness_dtype=dtype), model.apply, loss_fn, sgd(tx),
                                   full_batch)
        return str(jax.make_jaxpr(chunk)(state, sched, arrays, jnp.float32(1e6), jnp.int32(STEPS)))

    assert "f64[" in program("float64") and "f64[" not in program("float32")


B1, B2, EPS = 0.9, 0.999, 1e-8  # the optimiser configs' defaults
ADAM_STEPS = 6


def full_mup_rate(name: str, kernel_shape) -> float:
    """The full-μP Adam rate of a Dense kernel with our multipliers, by hand: input 1/√fan_out, hidden
    1/√(fan_in·fan_out), readout 1/√fan_in (models/parameterization.py derives them)."""
    fan_in, fan_out = kernel_shape
    return {"input": fan_out**-0.5, "readout": fan_in**-0.5}.get(name, (fan_in * fan_out) ** -0.5)


def reference_adam_preconditioner(opt_state, params, t: int, full_mup: bool):
    """P_t of paper §2, written out: (1 − β₁^{t+1})·(√(v_{t+1}/(1 − β₂^{t+1})) + ε) per coordinate, v_{t+1} the ν of the
    state after update t (divided by the per-layer rate c under full μP, whose update is η·c·m̂/(√v̂ + ε)); flat,
    float64, in `ravel_pytree(params)` order."""
    adam = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: hasattr(s, "nu")) if hasattr(s, "nu")][0]
    assert int(adam.count) == t + 1  # the state after the update of step t

    def diagonal(layer, leaf):
        v = np.asarray(adam.nu[layer][leaf], np.float64)
        p = (1 - B1 ** (t + 1)) * (np.sqrt(v / (1 - B2 ** (t + 1))) + EPS)
        if full_mup and leaf == "kernel":
            p = p / full_mup_rate(layer, params[layer]["kernel"].shape)
        return p

    return ravel_pytree({layer: {leaf: diagonal(layer, leaf) for leaf in params[layer]} for layer in params})[0]


@pytest.mark.parametrize("optimizer, options, dtype, rtol", [
    ("adam", (), "float64", 1e-6),
    ("gi_adam", (), "float64", 1e-6),
    ("adam", ("param=mup", "param.full_mup=true"), "float64", 1e-6),
    ("adam", (), "float32", 1e-4),  # the default path: λ^{P⁻¹H} from the update's own linearisation
])
def test_in_loop_preconditioned_sharpness_matches_a_dense_float64_reference(data_root, optimizer, options, dtype,
                                                                            rtol):
    """λ^{P⁻¹H}_t logged by the loop (full batch, measured every step) equals λ_max(P^{-1/2} H P^{-1/2}) with H the
    dense float64 Hessian at θ_t and P Adam's bias-corrected preconditioner built by hand from the state after update
    t. At t = 0 the (1 − β₁^{t+1}) factor alone is 10×, at t = 5 about 2×, so a P missing it (or read from the state
    before the update, or without the full-μP rates) is far outside the tolerance. Measured agreement: ≤ 5e-8
    (float64 solve, logged in float32), ≤ 7e-6 (float32)."""
    cfg = compose_config([f"data.root={data_root}", "model.width=4", "model.depth=3", "data.num_examples=64",
                          f"optimizer={optimizer}", "schedule.lr_trgt=1e-3", "sharpness.every=1",
                          f"sharpness.dtype={dtype}", "sharpness.max_iters=32",
                          f"sharpness.tol={1e-10 if dtype == 'float64' else 1e-6}", f"train.steps={ADAM_STEPS}",
                          "train.eval_every=0", *options])
    b = build.build(cfg)
    flat, _ = ravel_pytree(b.params)
    state = loop.init_state(b.params, b.tx.init(b.params), b.key, jnp.zeros(flat.size))
    sched = schedules.schedule_params(lr_trgt=1e-3, warmup_steps=1, total_steps=ADAM_STEPS)
    states, rows = [state], []
    for state, r in loop.run(b.chunk_fn(chunk_steps=1), state, sched, b.arrays, loss_bound=1e9,
                             total_steps=ADAM_STEPS):
        states.append(state)
        rows.append(r)
    pre_sharpness = np.concatenate([r["pre_sharpness"] for r in rows])
    assert len(pre_sharpness) == ADAM_STEPS and np.isfinite(pre_sharpness).all()

    measure_loss = b.measurement_loss()
    with jax.enable_x64(True):
        unravel = ravel_pytree(curvature.cast(b.params, "float64"))[1]
        dense_hessian = jax.jit(jax.hessian(lambda f: measure_loss(unravel(f))))
        hessian = lambda params: np.asarray(dense_hessian(ravel_pytree(curvature.cast(params, "float64"))[0]))
        reference = []
        for t in (0, ADAM_STEPS - 1):
            # loop state t holds θ_t; state t + 1 the optimiser state after update t, which P is built from
            scale = 1 / np.sqrt(reference_adam_preconditioner(states[t + 1].opt_state, b.params, t,
                                                              full_mup="param.full_mup=true" in options))
            reference.append(np.linalg.eigvalsh(scale[:, None] * hessian(states[t].params) * scale[None, :])[-1])
    np.testing.assert_allclose(pre_sharpness[[0, ADAM_STEPS - 1]], reference, rtol=rtol)
