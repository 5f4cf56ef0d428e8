"""The compiled training loop (design §2).

Everything that happens per step — batch draw, augmentation, forward/backward, optimiser update, η_t, sharpness,
test evaluation and the divergence decision — runs inside one `lax.scan` chunk; the host only sees a chunk's metric
arrays. Where η_t is computed: `schedules.learning_rate` inside `train_step`. Where λᴴ is measured:
`curvature_of`, on the step's own linearisation (`step_with_curvature`) or on the measurement batch (`measure`).
Divergence is decided here, in the program (`frozen` / `diverged_step`); a run's status in `run.status`.
"""
import dataclasses
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from warmup import curvature, schedules
from warmup.losses import correct


class Arrays(NamedTuple):
    """Device-resident data, passed as arguments (not closed over) so it is never baked into the program."""
    x_train: jax.Array  # images; for a language model drawing windows: the training stream[:-1]
    y_train: jax.Array  # one-hot targets; for a language model drawing windows: stream[1:] (next tokens)
    x_measure: jax.Array  # the measurement batch for λᴴ (training set when full-batch)
    y_measure: jax.Array
    x_test: jax.Array  # padded to whole evaluation batches
    y_test: jax.Array
    w_test: jax.Array  # 1 for real examples, 0 for padding


class LoopState(NamedTuple):
    params: Any
    opt_state: Any
    key: jax.Array
    step: jax.Array  # index t of the next update
    frozen: jax.Array  # diverged: parameters are no longer updated
    diverged_step: jax.Array  # -1 while the run is healthy
    eigvec: jax.Array  # (2, n) warm starts for λᴴ, one per step parity (see `_warm_start`)
    pre_eigvec: jax.Array  # (2, n) the same for λ^{P⁻¹H}


class Optimizer(NamedTuple):
    """The optimiser as the loop needs it: its transform (the update direction), the stability thresholds of λᴴ and
    λ^{P⁻¹H} at η (`curvature.thresholds`), and the preconditioner P of λ^{P⁻¹H} read from the state after an
    update, in a dtype (None: no preconditioned sharpness, i.e. SGD)."""
    tx: optax.GradientTransformation
    thresholds: Callable[[jax.Array], tuple[jax.Array, jax.Array]]
    preconditioner: Callable[[Any, str], Any] | None = None


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Static choices of the loop itself: they select code paths at trace time (changing them recompiles). What a
    batch is comes in as a function (`make_chunk_fn`'s `draw`), what the optimiser is as an `Optimizer`."""
    measures_train_batch: bool = True  # the measurement batch (`Arrays`) is the batch every step trains on
    sharpness_every: int = 0
    sharpness_method: str = "lanczos"
    sharpness_max_iters: int = 20
    sharpness_tol: float = 1e-3
    sharpness_dtype: str = "float32"  # float64: measurements traced in double precision (`curvature.precision`)
    eval_every: int = 0
    eval_batch: int = 1000
    chunk_steps: int = 100
    scan_unroll: int = 1  # steps unrolled per scan iteration

    @property
    def shares_linearisation(self) -> bool:
        """The update and the Hessian come from one linearisation of the batch gradient
        (`curvature.value_gradient_and_hessian`): the measurement batch is the training batch and in its dtype."""
        return self.measures_train_batch and self.sharpness_dtype == "float32"


def mean_loss(apply_fn, loss_fn, params, x, y):
    """Mean loss and logits of a batch."""
    logits = apply_fn({"params": params}, x)
    return jnp.mean(loss_fn(logits, y)), logits


def measurement_loss(apply_fn, loss_fn, arrays: Arrays):
    """`params -> L(params)` on the measurement batch (the training set for full-batch runs): where λᴴ is measured
    and catapults are judged."""
    return lambda params: mean_loss(apply_fn, loss_fn, params, arrays.x_measure, arrays.y_measure)[0]


def pad_for_eval(x, y, eval_batch: int):
    """Pad (x, y) to whole evaluation batches; the weights mark the real examples."""
    n = x.shape[0]
    pad = (-n) % eval_batch
    weights = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    pad_rows = lambda a: np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])
    return pad_rows(x), pad_rows(y), weights


def evaluate(apply_fn, loss_fn, params, x, y, w, eval_batch: int):
    """Weighted mean loss and accuracy over a padded set, one evaluation batch at a time."""
    shape = lambda a: a.reshape((-1, eval_batch) + a.shape[1:])

    def batch_sums(batch):
        xb, yb, wb = batch
        logits = apply_fn({"params": params}, xb)
        return jnp.sum(wb * loss_fn(logits, yb)), jnp.sum(wb * correct(logits, yb))

    loss_sum, correct_sum = lax.map(batch_sums, (shape(x), shape(y), shape(w)))
    total = jnp.sum(w)
    return jnp.sum(loss_sum) / total, jnp.sum(correct_sum) / total


def _warm_start(vectors, step):
    """The warm start for a measurement at `step`: the last eigenvector measured at a step of the same parity.

    At the edge of stability the iterate flips across the valley every step and the top eigenvector flips with it:
    on the `benchmarks/sharpness_cost.py` trajectory its overlap with the one at t − 1 is 0.29 (median) but 0.998
    with the one at t − 2; warm-starting from t − 2 cut the products per step from 9.7 to 5.8 at the same accuracy.
    """
    return vectors[step % 2]


