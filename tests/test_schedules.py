import jax
import jax.numpy as jnp
import numpy as np
import pytest

from warmup.schedules import ScheduleParams, as_optax_schedule, learning_rate, schedule_params

STEPS = np.arange(0, 40)


def lrs(p, steps=STEPS):
    return np.asarray(jax.jit(jax.vmap(learning_rate, in_axes=(0, None)))(jnp.asarray(steps), p))


def test_linear_warmup_then_constant():
    p = schedule_params(lr_trgt=0.5, warmup_steps=10)
    expected = np.where(STEPS < 10, 0.5 * (STEPS + 1) / 10, 0.5)
    np.testing.assert_allclose(lrs(p), expected, rtol=1e-6)
    np.testing.assert_allclose(lrs(p)[:3], [0.05, 0.1, 0.15], rtol=1e-6)
    assert np.all(lrs(p)[9:] == np.float32(0.5))  # the plateau is exactly η_trgt


def test_quadratic_warmup():
    p = schedule_params(lr_trgt=0.5, warmup_steps=10, exponent=2.0)
    expected = 0.5 * np.minimum(1, ((STEPS + 1) / 10) ** 2)
    np.testing.assert_allclose(lrs(p), expected, rtol=1e-6)
    np.testing.assert_allclose(lrs(p)[[0, 4, 9]], [0.005, 0.125, 0.5], rtol=1e-6)


def test_warmup_from_nonzero_lr_init():
    p = schedule_params(lr_trgt=0.5, warmup_steps=8, lr_init=0.1)
    expected = 0.1 + 0.4 * np.minimum(1, (STEPS + 1) / 8)
    np.testing.assert_allclose(lrs(p), expected, rtol=1e-6)
    assert np.all(lrs(p)[7:] == np.float32(0.5))


def test_one_warmup_step_is_constant_from_the_start():
    for k in (1.0, 3.0):
        p = schedule_params(lr_trgt=0.25, warmup_steps=1, exponent=k, lr_init=0.1)
        assert np.all(lrs(p) == np.float32(0.25))


@pytest.mark.parametrize("power, midpoint_factor", [(1.0, 0.5), (2.0, 0.25)])
def test_cosine_decay(power, midpoint_factor):
    lr_trgt, t_wrm, total = 0.8, 10, 110
    lr_min = 0.1 * lr_trgt
    p = schedule_params(lr_trgt=lr_trgt, warmup_steps=t_wrm, decay_power=power, total_steps=total)
    got = lrs(p, np.array([9, 10, 60, 110, 150]))
    np.testing.assert_allclose(got, [lr_trgt, lr_trgt, lr_min + (lr_trgt - lr_min) * midpoint_factor,
                                     lr_min, lr_min], rtol=1e-5)

    steps = np.arange(0, 130)
    u = np.clip((steps - t_wrm) / (total - t_wrm), 0, 1)
    closed = np.where(steps < t_wrm, lr_trgt * (steps + 1) / t_wrm,
                      lr_min + (lr_trgt - lr_min) * (0.5 * (1 + np.cos(np.pi * u))) ** power)
    np.testing.assert_allclose(lrs(p, steps), closed, rtol=1e-5, atol=1e-7)


def test_cosine_decay_with_min_ratio_and_no_warmup():
    p = schedule_params(lr_trgt=1.0, warmup_steps=1, decay_power=1.0, total_steps=11, lr_min_ratio=0.0)
    got = lrs(p, np.array([0, 1, 6, 11]))
    np.testing.assert_allclose(got, [1.0, 1.0, 0.5, 0.0], atol=1e-6)


def test_zero_decay_power_is_constant_after_warmup():
    p = schedule_params(lr_trgt=0.3, warmup_steps=5, decay_power=0.0, total_steps=20)
    got = lrs(p, np.arange(0, 30))
    assert np.all(got[4:] == np.float32(0.3))  # 0⁰ = 1 at t ≥ T as well


def test_decay_when_total_equals_warmup_is_finite():
    p = schedule_params(lr_trgt=0.3, warmup_steps=5, decay_power=1.0, total_steps=5)
    got = lrs(p, np.arange(0, 10))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[4:6], [0.3, 0.3], rtol=1e-6)
    np.testing.assert_allclose(got[6:], 0.03, rtol=1e-5)


def test_traced_int_step_and_optax_schedule():
    p = schedule_params(lr_trgt=0.5, warmup_steps=10)
    sched = as_optax_schedule(p)
    assert float(jax.jit(sched)(jnp.int32(3))) == pytest.approx(0.2)
    assert float(sched(3)) == float(learning_rate(3, p))


def test_vmap_over_lr_and_warmup_compiles_once():
    traces = []

    @jax.jit
    def batched(step, p):
        traces.append(1)  # runs only while tracing
        return jax.vmap(learning_rate, in_axes=(None, 0))(step, p)

    for lr_trgt, t_wrm, step in [([0.1, 0.2, 0.4], [1, 4, 8], 0), ([1.0, 2.0, 3.0], [2, 2, 16], 3),
                                 ([0.5, 0.5, 0.5], [100, 10, 1], 50)]:
        p = schedule_params(lr_trgt=np.array(lr_trgt), warmup_steps=np.array(t_wrm))
        expected = np.array(lr_trgt) * np.minimum(1, (step + 1) / np.array(t_wrm))
        np.testing.assert_allclose(batched(jnp.int32(step), p), expected, rtol=1e-6)
    assert len(traces) == 1


def test_fields_are_broadcast_float32_arrays():
    p = schedule_params(lr_trgt=np.array([0.1, 0.2]), warmup_steps=4)
    assert isinstance(p, ScheduleParams)
    for field in p:
        assert field.dtype == jnp.float32 and field.shape == (2,)


@pytest.mark.parametrize("key, value, message", [
    ("lr_trgt", 0.0, r"schedule.lr_trgt=0.0: must be > 0"),
    ("lr_trgt", float("inf"), r"schedule.lr_trgt=inf: must be > 0"),
    ("warmup_steps", 0, r"schedule.warmup_steps=0: must be >= 1"),
    ("lr_init", -0.1, r"schedule.lr_init=-0.1: must be >= 0"),
    ("exponent", 0.0, r"schedule.exponent=0.0: must be > 0"),
    ("decay_power", -1.0, r"schedule.decay_power=-1.0: must be >= 0"),
    ("total_steps", 0, r"schedule.total_steps=0: must be >= 1"),
    ("lr_min_ratio", 1.5, r"schedule.lr_min_ratio=1.5: must be in \[0, 1\]"),
    ("lr_trgt", [0.1, -0.2], r"schedule.lr_trgt=\[0.1, -0.2\]: must be > 0"),
])
def test_invalid_values_are_rejected(key, value, message):
    kwargs = dict(lr_trgt=0.1, warmup_steps=4) | {key: value}
    with pytest.raises(ValueError, match=message):
        schedule_params(**kwargs)
