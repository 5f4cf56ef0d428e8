"""Standard (SP) and maximal-update (μP) parameterisations, paper §3.

Every weight layer is a `Dense` or `Conv` from this module; both compute `multiplier · (x ⊛ W) + b`,
with the kernel initialiser and the forward multiplier set by the parameterisation and the layer's kind.
A layer's kind comes from its module name alone: "input", "stem" or "embed" is the input layer, "readout"
the readout, any other name a hidden layer; LayerNorm parameters are kind "norm". `layer_kinds` and
`adam_lr_multipliers` read the same names back from a parameter tree.

    kind     σ_w²   SP: Var(W), multiplier    μP: Var(W), multiplier
    input    2      σ_w²/fan_in,  1           σ_w²/fan_out, √(fan_out/fan_in)
    hidden   2      σ_w²/fan_in,  1           σ_w²/fan_out, √(fan_out/fan_in)
    readout  1      σ_w²/fan_in,  1           σ_w²/fan_in,  1/√fan_in

Kernels are (*window, C_in, C_out), so fan_in = k²·C_in and fan_out = k²·C_out for a k×k convolution.
A token embedding (`Embed`, a language model's input layer) is the input layer applied to one-hot tokens: its
kernel is (vocabulary, n), but a one-hot input has a single non-zero entry, so its forward pass and initialisation
use fan_in = 1, and σ_w² = 1 (no ReLU follows): SP W ~ N(0, 1); μP W ~ N(0, 1/n) with multiplier √n. Other readings
give far smaller SP embeddings (fan_in = vocabulary: 2/V; flax's `nn.Embed`: 1/n); `Embed(variance=…)` sets one.
Kernels are truncated normal (at ±2 std) with exactly the variance above; biases start at zero and are
added after the multiplier. Full μP with Adam also scales each kernel's learning rate (`adam_lr_multiplier`):
input 1/√fan_out, hidden 1/√(fan_in·fan_out), readout 1/√fan_in.
"""

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from warmup.models.conv import conv2d

PARAMETERIZATIONS = ("sp", "mup")
_TRUNCATED_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]
INPUT_NAMES = ("input", "stem", "embed")
READOUT_NAME = "readout"


def check_parameterization(param: str) -> None:
    if param not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {param!r}; allowed: {', '.join(PARAMETERIZATIONS)}")


def layer_kind(name: str) -> str:
    """'input' | 'hidden' | 'readout' of a weight layer, from its module name."""
    if name in INPUT_NAMES:
        return "input"
    return "readout" if name == READOUT_NAME else "hidden"


