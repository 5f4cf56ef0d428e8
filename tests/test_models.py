import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from warmup.models import MODELS, adam_lr_multipliers, build_model, layer_kinds
from warmup.models.parameterization import Conv, Dense, forward_multiplier

# Truncated at ±2 std and rescaled to the target variance, samples never exceed 2/0.8796 std.
TRUNCATED_MAX_STD = 2 / 0.87962566103423978


def closed_form_variance(param, kind, fan_in, fan_out):
    if kind == "readout":
        return 1 / fan_in
    return 2 / (fan_out if param == "mup" else fan_in)


def closed_form_multiplier(param, kind, fan_in, fan_out):
    if param == "sp":
        return 1.0
    return 1 / math.sqrt(fan_in) if kind == "readout" else math.sqrt(fan_out / fan_in)


LAYERS = {  # layer, input shape, (fan_in, fan_out)
    "dense": (lambda param, name: Dense(1024, param, name=name), (1, 512), (512, 1024)),
    "conv": (lambda param, name: Conv(128, param, name=name), (1, 4, 4, 64), (9 * 64, 9 * 128)),
}


@pytest.mark.parametrize("param", ["sp", "mup"])
@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize(
    "name, kind", [("input", "input"), ("stem", "input"), ("conv3", "hidden"), ("readout", "readout")]
)
def test_kernel_init_and_multiplier_follow_the_rule(param, layer, name, kind):
    make, in_shape, (fan_in, fan_out) = LAYERS[layer]
    module = make(param, name)
    x = jax.random.normal(jax.random.key(1), in_shape)
    params = module.init(jax.random.key(0), x)["params"]
    kernel = np.asarray(params["kernel"], np.float64)
    var = closed_form_variance(param, kind, fan_in, fan_out)
    np.testing.assert_allclose(kernel.mean(), 0, atol=0.02 * math.sqrt(var))
    np.testing.assert_allclose(kernel.var(), var, rtol=0.03)
    assert np.abs(kernel).max() <= TRUNCATED_MAX_STD * math.sqrt(var) * (1 + 1e-6)
    np.testing.assert_array_equal(params["bias"], 0)

    multiplier = closed_form_multiplier(param, kind, fan_in, fan_out)
    assert forward_multiplier(param, kind, fan_in, fan_out) == pytest.approx(multiplier)
    # The layer applies it to x ⊛ W, before the bias.
    bias = jnp.arange(kernel.shape[-1], dtype=jnp.float32)
    out = module.apply({"params": {"kernel": params["kernel"], "bias": bias}}, x)
    if layer == "dense":
        projected = x @ params["kernel"]
    else:
        projected = jax.lax.conv_general_dilated(
            x, params["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    np.testing.assert_allclose(out, multiplier * projected + bias, rtol=1e-5, atol=1e-5)


# Shared by the width-scaling tests, so that they compile each layer shape once.
WIDTHS = (64, 128, 256, 512, 1024)
X = jax.random.normal(jax.random.key(0), (64, 8, 8, 3))
Y = jax.nn.one_hot(jax.random.randint(jax.random.key(1), (64,), 0, 10), 10)


def fcn_logit_std(param, width, seeds=4):
    model = build_model("fcn", param=param, num_classes=10, width=width, depth=4)
    stds = [jnp.std(model.apply(model.init(jax.random.key(seed), X), X)) for seed in range(seeds)]
    return float(np.mean(stds))


def test_logits_at_init_are_order_one_in_sp_and_shrink_like_inverse_sqrt_width_in_mup():
    sp = np.array([fcn_logit_std("sp", n) for n in WIDTHS])
    mup = np.array([fcn_logit_std("mup", n) for n in WIDTHS])
    assert 0.3 < sp.min() and sp.max() < 3 and sp.max() / sp.min() < 1.5
    slope = np.polyfit(np.log(WIDTHS), np.log(mup), 1)[0]
    assert slope == pytest.approx(-0.5, abs=0.1)


COORDINATE_WIDTHS = (256, 512, 1024, 2048)  # below ~512 the μP changes still fall with width (finite-width terms)
COORDINATE_LAYERS = ("input", "hidden1", "hidden2", "readout")
COORDINATE_SEEDS = 4


@functools.cache
def coordinate_changes(param, width, lr=1.0):
    """Per-coordinate size (RMS over examples and units) of each layer's output change after one SGD step on MSE,
    and of the output before it, averaged over `COORDINATE_SEEDS` initialisations: arrays (layers,)."""
    model = build_model("fcn", param=param, num_classes=10, width=width, depth=4)
    grad = jax.jit(jax.grad(lambda p: 0.5 * jnp.mean((model.apply({"params": p}, X) - Y) ** 2)))

    def outputs(params):
        _, state = model.apply({"params": params}, X, capture_intermediates=True)
        return [state["intermediates"][name]["__call__"][0] for name in COORDINATE_LAYERS]

    changes, sizes = [], []
    for seed in range(COORDINATE_SEEDS):
        params = model.init(jax.random.key(seed), X)["params"]
        before = outputs(params)
        after = outputs(jax.tree.map(lambda p, g: p - lr * g, params, grad(params)))
        changes.append([rms(b - a) for a, b in zip(before, after)])
        sizes.append([rms(a) for a in before])
    return np.mean(changes, 0), np.mean(sizes, 0)


def rms(a):
    return float(jnp.sqrt(jnp.mean(a**2)))


def width_slopes(param, which):
    """Least-squares slope of log(size) against log(width), one per layer (`which`: 0 change, 1 size at init)."""
    values = np.array([coordinate_changes(param, n)[which] for n in COORDINATE_WIDTHS])
    return np.polyfit(np.log(COORDINATE_WIDTHS), np.log(values), 1)[0]


def test_mup_coordinate_check():
    """μP (one global SGD η): each layer's per-coordinate change after a step is width-independent — a least-squares
    log-log slope against width near 0 over 8× width — and non-zero (features learn: not a kernel regime). Measured
    slopes (input, hidden1, hidden2, readout; four sets of 4 seeds): μP between −0.09 and +0.02; SP at the same η
    about (−0.5, +0.45, +0.65, +1.55)."""
    mup_change, sp_change = width_slopes("mup", 0), width_slopes("sp", 0)
    assert np.abs(mup_change).max() < 0.15, mup_change  # measured |slope| <= 0.09 over four sets of seeds
    assert min(coordinate_changes("mup", n)[0].min() for n in COORDINATE_WIDTHS) > 1e-3  # every layer moves
    assert np.abs(width_slopes("mup", 1)[:3]).max() < 0.15  # hidden features are O(1) at init at every width
    # SP at the same η: the readout's change grows with width (measured slope 1.4–1.7), the hidden layers' too
    # (0.4–0.7), the input layer's shrinks (−0.5): no single η is right for every width.
    assert sp_change[-1] > 1.0 and sp_change[1:3].min() > 0.2 and sp_change[0] < -0.3, sp_change


@pytest.mark.parametrize("name, width, depth, image", [("fcn", 32, 3, 8), ("cnn", 8, 5, 16), ("wrn", 1, 10, 8)])
def test_forward_shape_and_float64(name, width, depth, image):
    model = build_model(name, param="mup", num_classes=7, width=width, depth=depth)
    x = jax.random.normal(jax.random.key(0), (3, image, image, 3))
    params = jax.jit(model.init)(jax.random.key(1), x)["params"]
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    logits = jax.jit(model.apply)({"params": params}, x)
    assert logits.shape == (3, 7) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits)) and float(jnp.std(logits)) > 0
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
        logits64 = jax.jit(model.apply)({"params": params64}, jnp.asarray(x, jnp.float64))
        assert logits64.dtype == jnp.float64
        np.testing.assert_allclose(logits64, logits, rtol=1e-4, atol=1e-5)


