"""Curvature of the training loss (paper §2): sharpness λᴴ = λ_max(H) and Adam's preconditioned sharpness
λ^{P⁻¹H} = λ_max(P⁻¹H), with the instability thresholds they are compared against.

Everything works on the Hessian as a matrix-free operator on the raveled parameters (one Hessian-vector product
per matvec, forward-over-reverse) and is jit-able, so the training loop can measure curvature inside its
compiled `lax.scan` every k steps (`lax.cond`), warm-started from an earlier eigenvector with a bounded number
of matvecs (and, when it measures on its own batch, with its update taken from the same linearisation). Every
solver reports the matvecs it used and the relative residual ‖Av − λv‖/|λ| of its answer; for a symmetric
operator some eigenvalue lies within ‖Av − λv‖ of λ, so `residual` bounds the relative error of `value`
(usually far more tightly: the error is ~residual²·|λ|/gap).

Warm starts rely on the Hessian changing little between measurements: a Krylov solver only sees what v0's Krylov
space contains, so a v0 that is (nearly) an eigenvector of a non-top eigenvalue can stop there; the tighter `tol`,
the less likely (tol 1e-2 did so on a momentum trajectory where 1e-3 did not: `benchmarks/sharpness_cost.py`).
A zero v0 means a cold start from a fixed random direction.

Precision: measurements run in the parameters' dtype (float32 in training) unless traced inside
`precision("float64")` on `cast` parameters, as the loop and λ₀ᴴ do for `sharpness.dtype=float64`: float32
arithmetic stalls the true relative residual near 1e-7·‖H‖/λ (Lanczos's estimate |β s| keeps falling below it, so a
float32 `residual` under ~1e-7 is not to be trusted); tighter answers need float64 (~2.2× the cost per product on CPU).

The three solvers share one interface, `top_eigenpair(matvec, v0, method=…)`:
    lanczos  Krylov with full reorthogonalisation; the default, fewest matvecs for a given accuracy.
    power    power iteration; converges to the eigenvalue of largest |λ| (see `_power`).
    lobpcg   `jax.experimental.sparse.linalg.lobpcg_standard` with k = 1, the authors' solver.
"""

import contextlib
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.sparse.linalg import lobpcg_standard
from jax.flatten_util import ravel_pytree

METHODS = ("lanczos", "power", "lobpcg")
DTYPES = ("float32", "float64")
MOMENTS = ("next", "previous")
_ADAM_FAMILY = ("adam", "gi_adam", "ri_adam", "radam")
_MOMENTUM_FAMILY = ("sgd",)


class EigResult(NamedTuple):
    value: jax.Array  # the top eigenvalue estimate (Rayleigh quotient of `vector`)
    vector: jax.Array  # flat, unit norm; pass it back as the next `v0` to warm-start
    iterations: jax.Array  # int32: operator applications (matvecs) used
    residual: jax.Array  # ‖Av − λv‖/|λ|


