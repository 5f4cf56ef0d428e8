"""Learning-rate schedules (paper §2): warmup to η_trgt, then optionally a cosine decay to η_min.

For update t = 0, 1, …:
    warmup (t < T_wrm):  η_t = η_init + (η_trgt − η_init)·min(1, ((t+s)/T_wrm)^k),  s = 1 (the paper's t+1)
    after  (t ≥ T_wrm):  η_t = η_min + (η_trgt − η_min)·[½(1 + cos(π(t − T_wrm)/(T − T_wrm)))]^p
with η_min = lr_min_ratio·η_trgt; T_wrm = 1 is a constant η_trgt from t = 0 and p = 0 a constant η_trgt after
warmup. The parameters are arrays, not Python constants, so the schedule is traced: changing η_trgt or T_wrm
does not recompile, and a batch of schedules can be vmapped.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import Array


class ScheduleParams(NamedTuple):
    """All fields are float32 arrays of one common shape (scalars, or a batch to vmap over)."""
    lr_trgt: Array
    warmup_steps: Array  # T_wrm
    lr_init: Array  # η_init
    exponent: Array  # k; 1 = linear warmup
    decay_power: Array  # p; 0 = constant after warmup
    total_steps: Array  # T
    lr_min_ratio: Array  # η_min / η_trgt
    step_offset: Array  # s in (t+s)/T_wrm: 1 for the paper's warmups, 0 for the catapult-initialised one


_RULES = {  # field: (test, allowed range as written in the error)
    "lr_trgt": (lambda x: x > 0, "> 0"),
    "warmup_steps": (lambda x: x >= 1, ">= 1 (1 = no warmup)"),
    "lr_init": (lambda x: x >= 0, ">= 0"),
    "exponent": (lambda x: x > 0, "> 0"),
    "decay_power": (lambda x: x >= 0, ">= 0 (0 = no decay)"),
    "total_steps": (lambda x: x >= 1, ">= 1"),
    "lr_min_ratio": (lambda x: (x >= 0) & (x <= 1), "in [0, 1]"),
    "step_offset": (lambda x: (x >= 0) & (x <= 1), "in [0, 1]"),
}


def schedule_params(*, lr_trgt, warmup_steps, lr_init=0.0, exponent=1.0, decay_power=0.0, total_steps=1,
                    lr_min_ratio=0.1, step_offset=1.0) -> ScheduleParams:
    """Validated `ScheduleParams`; any field may be an array, and all are broadcast to one shape.

    Raises ValueError naming the key and its allowed range, e.g. "schedule.lr_trgt=-1.0: must be > 0".
    """
    given = dict(lr_trgt=lr_trgt, warmup_steps=warmup_steps, lr_init=lr_init, exponent=exponent,
                 decay_power=decay_power, total_steps=total_steps, lr_min_ratio=lr_min_ratio, step_offset=step_offset)
    for key, value in given.items():
        test, allowed = _RULES[key]
        x = np.asarray(value, np.float64)
        if not (np.all(np.isfinite(x)) and np.all(test(x))):
            raise ValueError(f"schedule.{key}={value}: must be {allowed}")
    arrays = np.broadcast_arrays(*(np.asarray(v, np.float32) for v in given.values()))
    return ScheduleParams(*(jnp.asarray(a) for a in arrays))


def _toward(start, end, w):
    """start + (end − start)·w, written so that w = 1 gives exactly `end` (the plateau is exactly η_trgt)."""
    return end - (end - start) * (1 - w)


def learning_rate(step, p: ScheduleParams) -> Array:
    """η_t for update `step` = t (0-based); steps past T keep η at its value at T."""
    t = jnp.asarray(step, jnp.float32)
    warm = _toward(p.lr_init, p.lr_trgt, jnp.minimum(1.0, ((t + p.step_offset) / p.warmup_steps) ** p.exponent))
    decay_len = jnp.maximum(p.total_steps - p.warmup_steps, 1.0)  # T = T_wrm: straight to η_min after warmup
    progress = jnp.clip((t - p.warmup_steps) / decay_len, 0.0, 1.0)
    cosine = 0.5 * (1 + jnp.cos(jnp.pi * progress))
    # x**0 = 1 for every x (0**0 included), so p = 0 keeps η_trgt after warmup.
    decayed = _toward(p.lr_min_ratio * p.lr_trgt, p.lr_trgt, cosine ** p.decay_power)
    return jnp.where(t < p.warmup_steps, warm, decayed)


def as_optax_schedule(p: ScheduleParams) -> Callable[[int], Array]:
    """`step -> η_t`, for composing with optax (e.g. `optax.scale_by_learning_rate(as_optax_schedule(p))`)."""
    return lambda step: learning_rate(step, p)