def test_cnn_layout():
    model = build_model("cnn", param="sp", num_classes=10, width=4, depth=5)
    init = functools.partial(model.init_with_output, capture_intermediates=True)
    _, variables = jax.eval_shape(init, jax.random.key(0), jnp.ones((1, 32, 32, 3)))
    layers = {name: out for name, out in variables["intermediates"].items() if name != "__call__"}
    shapes = {name: out["__call__"][0].shape for name, out in layers.items()}
    assert shapes == {  # Myrtle-5: stem, convs (2, 1, 1) per stage, pooling between stages
        "stem": (1, 32, 32, 4),
        "stage1_conv0": (1, 32, 32, 4),
        "stage1_conv1": (1, 32, 32, 4),
        "stage2_conv0": (1, 16, 16, 4),
        "stage3_conv0": (1, 8, 8, 4),
        "readout": (1, 10),
    }


def conv_count(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


def wrn_param_count(depth, k, num_classes, in_channels=3):
    """Closed form of the layout documented in warmup.models.wrn."""
    blocks = (depth - 4) // 6
    count = conv_count(3, in_channels, 16) + 2 * 16  # stem conv + LN
    c_in = 16
    for stage in range(3):
        c = 16 * k * 2**stage
        for i in range(blocks):
            count += conv_count(3, c_in, c) + conv_count(3, c, c) + 2 * (2 * c)
            if c_in != c or (stage > 0 and i == 0):
                count += conv_count(1, c_in, c)
            c_in = c
    return count + c_in * num_classes + num_classes


@pytest.mark.parametrize("depth, width", [(16, 4), (10, 1), (22, 2)])
def test_wrn_param_count(depth, width):
    model = build_model("wrn", param="mup", num_classes=10, width=width, depth=depth)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 32, 32, 3)))["params"]
    assert sum(math.prod(s.shape) for s in jax.tree.leaves(shapes)) == wrn_param_count(depth, width, 10)