def _skipped(v0):
    nan = jnp.array(jnp.nan, v0.dtype)
    return curvature.EigResult(nan, v0, jnp.array(0, jnp.int32), nan)


def _when(axis_name: str | None):
    """`when(due, measure, skip)`: `lax.cond`, or under `jax.vmap` over runs named `axis_name` a cond on whether any
    run is due that selects per run inside (a per-run predicate would become a select that measures every step)."""
    def when(due, measure, skip):
        if axis_name is None:
            return lax.cond(due, measure, skip)
        any_due = lax.psum(due.astype(jnp.int32), axis_name) > 0
        return lax.cond(any_due, lambda: jax.tree.map(lambda a, b: jnp.where(due, a, b), measure(), skip()), skip)
    return when


def _curvature_fn(cfg: LoopConfig, optimizer: Optimizer, v0, pre_v0):
    """`(hessian matvec, opt_state after the update) -> (λᴴ, λ^{P⁻¹H})` eigenpairs, solved in the measurement dtype and
    returned in float32 (metrics, warm starts); λ^{P⁻¹H} is skipped without a preconditioner."""
    solver = dict(method=cfg.sharpness_method, max_iters=cfg.sharpness_max_iters, tol=cfg.sharpness_tol)

    def curvature_of(hessian, opt_state):
        dtype = cfg.sharpness_dtype
        eig, pre_eig = curvature.top_eigenpair(hessian, v0.astype(dtype), **solver), _skipped(pre_v0)
        if optimizer.preconditioner is not None:
            precond = optimizer.preconditioner(opt_state, dtype)
            pre_eig = curvature.top_eigenpair(curvature.preconditioned_operator(hessian, precond),
                                              pre_v0.astype(dtype), **solver)
        return curvature.cast((eig, pre_eig), v0.dtype)

    return curvature_of


def _step_and_curvature(cfg: LoopConfig, optimizer: Optimizer, measure_loss, batch_loss, state: "LoopState", due,
                        when):
    """The step's loss, gradient and update, and (λᴴ, λ^{P⁻¹H}) where `due`: from the step's own linearisation when
    the measurement batch is the training batch, else measured on the measurement batch at θ_t."""
    v0, pre_v0 = _warm_start(state.eigvec, state.step), _warm_start(state.pre_eigvec, state.step)
    curvature_of = _curvature_fn(cfg, optimizer, v0, pre_v0)
    update = lambda grads: optimizer.tx.update(grads, state.opt_state, state.params)
    skipped = lambda: (_skipped(v0), _skipped(pre_v0))

    def plain_step():
        value, grads = jax.value_and_grad(batch_loss, has_aux=True)(state.params)
        return (value, grads, *update(grads))

    if cfg.sharpness_every > 0 and cfg.shares_linearisation:
        def step_with_curvature():
            value, grads, hessian = curvature.value_gradient_and_hessian(batch_loss, state.params, has_aux=True)
            updates, opt_state = update(grads)
            return value, grads, updates, opt_state, curvature_of(hessian, opt_state)

        return when(due, step_with_curvature, lambda: (*plain_step(), skipped()))
    value, grads, updates, opt_state = plain_step()
    if cfg.sharpness_every == 0:
        return value, grads, updates, opt_state, skipped()

    def measure():
        with curvature.precision(cfg.sharpness_dtype):
            params = curvature.cast(state.params, cfg.sharpness_dtype)
            matvec, _ = curvature.flat_operator(measure_loss, params)
            return curvature_of(matvec, opt_state)

    return value, grads, updates, opt_state, when(due, measure, skipped)


def _curvature_metrics(eig, pre_eig, lr, optimizer: Optimizer) -> dict:
    nan = jnp.array(jnp.nan, jnp.float32)
    sharp_thr, pre_thr = optimizer.thresholds(lr)
    iterations = lambda e: jnp.where(jnp.isnan(e.value), jnp.nan, e.iterations.astype(jnp.float32))
    return dict(
        sharpness=eig.value, sharpness_iters=iterations(eig), sharpness_residual=eig.residual,
        sharpness_threshold=sharp_thr,
        pre_sharpness=pre_eig.value if optimizer.preconditioner is not None else nan,
        pre_sharpness_threshold=pre_thr,
        pre_sharpness_iters=iterations(pre_eig), pre_sharpness_residual=pre_eig.residual,
    )


def _advance(state: "LoopState", key, lr, updates, opt_state, eig, pre_eig, live, bad) -> "LoopState":
    """θ_{t+1} = θ_t − η_t·d_t, unless the run is not live or this step's loss was bad (then frozen, step recorded)."""
    apply = live & ~bad
    select = lambda new, old: jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, old)
    new_params = optax.apply_updates(state.params, jax.tree.map(lambda u: -lr * u, updates))
    return LoopState(
        params=select(new_params, state.params),
        opt_state=select(opt_state, state.opt_state),
        key=key,
        step=state.step + apply.astype(state.step.dtype),
        frozen=state.frozen | (live & bad),
        diverged_step=jnp.where(live & bad, state.step, state.diverged_step),
        eigvec=state.eigvec.at[state.step % 2].set(eig.vector),
        pre_eigvec=state.pre_eigvec.at[state.step % 2].set(pre_eig.vector),
    )


