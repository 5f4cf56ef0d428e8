"""warmup.curvature against exact float64 references: dense Hessians of tiny networks (jax.hessian on the raveled
parameters) and their eigenvalues from eigvalsh."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.flatten_util import ravel_pytree

from warmup import curvature, losses
from warmup.models import build_model
from warmup.optim import adam_moments, build_optimizer

B1, B2, EPS = 0.9, 0.999, 1e-8


@pytest.fixture(autouse=True)
def x64():
    """float64 for this module's tests only (the flag is restored afterwards)."""
    with jax.enable_x64(True):
        yield


class ResidualLayerNormNet(nn.Module):
    """A WRN block in miniature (conv → LN → ReLU → conv → LN, identity shortcut); the project's WRN is too big
    for a dense Hessian even at width 1 (its stem alone has 16 channels)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.LayerNorm()(nn.Conv(4, (3, 3))(x)))
        y = nn.relu(nn.LayerNorm()(nn.Conv(4, (3, 3))(x)))
        y = nn.LayerNorm()(nn.Conv(4, (3, 3))(y))
        return nn.Dense(3)(nn.relu(y + x).mean(axis=(1, 2)))


NETS = {  # name: (model, input shape, loss); top eigenvalues well separated (see test_problem_is_well_posed)
    "fcn_mse": (lambda: build_model("fcn", param="sp", num_classes=3, width=4, depth=3), (8, 4, 4, 1), "mse"),
    "cnn_xent": (lambda: build_model("cnn", param="mup", num_classes=3, width=2, depth=4), (8, 8, 8, 1), "xent"),
    "resnet_ln_xent": (ResidualLayerNormNet, (8, 4, 4, 1), "xent"),
}


@functools.cache
def problem(name):
    """(loss_fn, params in float64) for one tiny network on random data, one-hot targets; batch-mean loss."""
    make_model, shape, loss = NETS[name]
    model = make_model()
    with jax.threefry_partitionable(True):  # the draws checked by test_problem_is_well_posed, whatever conftest sets
        kx, ky, kp = jax.random.split(jax.random.PRNGKey(0), 3)
        x = jax.random.normal(kx, shape, jnp.float64)
        y = jax.nn.one_hot(jax.random.randint(ky, (shape[0],), 0, 3), 3, dtype=jnp.float64)
        params = jax.tree.map(lambda p: p.astype(jnp.float64), jax.jit(model.init)(kp, x)["params"])
    per_example = losses.get(loss)
    return (lambda p: jnp.mean(per_example(model.apply({"params": p}, x), y))), params


@functools.cache
def dense_hessian(name):
    """The exact reference, as a float64 numpy array."""
    loss_fn, params = problem(name)
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda v: loss_fn(unravel(v))))(flat))


@pytest.mark.parametrize("name", NETS)
def test_problem_is_well_posed(name):
    eigenvalues = np.linalg.eigvalsh(dense_hessian(name))
    assert eigenvalues[-1] > 0 and eigenvalues[-2] < 0.8 * eigenvalues[-1]
    assert -eigenvalues[0] < 0.8 * eigenvalues[-1]


@pytest.mark.parametrize("name", NETS)
def test_hvp_matches_dense_hessian(name):
    loss_fn, params = problem(name)
    flat, unravel = ravel_pytree(params)
    tangents = jax.random.normal(jax.random.PRNGKey(1), (3, flat.size), jnp.float64)
    matvec, dim = curvature.flat_operator(loss_fn, params)
    assert dim == flat.size
    both = jax.jit(lambda t: (ravel_pytree(curvature.hvp(loss_fn, params, unravel(t)))[0], matvec(t)))
    for t in tangents:
        expected = dense_hessian(name) @ np.asarray(t)
        for product in both(t):
            np.testing.assert_allclose(product, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["fcn_mse", "cnn_xent"])
def test_value_gradient_and_hessian_is_value_and_grad_plus_the_hessian(name):
    loss_fn, params = problem(name)
    flat = ravel_pytree(params)[0]
    tangent = jax.random.normal(jax.random.PRNGKey(2), flat.shape, jnp.float64)
    value, grads, product = jax.jit(lambda p, t: (lambda v, g, matvec: (v, g, matvec(t)))(
        *curvature.value_gradient_and_hessian(loss_fn, p)))(params, tangent)
    expected_value, expected_grads = jax.value_and_grad(loss_fn)(params)
    assert float(value) == pytest.approx(float(expected_value), rel=1e-12)
    np.testing.assert_allclose(ravel_pytree(grads)[0], ravel_pytree(expected_grads)[0], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(product, dense_hessian(name) @ np.asarray(tangent), rtol=1e-10, atol=1e-12)
    with_aux = lambda p: (loss_fn(p), 2 * loss_fn(p))  # has_aux, as jax.value_and_grad
    (loss, aux), _, _ = curvature.value_gradient_and_hessian(with_aux, params, has_aux=True)
    assert float(aux) == pytest.approx(2 * float(expected_value), rel=1e-12)


def solve(loss_fn, params, v0, **solver):
    return jax.jit(lambda v: curvature.sharpness(loss_fn, params, v, **solver))(v0)


def assert_exact_eigenpair(result, hessian, expected_value):
    vector = np.asarray(result.vector)
    assert abs(result.value - expected_value) <= 1e-6 * abs(expected_value)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-12)
    true_residual = np.linalg.norm(hessian @ vector - result.value * vector) / abs(result.value)
    assert result.residual <= 1e-8
    assert true_residual == pytest.approx(float(result.residual), rel=1e-3, abs=1e-11)


CONVERGENCE_CASES = [("lanczos", name) for name in NETS] + [  # the default solver on every net, the others
    ("power", "resnet_ln_xent"), ("lobpcg", "fcn_mse")]  # on one (lobpcg compiles slowly; see also below)


@pytest.mark.parametrize("method,name", CONVERGENCE_CASES)
def test_converged_top_eigenvalue(method, name):
    loss_fn, params = problem(name)
    hessian = dense_hessian(name)
    dim = hessian.shape[0]
    result = solve(loss_fn, params, jnp.zeros(dim), method=method, max_iters=dim, tol=1e-10)
    assert_exact_eigenpair(result, hessian, np.linalg.eigvalsh(hessian)[-1])
    assert 0 < result.iterations <= (4 * dim + 2 if method == "lobpcg" else dim)


def test_power_finds_largest_magnitude_lanczos_the_algebraic_top():
    dim = 40
    eigenvalues = np.concatenate([[-1.2], np.linspace(-0.5, 0.5, dim - 2), [1.0]])
    basis, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, dim)))
    matrix = (basis * eigenvalues) @ basis.T
    v0 = jnp.zeros(dim)

    def solve_matrix(method):
        return jax.jit(lambda v: curvature.top_eigenpair(lambda u: jnp.asarray(matrix) @ u, v, method=method,
                                                         max_iters=500, tol=1e-10))(v0)

    assert_exact_eigenpair(solve_matrix("lanczos"), matrix, 1.0)
    assert_exact_eigenpair(solve_matrix("power"), matrix, -1.2)


def test_adam_preconditioner_matches_the_optimiser_state():
    """The contract with warmup.optim: after the first update (t = 0), P₀ = (1 − β₁)(√v̂₁ + ε) with v̂₁ = g₀² for
    Adam (v₀ = 0) and v̂₁ = g₀²/(1 − β₂) for GI-Adam (v₀ = g₀²), i.e. GI-Adam's P is ~1/√(1 − β₂) larger."""
    loss_fn, params = problem("fcn_mse")
    g0 = jax.jit(jax.grad(loss_fn))(params)
    magnitude = jax.tree.map(jnp.abs, g0)
    for name, v_hat in [("adam", magnitude), ("gi_adam", jax.tree.map(lambda a: a / np.sqrt(1 - B2), magnitude))]:
        optimizer = build_optimizer(name, b1=B1, b2=B2, eps=EPS)
        _, state = jax.jit(optimizer.update)(g0, optimizer.init(params), params)
        moments = adam_moments(state)
        precond = curvature.adam_preconditioner(moments.count, moments.nu, b1=B1, b2=B2, eps=EPS)
        expected = jax.tree.map(lambda a: (1 - B1) * (a + EPS), v_hat)
        jax.tree.map(lambda p, e: np.testing.assert_allclose(p, e, rtol=1e-6), precond, expected)