def precision(dtype: str):
    """The context to trace a measurement in. "float64" turns on jax's 64-bit mode only for what is traced inside it
    (`jax.enable_x64`), so a float32 training program can measure in double precision: cast the parameters (and the
    warm start) with `cast` inside it, and the results back before leaving it."""
    if dtype not in DTYPES:
        raise ValueError(f"sharpness.dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def cast(tree, dtype):
    """The floating-point leaves of `tree` as `dtype` (integer leaves, e.g. iteration counts, unchanged)."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def hvp(loss_fn: Callable, params, tangent):
    """Hessian-vector product H·tangent of `loss_fn` at `params` (pytrees), forward-over-reverse."""
    return jax.jvp(jax.grad(loss_fn), (params,), (tangent,))[1]


def value_gradient_and_hessian(loss_fn: Callable, params, *, has_aux: bool = False):
    """(value, gradient pytree, Hessian matvec on raveled parameters) of `loss_fn` at `params`, from one
    linearisation of `jax.value_and_grad` (`value` is what it returns: the loss, or (loss, aux) with `has_aux`).

    The gradient is the primal output, so a training step that measures λᴴ on its own batch gets its update for
    free. Each matvec replays only the tangent half of forward-over-reverse: about half the cost of a fresh `hvp`
    per product (measured 15 vs 34 ms, FCN-4-256, 1000 examples, CPU), which matters because a tracker applies it
    several times per measurement.
    """
    flat, unravel = ravel_pytree(params)

    def flat_gradient(f):
        value, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(unravel(f))
        return ravel_pytree(grads)[0], value

    (grads, value), tangent = jax.linearize(flat_gradient, flat)
    return value, unravel(grads), lambda v: tangent(v)[0]


def flat_operator(loss_fn: Callable, params) -> tuple[Callable[[jax.Array], jax.Array], int]:
    """The Hessian of `loss_fn` at `params` as a matvec on raveled (flat) parameters, and its dimension."""
    return value_gradient_and_hessian(loss_fn, params)[2], ravel_pytree(params)[0].size


def _start_vector(v0: jax.Array) -> jax.Array:
    """v0 normalised; a zero or non-finite v0 (no previous eigenvector yet, or a diverged run) is replaced by
    a fixed random direction, so a cold start never divides by zero. (Drawn in float32 from the raw key, for every
    dtype: a float64 draw, or seeding a key, traced inside `precision("float64")` within a float32 program does not
    lower cleanly.)"""
    norm = jnp.linalg.norm(v0)
    fallback = jax.random.normal(jnp.zeros(2, jnp.uint32), v0.shape, jnp.float32).astype(v0.dtype)  # PRNGKey(0)
    usable = jnp.isfinite(norm) & (norm > 0)
    return jnp.where(usable, v0 / jnp.where(usable, norm, 1), fallback / jnp.linalg.norm(fallback))


def _relative(numerator, value):
    """numerator/|value| that reads 0 (not NaN) for 0/0, e.g. a vector in the null space of A."""
    return numerator / jnp.maximum(jnp.abs(value), jnp.finfo(jnp.result_type(value)).tiny)


def _rayleigh(v, av):
    """Rayleigh quotient of unit v and its relative residual, given av = A v."""
    value = v @ av
    return value, _relative(jnp.linalg.norm(av - value * v), value)


def _top_ritz_pair_dense(alphas, betas, last):
    """Top eigenpair of the tridiagonal T whose active part is the first `last` + 1 entries of `alphas` (diagonal)
    and `betas` (off-diagonal). Inactive diagonal entries are set below every active α (hence below
    λ_max(T) ≥ max α), so the padding never wins and the eigenvector is zero there."""
    active = jnp.arange(alphas.shape[0]) <= last
    pad = jnp.min(jnp.where(active, alphas, jnp.inf)) - jnp.max(jnp.abs(jnp.where(active, alphas, 0))) - 1
    off_diagonal = jnp.where(active[1:], betas[:-1], 0)
    tridiagonal = jnp.diag(jnp.where(active, alphas, pad)) + jnp.diag(off_diagonal, 1) + jnp.diag(off_diagonal, -1)
    values, vectors = jnp.linalg.eigh(tridiagonal)
    return values[-1], jnp.where(active, vectors[:, -1], 0)


def _on_leading_block(size: int, last, branch):
    """`branch(b)()` for the smallest leading block b ∈ {4, 8, 16, …, size} that holds entries 0…`last`.

    Lanczos keeps its basis and tridiagonal zero-padded to `max_iters`; working on the whole buffer at every
    iteration would make a solve that stops after a few products pay for all of it (dense eigh is O(size³), ~1 s
    for 375 on CPU; reorthogonalising against 20 padded vectors of 59k parameters costs about as much as an HVP)."""
    blocks = sorted({min(size, 2**k) for k in range(2, max(2, size.bit_length()) + 1)})
    return lax.switch(jnp.sum(jnp.array(blocks) <= last), [branch(b) for b in blocks])


def _top_ritz_pair(alphas, betas, last):
    """`_top_ritz_pair_dense` on the leading block that holds the active part."""
    def in_block(block):
        def top():
            value, vector = _top_ritz_pair_dense(alphas[:block], betas[:block], last)
            return value, jnp.zeros_like(alphas).at[:block].set(vector)
        return top

    return _on_leading_block(alphas.shape[0], last, in_block)


def _orthogonalise(w, basis, last):
    """w minus its projection on the basis rows 0…`last` (the rest are zero): classical Gram-Schmidt twice, which
    is orthogonal to working precision."""
    def in_block(block):
        def project_out():
            rows, u = basis[:block], w
            for _ in range(2):
                u = u - rows.T @ (rows @ u)
            return u
        return project_out

    return _on_leading_block(basis.shape[0], last, in_block)


class _LanczosState(NamedTuple):
    step: jax.Array  # matvecs done
    basis: jax.Array  # (max_iters, n) orthonormal Lanczos vectors, zero rows not yet filled
    alphas: jax.Array
    betas: jax.Array
    value: jax.Array
    ritz: jax.Array  # top eigenvector of T in the Lanczos basis
    residual: jax.Array
    done: jax.Array


def _lanczos(matvec, v0, max_iters, tol) -> EigResult:
    """Lanczos with full reorthogonalisation against the whole (zero-padded) basis, stopping as soon as the
    top Ritz pair's residual ‖Av − θv‖/|θ| = |β_j s_j|/|θ| (exact in exact arithmetic, no extra matvec) is
    below `tol`, or on breakdown (β ≈ 0: the Krylov space is invariant, e.g. v0 is an eigenvector, and the
    Ritz pairs are exact). Memory: max_iters vectors of the parameter size."""
    v0 = _start_vector(v0)
    dtype = v0.dtype
    zeros = jnp.zeros(max_iters, dtype)
    init = _LanczosState(step=jnp.array(0, jnp.int32), basis=jnp.zeros((max_iters, v0.size), dtype).at[0].set(v0),
                         alphas=zeros, betas=zeros, value=jnp.array(0, dtype), ritz=zeros,
                         residual=jnp.array(jnp.inf, dtype), done=jnp.array(False))

    def body(s: _LanczosState) -> _LanczosState:
        v = s.basis[s.step]
        w = matvec(v)
        alpha = v @ w
        w = _orthogonalise(w, s.basis, s.step)
        beta = jnp.linalg.norm(w)
        alphas, betas = s.alphas.at[s.step].set(alpha), s.betas.at[s.step].set(beta)
        value, ritz = _top_ritz_pair(alphas, betas, s.step)
        residual = _relative(jnp.abs(beta * ritz[s.step]), value)
        breakdown = beta <= jnp.finfo(dtype).eps * (jnp.max(jnp.abs(alphas)) + jnp.max(betas))
        basis = s.basis.at[s.step + 1].set(jnp.where(breakdown, 0, w / jnp.where(breakdown, 1, beta)),
                                           mode="drop")
        done = breakdown | (residual < tol) | ~jnp.isfinite(residual)  # non-finite: a diverged run, give up
        return _LanczosState(s.step + 1, basis, alphas, betas, value, ritz, residual, done)

    s = lax.while_loop(lambda s: ~s.done & (s.step < max_iters), body, init)
    vector = s.basis.T @ s.ritz
    return EigResult(s.value, vector / jnp.linalg.norm(vector), s.step, s.residual)


class _PowerState(NamedTuple):
    step: jax.Array
    vector: jax.Array  # the last vector whose Rayleigh quotient was measured
    next: jax.Array  # A·vector, normalised: the vector to measure next
    value: jax.Array
    residual: jax.Array


def _power(matvec, v0, max_iters, tol) -> EigResult:
    """Power iteration, stopping when the Rayleigh quotient's relative residual is below `tol`.

    It converges to the eigenvalue of largest magnitude: λ_max(H) only while |λ_min(H)| < λ_max(H), which is
    common but not guaranteed (small LayerNorm nets break it at initialisation; Lanczos has no such caveat).
    The returned value is the Rayleigh quotient of the returned vector, so it is never above the true λ_max.
    """
    v0 = _start_vector(v0)
    init = _PowerState(jnp.array(0, jnp.int32), v0, v0, jnp.array(0, v0.dtype), jnp.array(jnp.inf, v0.dtype))

    def body(s: _PowerState) -> _PowerState:
        av = matvec(s.next)
        value, residual = _rayleigh(s.next, av)
        norm = jnp.linalg.norm(av)
        following = jnp.where(norm > 0, av / jnp.where(norm > 0, norm, 1), s.next)
        return _PowerState(s.step + 1, s.next, following, value, residual)

    s = lax.while_loop(lambda s: (s.residual >= tol) & (s.step < max_iters), body, init)
    return EigResult(s.value, s.vector, s.step, s.residual)


def _lobpcg(matvec, v0, max_iters, tol) -> EigResult:
    """`lobpcg_standard` with one vector, then one more matvec for the Rayleigh quotient and residual.

    lobpcg_standard stops when ‖r‖ < tol'·10·n·(‖Av‖ + θ); tol' = tol/(20n) makes that ‖r‖ ≲ tol·θ, our
    relative residual. Each LOBPCG iteration applies A to [X, P, R] and to the new X: 4 matvecs, plus 1 before the
    first iteration and our 1 after the last.
    """
    block_matvec = jax.vmap(matvec, in_axes=1, out_axes=1)
    _, vectors, iterations = lobpcg_standard(block_matvec, _start_vector(v0)[:, None], m=max_iters,
                                             tol=tol / (20 * v0.size))
    vector = vectors[:, 0] / jnp.linalg.norm(vectors[:, 0])
    value, residual = _rayleigh(vector, matvec(vector))
    return EigResult(value, vector, jnp.asarray(4 * iterations + 2, jnp.int32), residual)


_SOLVERS = {"lanczos": _lanczos, "power": _power, "lobpcg": _lobpcg}


def top_eigenpair(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, *, method: str = "lanczos",
                  max_iters: int = 20, tol: float = 1e-3) -> EigResult:
    """Top eigenpair of the symmetric operator `matvec`, warm-started from `v0` (e.g. the previous eigenvector;
    zeros for a cold start).

    Stops when ‖Av − λv‖/|λ| < `tol` or after `max_iters` solver iterations (static; for lanczos and power one
    iteration is one matvec, for lobpcg four). `iterations` in the result always counts matvecs.
    """
    if method not in METHODS:
        raise ValueError(f"sharpness.method={method!r}: must be one of {', '.join(METHODS)}")
    if max_iters < 1:
        raise ValueError(f"sharpness.max_iters={max_iters}: must be >= 1")
    return _SOLVERS[method](matvec, v0, max_iters, tol)


def sharpness(loss_fn: Callable, params, v0: jax.Array, **solver) -> EigResult:
    """λᴴ = λ_max(∇²loss_fn(params)); `solver` is passed to `top_eigenpair`."""
    matvec, _ = flat_operator(loss_fn, params)
    return top_eigenpair(matvec, v0, **solver)


def adam_preconditioner(count, nu, *, b1: float, b2: float, eps: float, moment: str = "next",
                        include_b1_factor: bool = True):
    """Adam's preconditioner P (a pytree like `nu`, the diagonal of P), paper §2:

        P_t = (1 − β₁^{t+1})·diag(√v̂_{t+1} + ε),   v̂_{t+1} = v_{t+1}/(1 − β₂^{t+1}),

    the denominator of the update about to be applied at step t, rescaled by the momentum's bias correction so
    that Adam reads as preconditioned EMA heavy-ball, θ ← θ − η P⁻¹ m_{t+1}, whose stability threshold is
    λ_max(P⁻¹H) = (2 + 2β₁)/((1 − β₁)η) (Cohen et al. 2022, "Adaptive gradient methods at the edge of
    stability", followed by Kalra & Barkeshli 2024).

    moment="next" (the paper's definition): pass the optimiser state AFTER the update of step t, i.e.
        `count` = t + 1 and `nu` = v_{t+1} (`state.count`, `state.nu` of an optax.ScaleByAdamState).
    moment="previous": a variant built from v_t, for callers holding the state BEFORE the update of step t
        (`count` = t, `nu` = v_t); v̂_t = v_t/(1 − β₂^t), and at t = 0 (no bias correction defined) v̂_0 = v_0.
        It misses the current gradient, which matters early, when v changes fastest; for comparisons only.
    include_b1_factor=False drops (1 − β₁^{t+1}): P = diag(√v̂ + ε), the plain "preconditioned Hessian" of the
        Adam update with bias-corrected momentum m̂. It differs only while β₁^{t+1} is not negligible (10× at
        t = 0 for β₁ = 0.9), which is exactly the early phase warmup is about; keep the default to match the
        38/η threshold.
    """
    if moment not in MOMENTS:
        raise ValueError(f"moment={moment!r}: must be one of {', '.join(MOMENTS)}")
    count = jnp.asarray(count)
    updates = count if moment == "next" else count + 1  # t + 1 for the step t whose update P describes

    def diagonal(v):
        v_hat = v / jnp.where(count > 0, 1 - b2 ** count.astype(v.dtype), 1)
        b1_factor = 1 - b1 ** updates.astype(v.dtype) if include_b1_factor else 1
        return b1_factor * (jnp.sqrt(v_hat) + eps)

    return jax.tree.map(diagonal, nu)


def preconditioned_operator(matvec: Callable[[jax.Array], jax.Array], precond) -> Callable[[jax.Array], jax.Array]:
    """P^{-1/2} H P^{-1/2} as a flat matvec, given H's flat `matvec` and a diagonal preconditioner `precond` (pytree
    like the parameters, e.g. from `adam_preconditioner`): symmetric and similar to P⁻¹H (same eigenvalues)."""
    scale = jax.lax.rsqrt(ravel_pytree(precond)[0])
    return lambda u: scale * matvec(scale * u)


def preconditioned_sharpness(loss_fn: Callable, params, precond, v0: jax.Array, **solver) -> EigResult:
    """λ^{P⁻¹H} = λ_max(P⁻¹H) for a diagonal preconditioner `precond` (pytree like `params`, e.g. from
    `adam_preconditioner`).

    P⁻¹H is not symmetric, so it is solved as the similar symmetric operator P^{-1/2} H P^{-1/2} (same
    eigenvalues). `vector` (and the warm start `v0`) live in those coordinates: u = P^{1/2}·(eigenvector of P⁻¹H).
    With per-layer learning-rate multipliers c (full μP, θ ← θ − η·c·m̂/(√v̂ + ε)) the update's preconditioner is
    P/c: pass that.
    """
    return top_eigenpair(preconditioned_operator(flat_operator(loss_fn, params)[0], precond), v0, **solver)


def thresholds(lr, *, optimizer: str, momentum: float = 0.0, b1: float = 0.9) -> tuple[jax.Array, jax.Array]:
    """(sharpness threshold, preconditioned-sharpness threshold) at learning rate `lr`, paper §2; NaN where
    the quantity has none.

    sgd: λᴴ < (2 + 2β)/η for heavy-ball momentum β (2/η for GD). With momentum this is the asymptotic value:
        at initialisation (m₀ = 0) the first steps are GD-like with threshold 2/η, rising to (2 + 2β)/η; we
        log the asymptotic one, as the paper's momentum figures do.
    adam family: λ^{P⁻¹H} < (2 + 2β₁)/((1 − β₁)η) = 38/η for β₁ = 0.9, and λᴴ is drawn against (2 + 2β₁)/η
        (= 3.8/η, as in paper Fig. 2): the heavy-ball threshold for β = β₁, a reference line rather than a
        stability bound (Adam's bound is on λ^{P⁻¹H}). For radam both are Adam's, ignoring the rectification.
    """
    lr = jnp.asarray(lr)
    nan = jnp.full_like(lr, jnp.nan, dtype=jnp.result_type(lr, jnp.float32))
    if optimizer in _MOMENTUM_FAMILY:
        return (2 + 2 * momentum) / lr, nan
    if optimizer in _ADAM_FAMILY:
        return (2 + 2 * b1) / lr, (2 + 2 * b1) / ((1 - b1) * lr)
    raise ValueError(f"optimizer={optimizer!r}: must be one of {', '.join(_MOMENTUM_FAMILY + _ADAM_FAMILY)}")
