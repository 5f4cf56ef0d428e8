import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from warmup import optim
from warmup.models import MODELS, adam_lr_multipliers, build_model, layer_kinds
from warmup.models.parameterization import Conv, Dense, fans, forward_multiplier

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
def coordinate_fcn(param, width):
    """FCN-4 of `width`: its initial parameters from a key, MSE gradient on (X, Y) and per-layer outputs, all jitted
    and built once per width (eager ops would compile once per shape, most of these tests' time)."""
    model = build_model("fcn", param=param, num_classes=10, width=width, depth=4)
    init = jax.jit(lambda key: model.init(key, X)["params"])
    grad = jax.jit(jax.grad(lambda p: 0.5 * jnp.mean((model.apply({"params": p}, X) - Y) ** 2)))

    def outputs(params):
        _, state = model.apply({"params": params}, X, capture_intermediates=True)
        return [state["intermediates"][name]["__call__"][0] for name in COORDINATE_LAYERS]

    return init, grad, jax.jit(outputs)


@functools.cache
def coordinate_changes(param, width, lr=1.0):
    """Per-coordinate size (RMS over examples and units) of each layer's output change after one SGD step on MSE,
    and of the output before it, averaged over `COORDINATE_SEEDS` initialisations: arrays (layers,)."""
    init, grad, outputs = coordinate_fcn(param, width)
    changes, sizes = [], []
    for seed in range(COORDINATE_SEEDS):
        params = init(jax.random.key(seed))
        before = outputs(params)
        after = outputs(jax.tree.map(lambda p, g: p - lr * g, params, grad(params)))
        changes.append([rms(b - a) for a, b in zip(before, after)])
        sizes.append([rms(a) for a in before])
    return np.mean(changes, 0), np.mean(sizes, 0)


def rms(a):
    return float(jnp.sqrt(jnp.mean(a**2)))


def log_log_slopes(values):
    """Least-squares slope of log(value) against log(width), one per layer: `values` (widths, layers)."""
    return np.polyfit(np.log(COORDINATE_WIDTHS), np.log(np.asarray(values)), 1)[0]


def width_slopes(param, which):
    """`log_log_slopes` of the SGD step's changes (`which` = 0) or of the outputs at init (1)."""
    return log_log_slopes([coordinate_changes(param, n)[which] for n in COORDINATE_WIDTHS])


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


ADAM_COORDINATE_LR = 0.01  # global η: every layer's output moves by ~1e-2 of its O(1) size, the linear regime


def paper_text_adam_rates(params):
    """The full-μP Adam rates as the paper's text (§3) states them: kernels input 1/√fan_out, hidden 1/√fan_in,
    readout 1/fan_in; biases 1."""
    rate = {"input": lambda fan_in, fan_out: fan_out**-0.5, "hidden": lambda fan_in, fan_out: fan_in**-0.5,
            "readout": lambda fan_in, fan_out: 1 / fan_in}
    kinds = layer_kinds(params)
    return {layer: {"kernel": rate[kinds[layer]["kernel"]](*fans(leaves["kernel"].shape)), "bias": 1.0}
            for layer, leaves in params.items()}


@functools.cache
def adam_coordinate_changes(rates, width):
    """Per-coordinate size (RMS) of each layer's output change after one Adam step of μP FCN-4's kernels with the
    full-μP per-layer rates `rates` ("ours": `adam_lr_multipliers`, "paper": `paper_text_adam_rates`), applied as
    `build` and the loop apply them (θ ← θ − η·c·m̂/(√v̂ + ε)): after the whole step, and from the layer's own kernel
    stepping alone; averaged over `COORDINATE_SEEDS` initialisations: arrays (layers,). Biases are held: their rate
    is 1, so their change is η at every width and would hide the kernels' scaling."""
    init, grad, outputs = coordinate_fcn("mup", width)
    shapes = jax.eval_shape(init, jax.random.key(0))
    tx = optim.build_optimizer("adam", lr_multipliers=adam_lr_multipliers(shapes, "mup", full_mup=True)
                               if rates == "ours" else paper_text_adam_rates(shapes))
    first_direction = jax.jit(lambda params: tx.update(grad(params), tx.init(params), params)[0])
    whole, own = [], []
    for seed in range(COORDINATE_SEEDS):
        params = init(jax.random.key(seed))
        direction = first_direction(params)
        stepped = {layer: dict(leaves, kernel=leaves["kernel"] - ADAM_COORDINATE_LR * direction[layer]["kernel"])
                   for layer, leaves in params.items()}
        before = outputs(params)
        whole.append([rms(b - a) for a, b in zip(before, outputs(stepped))])
        own.append([rms(outputs(dict(params, **{layer: stepped[layer]}))[i] - before[i])
                    for i, layer in enumerate(COORDINATE_LAYERS)])
    return np.mean(whole, 0), np.mean(own, 0)


def test_full_mup_adam_coordinate_check():
    """Full μP with Adam: one step's per-coordinate change of each layer's output is width-independent (log-log slope
    near 0 over 8× width), after the whole step and from each layer's own kernel alone. Measured slopes (input,
    hidden1, hidden2, readout; four sets of 4 seeds): whole step |slope| <= 0.02, own kernel <= 0.06. The paper's
    text rates fail: own-kernel slopes (0.00, +0.47…+0.50, +0.47…+0.50, −0.44…−0.50), the hidden layers' changes
    growing and the readout's shrinking as √width (hidden 1/√fan_in is √fan_in too large, readout 1/fan_in √fan_in
    too small). Their whole-step readout change grows (+0.40…+0.46): its input's growth outweighs its own shrinking."""
    ours = [adam_coordinate_changes("ours", n) for n in COORDINATE_WIDTHS]
    whole, own = log_log_slopes([w for w, _ in ours]), log_log_slopes([o for _, o in ours])
    assert np.abs(whole).max() < 0.15 and np.abs(own).max() < 0.15, (whole, own)
    assert min(w.min() for w, _ in ours) > 1e-3  # every layer moves
    paper = log_log_slopes([adam_coordinate_changes("paper", n)[1] for n in COORDINATE_WIDTHS])
    assert paper[1:3].min() > 0.3 and paper[3] < -0.3 and abs(paper[0]) < 0.15, paper


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
        "hidden1": {"kernel": 1 / 64, "bias": 1.0},  # 1/√(fan_in·fan_out)
        "readout": {"kernel": 1 / 8, "bias": 1.0},  # 1/√fan_in
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
    # Fans include the window: a 3×3 conv from 16 to 32 channels has fan_in 9·16 and fan_out 9·32.
    assert factors["stem"]["kernel"] == pytest.approx(1 / math.sqrt(9 * 16))  # input: 1/√fan_out
    assert factors["stage2_block0"]["conv1"]["kernel"] == pytest.approx(1 / math.sqrt(9 * 16 * 9 * 32))
    assert factors["stage2_block0"]["shortcut"]["kernel"] == pytest.approx(1 / math.sqrt(16 * 32))
    assert factors["stage3_block0"]["conv2"]["kernel"] == pytest.approx(1 / (9 * 64))
    assert factors["readout"]["kernel"] == pytest.approx(1 / 8)  # readout: 1/√fan_in
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