def test_adam_preconditioner_variants():
    nu = {"w": jnp.array([4.0, 0.0])}
    count = jnp.array(3)
    sqrt_vhat = np.sqrt(np.array([4.0, 0.0]) / (1 - B2**3))  # v bias-corrected with the count in every variant
    variants = {
        ("next", True): (1 - B1**3) * (sqrt_vhat + EPS),  # state after the update of step t = 2
        ("next", False): sqrt_vhat + EPS,
        ("previous", True): (1 - B1**4) * (sqrt_vhat + EPS),  # state before the update of step t = 3
    }
    for (moment, b1_factor), expected in variants.items():
        precond = jax.jit(functools.partial(curvature.adam_preconditioner, b1=B1, b2=B2, eps=EPS, moment=moment,
                                            include_b1_factor=b1_factor))(count, nu)
        np.testing.assert_allclose(precond["w"], expected, rtol=1e-12)
    before_any_update = curvature.adam_preconditioner(0, nu, b1=B1, b2=B2, eps=EPS, moment="previous")
    np.testing.assert_allclose(before_any_update["w"], (1 - B1) * (np.array([2.0, 0.0]) + EPS), rtol=1e-12)
    with pytest.raises(ValueError, match="moment"):
        curvature.adam_preconditioner(count, nu, b1=B1, b2=B2, eps=EPS, moment="current")


