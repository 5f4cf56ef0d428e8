"""The optimisers of the paper (§2) as optax transforms: SGD(-momentum), Adam, GI-Adam, RI-Adam, RAdam.

Every transform returns the update *direction* d_t; the training loop applies θ ← θ − η_t·d_t with η_t from
`warmup.schedules`. Keeping η out of the optimiser makes it a traced value: changing or vmapping it never
recompiles.

Adam, GI-Adam and RI-Adam are one transform, `scale_by_adam`, differing only in v₀. All Adam-family states are
`optax.ScaleByAdamState`s so `adam_moments` can hand (count, ν) to the preconditioned-sharpness code.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

OPTIMIZERS = ("sgd", "adam", "gi_adam", "ri_adam", "radam")
V_INITS = ("zeros", "gradient", "random")
_ADAM_V_INIT = {"adam": "zeros", "gi_adam": "gradient", "ri_adam": "random"}


def _initial_nu(v_init: str, grads, seed: int):
    """v₀ from the first gradient g₀: g₀² (GI-Adam) or r² with r random and ‖r‖ = ‖g₀‖ (RI-Adam)."""
    if v_init == "gradient":
        return jax.tree.map(jnp.square, grads)
    leaves, treedef = jax.tree.flatten(grads)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    r = treedef.unflatten([jax.random.normal(k, g.shape, g.dtype) for k, g in zip(keys, leaves)])
    scale = optax.tree.norm(grads) / optax.tree.norm(r)
    return jax.tree.map(lambda x: jnp.square(scale * x), r)


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, v_init: str = "zeros",
                  seed: int = 0) -> optax.GradientTransformation:
    """Adam's direction m̂/(√v̂ + ε) with both bias corrections, and v₀ chosen by `v_init` (see `V_INITS`).

    "zeros" is plain Adam (optax.scale_by_adam). For "gradient"/"random" the state still starts at ν = 0 (so
    `init` needs no gradient); the first update swaps ν for v₀ before Adam's ν ← β₂ν + (1−β₂)g², which is
    exactly Adam started from v₀ with m₀ = 0 and the bias corrections kept.
    """
    if v_init not in V_INITS:
        raise ValueError(f"v_init={v_init!r}: must be one of {', '.join(V_INITS)}")
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
    if v_init == "zeros":
        return adam

    def update(grads, state: optax.ScaleByAdamState, params=None):
        nu = lax.cond(state.count == 0,
                      lambda: optax.tree.cast_like(_initial_nu(v_init, grads, seed), state.nu),
                      lambda: state.nu)
        return adam.update(grads, state._replace(nu=nu), params)

    return optax.GradientTransformation(adam.init, update)


def scale_by_multipliers(multipliers) -> optax.GradientTransformation:
    """Multiply each leaf of the direction by its float in `multipliers` (full-μP per-layer learning rates)."""
    return optax.stateless(lambda updates, params: jax.tree.map(lambda u, c: c * u, updates, multipliers))


def _check_unit_interval(key: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"optimizer.{key}={value}: must be in [0, 1)")


def build_optimizer(name: str, *, momentum: float = 0.0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                    seed: int = 0, lr_multipliers: Any = None) -> optax.GradientTransformation:
    """The direction transform for optimiser `name` (one of `OPTIMIZERS`); see the module docstring.

    sgd: heavy-ball m_t = g_t + β m_{t−1} with β = `momentum`. adam / gi_adam / ri_adam: `scale_by_adam` with
    v₀ = 0 / g₀² / r² (r from `seed`). radam: optax's rectified Adam. `lr_multipliers` (a pytree like the
    parameters, or None) scales the direction per leaf.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={name!r}: must be one of {', '.join(OPTIMIZERS)}")
    for key, value in (("momentum", momentum), ("b1", b1), ("b2", b2)):
        _check_unit_interval(key, value)
    if not (0 <= eps < math.inf):
        raise ValueError(f"optimizer.eps={eps}: must be finite and >= 0")

    if name == "sgd":
        tx = optax.trace(decay=momentum)
    elif name == "radam":
        tx = optax.scale_by_radam(b1=b1, b2=b2, eps=eps)
    else:
        tx = scale_by_adam(b1, b2, eps, v_init=_ADAM_V_INIT[name], seed=seed)
    return tx if lr_multipliers is None else optax.chain(tx, scale_by_multipliers(lr_multipliers))


def adam_moments(opt_state) -> optax.ScaleByAdamState | None:
    """The Adam-family moments (count, μ, ν) inside a possibly chained/nested state; None if there are none.

    After the update of step t they hold count = t+1 and ν = v_{t+1}, which is what Adam's preconditioner needs.
    """
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)]
    return found[0] if found else None
