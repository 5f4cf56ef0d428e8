import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from warmup.optim import OPTIMIZERS, adam_moments, build_optimizer, scale_by_adam

PARAMS = {"b": jnp.array([0.5]), "w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
# Three gradients with different per-coordinate ratios, so m and v really mix across steps.
GRADS = [
    {"b": jnp.array([0.5]), "w": jnp.array([[1.0, -2.0], [0.25, 4.0]])},
    {"b": jnp.array([-1.0]), "w": jnp.array([[3.0, -1.0], [0.5, 2.0]])},
    {"b": jnp.array([2.0]), "w": jnp.array([[-1.0, 0.5], [4.0, -3.0]])},
]
G = np.stack([np.asarray(ravel_pytree(g)[0], np.float64) for g in GRADS])  # (step, coordinate), order b, w
B1, B2, EPS = 0.9, 0.99, 1e-8


def run(tx, grads=GRADS):
    """Jitted updates from init(PARAMS); returns the flat directions (step, coordinate) and the last state."""
    update = jax.jit(tx.update)
    state, out = tx.init(PARAMS), []
    for g in grads:
        d, state = update(g, state, PARAMS)
        out.append(ravel_pytree(d)[0])
    return np.stack(out), state


def adam_reference(v0, b1=B1, b2=B2, eps=EPS):
    """Paper §2 by hand in float64: m, v from (0, v₀), both bias corrections. Returns directions and v_3."""
    m, v, out = np.zeros_like(v0), v0, []
    for t, g in enumerate(G, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        out.append((m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
    return np.stack(out), v


def test_sgd_is_the_gradient():
    d, _ = run(build_optimizer("sgd"))
    np.testing.assert_allclose(d, G, rtol=1e-6)


def test_sgd_heavy_ball_momentum():
    d, _ = run(build_optimizer("sgd", momentum=0.9))
    m1 = G[0]
    m2 = G[1] + 0.9 * m1
    m3 = G[2] + 0.9 * m2
    np.testing.assert_allclose(d, np.stack([m1, m2, m3]), rtol=1e-6)
    # first coordinate by hand: 0.5; -1 + 0.45 = -0.55; 2 - 0.495 = 1.505
    np.testing.assert_allclose(d[:, 0], [0.5, -0.55, 1.505], rtol=1e-6)


def test_adam_three_steps():
    d, state = run(build_optimizer("adam", b1=B1, b2=B2, eps=EPS))
    expected, v3 = adam_reference(np.zeros(G.shape[1]))
    np.testing.assert_allclose(d, expected, rtol=1e-5)
    np.testing.assert_allclose(d[0], np.sign(G[0]), rtol=1e-6)  # first Adam step is sign(g₀) up to ε
    np.testing.assert_allclose(ravel_pytree(state.nu)[0], v3, rtol=1e-5)


def test_gi_adam_three_steps():
    d, state = run(build_optimizer("gi_adam", b1=B1, b2=B2, eps=EPS))
    expected, v3 = adam_reference(G[0] ** 2)
    np.testing.assert_allclose(d, expected, rtol=1e-5)
    np.testing.assert_allclose(d[0], np.sqrt(1 - B2) * np.sign(G[0]), rtol=1e-5)  # v₁ = g₀² → √(1−β₂)·sign(g₀)
    np.testing.assert_allclose(ravel_pytree(state.nu)[0], v3, rtol=1e-5)


def test_ri_adam_v0_is_rescaled_random_square():
    tx = build_optimizer("ri_adam", b1=B1, b2=B2, eps=EPS, seed=3)
    _, state = run(tx, GRADS[:1])
    v1 = np.asarray(ravel_pytree(state.nu)[0], np.float64)
    v0 = (v1 - (1 - B2) * G[0] ** 2) / B2  # undo the first v ← β₂v + (1−β₂)g²
    assert np.all(v0 >= 0)
    np.testing.assert_allclose(np.linalg.norm(np.sqrt(v0)), np.linalg.norm(G[0]), rtol=1e-4)  # ‖r‖ = ‖g₀‖
    assert not np.allclose(v0, G[0] ** 2, rtol=0.1)  # random, not GI-Adam

    d, _ = run(tx)
    np.testing.assert_allclose(d, adam_reference(v0)[0], rtol=1e-4)


def test_ri_adam_depends_on_seed_only():
    nu = lambda seed: ravel_pytree(run(build_optimizer("ri_adam", seed=seed), GRADS[:1])[1].nu)[0]
    np.testing.assert_array_equal(nu(0), nu(0))
    assert not np.allclose(nu(0), nu(1))


def test_radam_matches_optax():
    # ρ_t < 5 for the first steps with β₂ = 0.999, so RAdam's direction there is the bias-corrected momentum m̂_t.
    d, _ = run(build_optimizer("radam", b1=B1, b2=0.999, eps=EPS))
    m, m_hat = np.zeros(G.shape[1]), []
    for t, g in enumerate(G, start=1):
        m = B1 * m + (1 - B1) * g
        m_hat.append(m / (1 - B1**t))
    np.testing.assert_allclose(d, np.stack(m_hat), rtol=1e-5)

    # Past the threshold (β₂ = 0.9: ρ₃ ≈ 5.3) the rectified update: compare with optax.radam at η = 1.
    grads = GRADS * 3
    d, _ = run(build_optimizer("radam", b1=B1, b2=0.9, eps=EPS), grads)
    expected, _ = run(optax.radam(1.0, b1=B1, b2=0.9, eps=EPS), grads)
    np.testing.assert_allclose(d, -expected, rtol=1e-6)
    assert not np.allclose(d[-1], np.stack(m_hat)[-1])


def test_gi_adam_automatic_warmup_factor():
    """On a constant gradient GI-Adam's step is √(1−β₂ᵗ)·sign(g) (ε = 0): the built-in warmup of §2."""
    g = {"b": jnp.array([0.3]), "w": jnp.array([[-2.0, 1e-3], [5.0, -0.01]])}
    d, _ = run(build_optimizer("gi_adam", b2=0.999, eps=0.0), [g] * 50)
    t = np.arange(1, 51)[:, None]
    sign = np.sign(ravel_pytree(g)[0])[None, :]
    np.testing.assert_allclose(d, np.sqrt(1 - 0.999**t) * sign, rtol=2e-5)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_lr_multipliers_scale_each_leaf(name):
    multipliers = {"b": 0.5, "w": 2.0}
    plain, _ = run(build_optimizer(name))
    scaled, _ = run(build_optimizer(name, lr_multipliers=multipliers))
    factor = np.array([0.5] + [2.0] * 4)  # flat order: b, then the 4 entries of w
    np.testing.assert_allclose(scaled, plain * factor, rtol=1e-6)


@pytest.mark.parametrize("name", ["adam", "gi_adam", "ri_adam", "radam"])
def test_adam_moments_found_in_chained_state(name):
    tx = build_optimizer(name, b1=B1, b2=B2, lr_multipliers={"b": 1.0, "w": 3.0})
    nested = optax.chain(optax.identity(), tx)
    for steps in (1, 3):
        _, state = run(nested, GRADS[:steps])
        moments = adam_moments(state)
        assert isinstance(moments, optax.ScaleByAdamState)
        assert int(moments.count) == steps  # after the update of step t = steps − 1: count = t + 1
        if name == "adam":
            v = np.zeros(G.shape[1])
            for g in G[:steps]:
                v = B2 * v + (1 - B2) * g**2
            np.testing.assert_allclose(ravel_pytree(moments.nu)[0], v, rtol=1e-5)  # nu = v_{t+1}


def test_adam_moments_none_for_sgd():
    _, state = run(build_optimizer("sgd", momentum=0.9))
    assert adam_moments(state) is None


def test_jit_and_vmap_over_runs():
    """Three GI-Adam runs at once (batched states, so the count = 0 switch is batched) equal the runs one by one."""
    tx = build_optimizer("gi_adam", b1=B1, b2=B2)

    @jax.jit
    def two_steps(state, g):
        _, state = tx.update(g, state)
        return ravel_pytree(tx.update(g, state)[0])[0]

    states = jax.vmap(tx.init)(jax.tree.map(lambda x: jnp.stack([x] * 3), PARAMS))
    assert states.count.shape == (3,)
    together = jax.vmap(two_steps)(states, jax.tree.map(lambda *g: jnp.stack(g), *GRADS))
    for i, g in enumerate(GRADS):
        np.testing.assert_allclose(together[i], two_steps(tx.init(PARAMS), g), rtol=1e-6)
        np.testing.assert_allclose(together[i], np.sqrt(1 - B2**2) * np.sign(G[i]), rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="adamw"), "optimizer.name='adamw': must be one of sgd, adam, gi_adam, ri_adam, radam"),
    (dict(name="sgd", momentum=1.5), r"optimizer.momentum=1.5: must be in \[0, 1\)"),
    (dict(name="sgd", momentum=-0.1), "optimizer.momentum=-0.1"),
    (dict(name="adam", b1=1.0), "optimizer.b1=1.0"),
    (dict(name="adam", b2=-0.5), "optimizer.b2=-0.5"),
    (dict(name="adam", eps=-1e-8), "optimizer.eps=-1e-08: must be finite and >= 0"),
    (dict(name="adam", eps=float("nan")), "optimizer.eps=nan"),
])
def test_bad_configuration_is_rejected(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message):
        build_optimizer(name, **kwargs)


def test_bad_v_init_is_rejected():
    with pytest.raises(ValueError, match="v_init='ones': must be one of zeros, gradient, random"):
        scale_by_adam(v_init="ones")