@pytest.mark.parametrize("method", curvature.METHODS)
def test_preconditioned_sharpness_matches_dense(method):
    """λ_max(P⁻¹H) for the state after the first update from v₀ = 0 (Adam) or v₀ = g₀² (GI-Adam), by hand."""
    loss_fn, params = problem("fcn_mse")
    hessian = dense_hessian("fcn_mse")
    dim = hessian.shape[0]
    g0_squared = jax.tree.map(jnp.square, jax.jit(jax.grad(loss_fn))(params))
    solve_preconditioned = jax.jit(lambda precond: curvature.preconditioned_sharpness(
        loss_fn, params, precond, jnp.zeros(dim), method=method, max_iters=dim, tol=1e-10))
    for v0 in (0, 1):
        nu = jax.tree.map(lambda g2: B2 * v0 * g2 + (1 - B2) * g2, g0_squared)
        precond = curvature.adam_preconditioner(1, nu, b1=B1, b2=B2, eps=EPS)
        scale = 1 / np.sqrt(np.asarray(ravel_pytree(precond)[0]))
        symmetric = scale[:, None] * hessian * scale[None, :]
        expected = np.linalg.eigvalsh(symmetric)[-1]
        non_symmetric = np.linalg.eigvals(hessian * (scale**2)[:, None])  # P⁻¹H itself: the same spectrum
        assert np.max(non_symmetric.real) == pytest.approx(expected, rel=1e-8)
        assert_exact_eigenpair(solve_preconditioned(precond), symmetric, expected)


def test_warm_started_tracking_along_gd():
    """20 GD steps near the edge of stability, measuring inside lax.scan: a warm-started Lanczos with the in-loop
    budget stays within 1% of a cold, tightly converged solve at every step, with far fewer matvecs."""
    loss_fn, params = problem("fcn_mse")
    dim = ravel_pytree(params)[0].size
    lr = 1.8 / np.linalg.eigvalsh(dense_hessian("fcn_mse"))[-1]

    def step(carry, _):
        params, vector = carry
        warm = curvature.sharpness(loss_fn, params, vector, method="lanczos", max_iters=20, tol=1e-3)
        cold = curvature.sharpness(loss_fn, params, jnp.zeros(dim), method="lanczos", max_iters=dim, tol=1e-10)
        params = jax.tree.map(lambda p, g: p - lr * g, params, jax.grad(loss_fn)(params))
        return (params, warm.vector), (warm.value, warm.iterations, cold.value, cold.iterations)

    _, (warm, warm_matvecs, cold, cold_matvecs) = jax.jit(
        lambda p: lax.scan(step, (p, jnp.zeros(dim)), length=20))(params)
    np.testing.assert_array_less(np.abs(warm - cold), 1e-2 * np.abs(cold))
    assert np.ptp(cold) > 0.05 * cold[0]  # the sharpness actually moves along the trajectory
    assert warm_matvecs[1:].sum() < 0.4 * cold_matvecs[1:].sum()
    assert warm_matvecs[1:].max() <= 8


@pytest.mark.parametrize("method", curvature.METHODS)
def test_degenerate_start_vectors(method):
    """Zero / non-finite v0 fall back to a fixed random start; an exact eigenvector v0 (Lanczos breakdown)
    returns that eigenpair at once. Also usable under lax.cond, as in the training loop."""
    loss_fn, params = problem("fcn_mse")
    hessian = dense_hessian("fcn_mse")
    dim = hessian.shape[0]
    eigenvalues, eigenvectors = np.linalg.eigh(hessian)

    @jax.jit
    def measure(v0, do):
        def run(v):
            return curvature.sharpness(loss_fn, params, v, method=method, max_iters=dim, tol=1e-10)
        skipped = curvature.EigResult(jnp.nan, jnp.zeros(dim), jnp.array(0, jnp.int32), jnp.nan)
        return lax.cond(do, run, lambda v: skipped, v0)

    for v0 in [jnp.zeros(dim), jnp.full(dim, jnp.nan)]:
        assert_exact_eigenpair(measure(v0, True), hessian, eigenvalues[-1])
    top = measure(jnp.asarray(eigenvectors[:, -1]), True)
    assert top.value == pytest.approx(eigenvalues[-1], rel=1e-12)
    assert top.iterations <= (6 if method == "lobpcg" else 1)
    assert np.isnan(measure(jnp.zeros(dim), False).value)


def test_top_eigenpair_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        curvature.top_eigenpair(lambda v: v, jnp.ones(8), method="arnoldi")
    with pytest.raises(ValueError, match="max_iters"):
        curvature.top_eigenpair(lambda v: v, jnp.ones(8), max_iters=0)


def test_thresholds():
    lr = 0.01
    sgd = jax.jit(functools.partial(curvature.thresholds, optimizer="sgd"))(lr)
    assert sgd[0] == pytest.approx(200) and np.isnan(sgd[1])
    momentum = curvature.thresholds(lr, optimizer="sgd", momentum=0.9)
    assert momentum[0] == pytest.approx(380) and np.isnan(momentum[1])
    for name in ("adam", "gi_adam", "ri_adam", "radam"):
        sharp, pre = curvature.thresholds(lr, optimizer=name, b1=0.9)
        assert sharp == pytest.approx(380) and pre == pytest.approx(3800)
    with pytest.raises(ValueError, match="optimizer"):
        curvature.thresholds(lr, optimizer="lion")