def test_wrn_16_4_has_about_2_7m_params():
    assert wrn_param_count(16, 4, 10) == 2_751_146


def test_layer_kinds_and_full_mup_adam_multipliers_fcn():
    model = build_model("fcn", param="mup", num_classes=10, width=64, depth=3)
    params = model.init(jax.random.key(0), jnp.ones((1, 4, 4, 2)))["params"]
    assert layer_kinds(params) == {
        "input": {"kernel": "input", "bias": "input"},
        "hidden1": {"kernel": "hidden", "bias": "hidden"},
        "readout": {"kernel": "readout", "bias": "readout"},
    }
    # Widths are powers of two, so the factors are exact.
    assert adam_lr_multipliers(params, "mup", full_mup=True) == {
        "input": {"kernel": 1 / 8, "bias": 1.0},  # 1/√fan_out
        "hidden1": {"kernel": 1 / 8, "bias": 1.0},  # 1/√fan_in
        "readout": {"kernel": 1 / 64, "bias": 1.0},  # 1/fan_in
    }
    for param, full_mup in [("mup", False), ("sp", True), ("sp", False)]:
        factors = adam_lr_multipliers(params, param, full_mup)
        assert jax.tree.structure(factors) == jax.tree.structure(params)
        assert set(jax.tree.leaves(factors)) == {1.0}


def test_layer_kinds_and_full_mup_adam_multipliers_wrn():
    model = build_model("wrn", param="mup", num_classes=10, width=1, depth=10)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8, 8, 3)))["params"]
    kinds, factors = layer_kinds(params), adam_lr_multipliers(params, "mup", full_mup=True)
    assert kinds["stem"] == {"kernel": "input", "bias": "input"}
    assert kinds["stem_norm"] == {"scale": "norm", "bias": "norm"}
    assert kinds["readout"]["kernel"] == "readout"
    block = kinds["stage2_block0"]
    assert block["conv1"]["kernel"] == block["shortcut"]["kernel"] == "hidden"
    assert block["norm1"] == {"scale": "norm", "bias": "norm"}
    assert factors["stem"]["kernel"] == pytest.approx(1 / math.sqrt(9 * 16))
    assert factors["stage2_block0"]["conv1"]["kernel"] == pytest.approx(1 / math.sqrt(9 * 16))
    assert factors["stage2_block0"]["shortcut"]["kernel"] == pytest.approx(1 / 4)
    assert factors["stage3_block0"]["conv2"]["kernel"] == pytest.approx(1 / math.sqrt(9 * 64))
    assert factors["readout"]["kernel"] == pytest.approx(1 / 64)
    assert factors["stage2_block0"]["norm1"] == {"scale": 1.0, "bias": 1.0}


def test_invalid_arguments_name_the_allowed_values():
    kwargs = dict(num_classes=10, width=4, depth=16)
    with pytest.raises(ValueError, match="fcn, cnn, wrn"):
        build_model("resnet", param="sp", **kwargs)
    with pytest.raises(ValueError, match="sp, mup"):
        build_model("wrn", param="ntk", **kwargs)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        build_model("wrn", param="sp", num_classes=10, width=4, depth=15)
    with pytest.raises(ValueError, match="sp, mup"):
        adam_lr_multipliers({}, "ntk", full_mup=True)
    assert MODELS == ("fcn", "cnn", "wrn", "transformer")
    assert isinstance(build_model("cnn", param="sp", **kwargs), nn.Module)