def make_chunk_fn(cfg: LoopConfig, apply_fn: Callable, loss_fn: Callable, optimizer: Optimizer, draw: Callable,
                  axis_name: str | None = None):
    """A jitted `chunk(state, sched, arrays, loss_bound, total_steps) -> (state, metrics)` of `cfg.chunk_steps` steps.

    `draw((batch_key, augment_key), arrays) -> (x, y)` is the step's batch (a minibatch, its augmentation, random
    text windows, or the full batch). Steps past `total_steps` or after divergence are no-ops whose metric rows
    carry `valid = False`. `axis_name`: set it when the chunk is `jax.vmap`ped over runs with that axis name
    (`warmup.sweep`): measurements then stay real conds (`_when`).
    """
    when = _when(axis_name)

    def train_step(state: LoopState, sched, arrays: Arrays, loss_bound, total_steps):
        key, batch_key, aug_key = jax.random.split(state.key, 3)
        x, y = draw((batch_key, aug_key), arrays)
        batch_loss = lambda p: mean_loss(apply_fn, loss_fn, p, x, y)
        lr = schedules.learning_rate(state.step, sched)
        live = (~state.frozen) & (state.step < total_steps)
        due = live & (state.step % max(cfg.sharpness_every, 1) == 0)
        (loss, logits), grads, updates, opt_state, (eig, pre_eig) = _step_and_curvature(
            cfg, optimizer, measurement_loss(apply_fn, loss_fn, arrays), batch_loss, state, due, when)
        bad = ~jnp.isfinite(loss) | (loss > loss_bound)
        metrics = _curvature_metrics(eig, pre_eig, lr, optimizer)
        test_loss = test_acc = jnp.array(jnp.nan, jnp.float32)
        if cfg.eval_every > 0:
            test_loss, test_acc = when(
                live & (state.step % cfg.eval_every == 0),
                lambda: evaluate(apply_fn, loss_fn, state.params, arrays.x_test, arrays.y_test, arrays.w_test,
                                 cfg.eval_batch),
                lambda: (jnp.array(jnp.nan, jnp.float32),) * 2)
        metrics.update(
            step=state.step, lr=lr, train_loss=loss, train_acc=jnp.mean(correct(logits, y)),
            grad_norm=optax.tree.norm(grads), test_loss=test_loss, test_acc=test_acc, valid=live,
        )
        return _advance(state, key, lr, updates, opt_state, eig, pre_eig, live, bad), metrics

    @jax.jit
    def chunk(state, sched, arrays, loss_bound, total_steps):
        return lax.scan(lambda s, _: train_step(s, sched, arrays, loss_bound, total_steps), state, None,
                        length=cfg.chunk_steps, unroll=cfg.scan_unroll)

    return chunk


def init_state(params, opt_state, key, eigvec) -> LoopState:
    """A fresh loop state; `eigvec` is the λ₀ᴴ eigenvector (the first warm start)."""
    flat, _ = ravel_pytree(params)
    pre_key, key = jax.random.split(key)
    pre_eigvec = jax.random.normal(pre_key, flat.shape, flat.dtype)
    both_parities = lambda v: jnp.stack([v, v])
    return LoopState(params, opt_state, key, jnp.array(0, jnp.int32), jnp.array(False), jnp.array(-1, jnp.int32),
                     both_parities(eigvec), both_parities(pre_eigvec / jnp.linalg.norm(pre_eigvec)))


def run_chunk(chunk_fn, state: LoopState, sched, arrays: Arrays, *, loss_bound: float,
              total_steps: int) -> tuple[LoopState, dict]:
    """One chunk: the new state and the chunk's valid metric rows (numpy)."""
    state, metrics = chunk_fn(state, sched, arrays, jnp.float32(loss_bound), jnp.int32(total_steps))
    metrics = jax.device_get(metrics)
    valid = metrics.pop("valid")
    return state, {name: np.asarray(values)[valid] for name, values in metrics.items()}


def finished(state: LoopState, total_steps: int) -> bool:
    return bool(state.frozen) or int(state.step) >= total_steps


def run(chunk_fn, state: LoopState, sched, arrays: Arrays, *, loss_bound: float, total_steps: int,
        progress: Callable[[int, dict], None] | None = None) -> Iterator[tuple[LoopState, dict]]:
    """Train chunk by chunk until `total_steps` updates or divergence; yield the state and the chunk's valid metric
    rows (numpy) after each. A state that is already finished yields nothing."""
    while not finished(state, total_steps):
        state, rows = run_chunk(chunk_fn, state, sched, arrays, loss_bound=loss_bound, total_steps=total_steps)
        if progress is not None:
            progress(len(rows["step"]), rows)  # updates done in this chunk, their rows
        yield state, rows
