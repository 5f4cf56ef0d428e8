"""2-D convolutions that stay fast inside compiled loops on CPU.

Why: XLA:CPU runs a convolution on its fast (Eigen / YNNPACK) kernels only in the canonical layout NHWC × HWIO →
NHWC (`dim_labels=b01f_01io->b01f`). Its pass that rewrites other layouts into that one visits only the program's
entry computation, not the body of a while loop (every `lax.scan`, `fori_loop`, Lanczos iteration). JAX's
transpose rules give a convolution's gradients other layouts (input gradient `b01f_01oi->b01f` with a reversed
kernel, kernel gradient `f01b_i01o->01bf`), so inside a loop they fell to a naive loop emitter: a CNN step ran
5–8× slower in the training loop than as a plain jitted step, an HVP in a solver 5× slower (jax-ml/jax#12868).

The fix, on CPU:
- `canonical_transposes()` gives `lax.conv_general_dilated` transpose rules that emit canonical convolutions for
  stride-1, undilated, ungrouped NHWC × HWIO convolutions — the input gradient as the convolution of the cotangent
  with the flipped, in/out-swapped kernel; the kernel gradient as a convolution with channels and batch swapped —
  and keep JAX's own rules for every other convolution. Forward mode needs nothing (a JVP is a convolution of the
  same layout), so first derivatives, forward-over-reverse HVPs and reverse-over-reverse all get canonical
  convolutions; the gradients equal JAX's own to float rounding (`tests/test_models.py`).
- `conv2d` computes a strided convolution as the stride-1 convolution with the same padding, subsampled: the same
  numbers, and all convolutions stride 1 (the strided layers cost s² more arithmetic, far less than the naive
  emitter). Elsewhere (GPU, TPU) it is the plain strided convolution and the rules are not installed.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.interpreters import ad

_LAYOUT = ("NHWC", "HWIO", "NHWC")


def _canonical(params) -> bool:
    """A stride-1, undilated, ungrouped 2-D NHWC × HWIO convolution."""
    dn = params["dimension_numbers"]
    return (len(params["window_strides"]) == 2 and tuple(dn.lhs_spec) == (0, 3, 1, 2)
            and tuple(dn.rhs_spec) == (3, 2, 0, 1) and tuple(dn.out_spec) == (0, 3, 1, 2)
            and all(s == 1 for s in (*params["window_strides"], *params["lhs_dilation"], *params["rhs_dilation"]))
            and params["feature_group_count"] == 1 and params["batch_group_count"] == 1)


def _conv(lhs, rhs, padding, params):
    return lax.conv_general_dilated(lhs, rhs, (1, 1), padding, dimension_numbers=_LAYOUT,
                                    precision=params["precision"],
                                    preferred_element_type=params["preferred_element_type"])


def _input_gradient(jax_rule, g, lhs, rhs, **params):
    if not _canonical(params):
        return jax_rule(g, lhs, rhs, **params)
    kh, kw = rhs.shape[:2]
    (top, bottom), (left, right) = params["padding"]
    flipped = jnp.flip(rhs, (0, 1)).transpose(0, 1, 3, 2)
    return _conv(g, flipped, ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)), params)


def _kernel_gradient(jax_rule, g, lhs, rhs, **params):
    if not _canonical(params):
        return jax_rule(g, lhs, rhs, **params)
    swapped = _conv(lhs.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), tuple(params["padding"]), params)
    return swapped.transpose(1, 2, 0, 3)


@functools.cache
def canonical_transposes() -> bool:
    """Install the canonical transpose rules (once per process; CPU only). False where this JAX registers the
    convolution's transpose in another form (then nothing is changed and loops keep the slow path)."""
    if jax.default_backend() != "cpu":
        return False
    rule = ad.primitive_transposes.get(lax.conv_general_dilated_p)
    if not (isinstance(rule, functools.partial) and len(rule.args) == 2):
        return False
    jax_lhs, jax_rhs = rule.args
    ad.defbilinear(lax.conv_general_dilated_p, functools.partial(_input_gradient, jax_lhs),
                   functools.partial(_kernel_gradient, jax_rhs))
    return True


def conv2d(x, kernel, stride: int):
    """SAME convolution of NHWC `x` with an HWIO `kernel` at `stride`; on CPU a stride-1 convolution (with the
    stride's padding) subsampled, so that its gradients stay canonical (module docstring)."""
    if not canonical_transposes() or stride == 1:
        return lax.conv_general_dilated(x, kernel, (stride, stride), "SAME", dimension_numbers=_LAYOUT)
    padding = lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], (stride, stride), "SAME")
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_LAYOUT)[:, ::stride, ::stride]