def fans(kernel_shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a (*window, C_in, C_out) kernel."""
    receptive_field = math.prod(kernel_shape[:-2])
    return receptive_field * kernel_shape[-2], receptive_field * kernel_shape[-1]


def kernel_init(param: str, kind: str) -> Callable:
    check_parameterization(param)
    gain = 1.0 if kind == "readout" else 2.0
    mode = "fan_out" if param == "mup" and kind != "readout" else "fan_in"
    # variance_scaling rescales its truncated normal so that the variance is exactly gain / fan.
    return jax.nn.initializers.variance_scaling(gain, mode, "truncated_normal")


def forward_multiplier(param: str, kind: str, fan_in: int, fan_out: int) -> float:
    check_parameterization(param)
    if param == "sp":
        return 1.0
    if kind == "readout":
        return fan_in**-0.5
    return math.sqrt(fan_out / fan_in)


def adam_lr_multiplier(kind: str, fan_in: int, fan_out: int) -> float:
    """Full-μP Adam learning-rate factor c of a kernel: the one that makes an Adam step's change of the layer's
    output width-independent with this module's multipliers.

    Adam moves every kernel entry by about c·η (its direction m̂/(√v̂ + ε) is sign-like, O(1) per entry), coherently
    with the layer's input, so one step changes the output by Δh ≈ multiplier·c·η·fan_in, and c ∝ 1/(multiplier·fan_in):
    input (fan_in fixed, multiplier ∝ √fan_out) 1/√fan_out, as in the paper (§3); hidden 1/√(fan_in·fan_out), where
    the paper's text has 1/√fan_in (Δh would grow as √width); readout 1/√fan_in, where the paper's text has 1/fan_in
    (Δf would shrink as 1/√width). `test_full_mup_adam_coordinate_check` measures both.
    """
    return {"input": fan_out**-0.5, "hidden": (fan_in * fan_out) ** -0.5, "readout": fan_in**-0.5}[kind]


class _Scaled(nn.Module):
    """The one SP/μP mechanism, `multiplier · (x ⊛ W) + b`; subclasses define the window and ⊛."""

    features: int
    parameterization: str
    param_dtype: jnp.dtype = jnp.float32

    def window(self) -> tuple[int, ...]:
        raise NotImplementedError

    def project(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kind = layer_kind(self.name)
        shape = (*self.window(), x.shape[-1], self.features)
        init = kernel_init(self.parameterization, kind)
        kernel = self.param("kernel", init, shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        # Compute in the widest dtype present (float64 params/inputs stay float64).
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
        multiplier = forward_multiplier(self.parameterization, kind, *fans(shape))
        return multiplier * self.project(x, kernel) + bias


class Embed(nn.Module):
    """Token embedding: the input layer on one-hot tokens, computed as a row lookup (module docstring)."""

    num_embeddings: int
    features: int
    parameterization: str
    param_dtype: jnp.dtype = jnp.float32
    variance: float | None = None  # Var(W) in place of the parameterisation's rule (an init study's axis)

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        check_parameterization(self.parameterization)
        fan_out = self.features
        rule = 1.0 / fan_out if self.parameterization == "mup" else 1.0
        variance = rule if self.variance is None else self.variance
        # jax's truncated_normal takes the std before truncation at ±2; this factor makes the variance exact.
        init = jax.nn.initializers.truncated_normal(math.sqrt(variance) / _TRUNCATED_STD)
        kernel = self.param("kernel", init, (self.num_embeddings, fan_out), self.param_dtype)
        return forward_multiplier(self.parameterization, "input", 1, fan_out) * jnp.take(kernel, tokens, axis=0)


class Dense(_Scaled):
    def window(self) -> tuple[int, ...]:
        return ()

    def project(self, x, kernel):
        return x @ kernel


class Conv(_Scaled):
    """k×k convolution of NHWC inputs, SAME padding."""

    kernel_size: int = 3
    strides: int = 1

    def window(self) -> tuple[int, ...]:
        return (self.kernel_size, self.kernel_size)

    def project(self, x, kernel):
        return conv2d(x, kernel, self.strides)


def _map_leaves(fn: Callable[[str, str, tuple[int, ...] | None], object], params):
    """fn(kind, leaf_name, kernel_shape) on every leaf; kernel_shape is the leaf's layer's, None for norms."""
    flat = traverse_util.flatten_dict(params)

    def apply(path):
        module, leaf = path[:-1], path[-1]
        if (*module, "kernel") in flat:
            return fn(layer_kind(module[-1]), leaf, flat[(*module, "kernel")].shape)
        if (*module, "scale") in flat:
            return fn("norm", leaf, None)
        raise ValueError(f"cannot tell the layer kind of parameter {'/'.join(path)}")

    return traverse_util.unflatten_dict({path: apply(path) for path in flat})


def layer_kinds(params):
    """'input' | 'hidden' | 'readout' | 'norm' per leaf of `params`."""
    return _map_leaves(lambda kind, leaf, shape: kind, params)


def adam_lr_multipliers(params, param: str, full_mup: bool):
    """Per-leaf Adam learning-rate factors: all ones, except kernels under full μP.

    Biases and LayerNorm parameters keep factor 1 under full μP too: they are vector-like (one entry per
    unit, added after the multiplier), and μP gives vector-like parameters a width-independent Adam
    learning rate.
    """
    check_parameterization(param)
    scale_kernels = param == "mup" and full_mup

    def factor(kind, leaf, kernel_shape):
        return adam_lr_multiplier(kind, *fans(kernel_shape)) if scale_kernels and leaf == "kernel" else 1.0

    return _map_leaves(factor, params)
