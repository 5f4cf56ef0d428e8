"""warmup.models.conv: convolutions whose gradients stay canonical (fast) inside compiled loops on CPU, checked
against a convolution written as patches × kernel (no convolution primitive, so none of its transpose rules) in
float64, and by the layouts XLA is handed inside a `lax.scan`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from warmup.models import build_model
from warmup.models.conv import canonical_transposes, conv2d


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def reference_conv(x, kernel, stride):
    """SAME convolution as a sum over the window of shifted inputs times kernel slices: only pads, slices and dots."""
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = lax.padtype_to_pads(x.shape[1:3], (kh, kw), (stride, stride), "SAME")
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    h = (x.shape[1] + top + bottom - kh) // stride + 1
    w = (x.shape[2] + left + right - kw) // stride + 1
    out = 0.0
    for a in range(kh):
        for b in range(kw):
            window = padded[:, a:a + stride * (h - 1) + 1:stride, b:b + stride * (w - 1) + 1:stride, :]
            out = out + jnp.einsum("nhwc,co->nhwo", window, kernel[a, b])
    return out


@pytest.mark.parametrize("shape, kernel_size, stride", [((2, 8, 8, 3), 3, 1), ((2, 8, 8, 3), 3, 2),
                                                        ((2, 7, 7, 2), 3, 2), ((2, 8, 8, 3), 1, 2)])
def test_values_gradients_and_hvps_equal_a_convolution_free_reference(shape, kernel_size, stride):
    assert canonical_transposes()  # CPU: the rules are installed (they are what this test checks)
    kx, kk, kw_, kv = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(kx, shape, jnp.float64)
    kernel = jax.random.normal(kk, (kernel_size, kernel_size, shape[-1], 4), jnp.float64)
    weights = jax.random.normal(kw_, reference_conv(x, kernel, stride).shape, jnp.float64)
    f = lambda conv: lambda xk: jnp.sum(weights * jnp.tanh(conv(*xk, stride)))
    ours, theirs = f(conv2d), f(reference_conv)
    np.testing.assert_allclose(conv2d(x, kernel, stride), reference_conv(x, kernel, stride), rtol=1e-12, atol=1e-12)
    for a, b in zip(jax.grad(ours)((x, kernel)), jax.grad(theirs)((x, kernel))):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    tangent = jax.tree.map(lambda a: jax.random.normal(kv, a.shape, a.dtype), (x, kernel))
    forward_over_reverse = lambda g: jax.jvp(jax.grad(g), ((x, kernel),), (tangent,))[1]
    reverse_over_reverse = lambda g: jax.grad(lambda xk: jnp.vdot(
        jnp.concatenate([t.ravel() for t in jax.grad(g)(xk)]),
        jnp.concatenate([t.ravel() for t in tangent])))((x, kernel))
    for hvp in (forward_over_reverse, reverse_over_reverse):
        for a, b in zip(hvp(ours), hvp(theirs)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name, width, depth", [("cnn", 4, 5), ("wrn", 1, 10)])
def test_a_scanned_training_step_hands_xla_only_canonical_convolutions(name, width, depth):
    """The regression guard of jax-ml/jax#12868: a non-canonical layout inside the loop runs 5–9× slower on CPU."""
    model = build_model(name, param="sp", num_classes=10, width=width, depth=depth)
    x = jnp.ones((4, 12, 12, 1), jnp.float32)
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    loss = lambda p: jnp.mean(model.apply({"params": p}, x) ** 2)
    step = lambda p, _: (jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(loss)(p)), None)
    hvp = lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]
    program = jax.jit(lambda p: (lax.scan(step, p, None, length=2)[0],
                                 lax.fori_loop(0, 2, lambda i, v: hvp(p, v), p)))
    text = program.lower(params).compile().as_text()
    layouts = {line.split("dim_labels=")[1].split(",")[0] for line in text.splitlines() if "dim_labels=" in line}
    assert layouts == {"b01f_01io->b01f"}
