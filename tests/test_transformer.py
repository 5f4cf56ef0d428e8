import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from warmup import config, losses, records, text
from warmup.models import Embed, adam_lr_multipliers, build_model, layer_kinds
from warmup.models.transformer import NORMS, sinusoidal_positions
from conftest import TINY, compose_config, runner
from test_train import assert_one_line_error, cli

TOKENS = jax.random.randint(jax.random.key(0), (2, 12), 0, 50)


def tiny(norm="pre", param="sp"):
    model = build_model("transformer", param=param, num_classes=50, width=16, depth=2, heads=2, norm=norm)
    return model, model.init(jax.random.key(1), TOKENS)["params"]


@pytest.mark.parametrize("norm", NORMS)
def test_causal_no_information_from_the_future(norm):
    model, params = tiny(norm)
    apply = jax.jit(model.apply)
    logits = apply({"params": params}, TOKENS)
    t = 7
    changed = TOKENS.at[:, t:].set((TOKENS[:, t:] + 1) % 50)
    other = apply({"params": params}, changed)
    np.testing.assert_array_equal(logits[:, :t], other[:, :t])
    assert np.all(np.abs(np.asarray(logits[:, t:] - other[:, t:])).max(-1) > 0)
    # the derivative of the logits at position q with respect to the embedding of a later token is exactly zero
    jac = jax.jit(jax.jacobian(lambda e: model.apply({"params": {**params, "embed": {"kernel": e}}}, TOKENS)[0, 3]))(
        params["embed"]["kernel"])
    later = np.setdiff1d(np.asarray(TOKENS[0, 4:]), np.asarray(TOKENS[0, :4]))
    assert later.size and np.all(np.asarray(jac)[:, later] == 0)


def lm_param_count(depth, width, vocab, final_norm=True):
    """Embedding V·n; per block 2 LayerNorms (4n), q/k/v/out (4(n² + n)), MLP n→4n→n (8n² + 5n); final LN 2n;
    untied readout n·V + V. Sinusoidal positions have none."""
    return vocab * width + depth * (12 * width**2 + 13 * width) + 2 * width * final_norm + width * vocab + vocab


@pytest.mark.parametrize("norm", NORMS)
def test_lm_4_128_parameter_count_matches_closed_form(norm):
    model = build_model("transformer", param="sp", num_classes=4096, width=128, depth=4, heads=4, norm=norm)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64), jnp.int32))["params"]
    count = sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))
    assert count == lm_param_count(4, 128, 4096, final_norm=norm == "pre")
    assert lm_param_count(4, 128, 4096) == 1_846_016


def test_layer_kinds_and_full_mup_rates():
    _, params = tiny(param="mup")
    kinds = layer_kinds(params)
    assert kinds["embed"]["kernel"] == "input" and kinds["readout"]["kernel"] == "readout"
    assert kinds["block0"]["attention"]["query"]["kernel"] == "hidden"
    assert kinds["block1"]["mlp_out"]["kernel"] == "hidden" and kinds["final_norm"]["scale"] == "norm"
    rates = adam_lr_multipliers(params, "mup", full_mup=True)
    assert rates["embed"]["kernel"] == pytest.approx(16**-0.5)  # input: 1/√fan_out
    assert rates["block0"]["mlp_out"]["kernel"] == pytest.approx((64 * 16) ** -0.5)  # hidden: 1/√(fan_in·fan_out)
    assert rates["readout"]["kernel"] == pytest.approx(16**-0.5)  # readout: 1/√fan_in


def readout_input(model, params):
    """The residual stream as the readout receives it (its input, intercepted), for `TOKENS`."""
    seen = {}

    def grab(next_fun, args, kwargs, context):
        if context.module.name == "readout" and context.method_name == "__call__":
            seen["x"] = np.asarray(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
        logits = model.apply({"params": params}, TOKENS)
    return seen["x"], np.asarray(logits)


def test_post_ln_and_pre_ln_without_final_ln_are_different_architectures():
    """Post-LN and Pre-LN without the final LayerNorm have the same parameters (one tree, one count), so only the
    forward pass tells them apart: on the same parameters and tokens their logits differ, and Post-LN's readout sees a
    LayerNorm output (per position mean 0, variance 1 at init, where the norm's scale is 1 and bias 0) while the
    Pre-LN stream without final LN is the raw residual sum. Pre-LN with its final LN is normalised again."""
    post, params = tiny("post")
    no_final, params_no_final = tiny("pre_no_final")
    assert jax.tree.structure(params) == jax.tree.structure(params_no_final)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, params_no_final)
    (x_post, logits_post), (x_no_final, logits_no_final) = (readout_input(m, params) for m in (post, no_final))
    assert np.abs(logits_post - logits_no_final).max() > 0.1 * np.abs(logits_post).max()
    np.testing.assert_allclose(x_post.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(x_post.var(-1), 1, rtol=1e-4)  # LayerNorm's ε = 1e-6
    assert np.abs(x_no_final.var(-1) - 1).max() > 0.5 and np.abs(x_no_final.mean(-1)).max() > 0.1
    pre, pre_params = tiny("pre")
    x_pre, _ = readout_input(pre, pre_params)
    np.testing.assert_allclose(x_pre.var(-1), 1, rtol=1e-4)


@pytest.mark.parametrize("param, variance, multiplier, override", [
    ("sp", 1.0, 1.0, None), ("mup", 1 / 256, 16.0, None), ("sp", 1 / 4096, 1.0, 1 / 4096), ("mup", 4.0, 16.0, 4.0)])
def test_embedding_init_and_multiplier(param, variance, multiplier, override):
    embed = Embed(2000, 256, param, variance=override)
    kernel = embed.init(jax.random.key(0), TOKENS)["params"]["kernel"]
    assert float(jnp.var(kernel)) == pytest.approx(variance, rel=0.02)
    assert float(jnp.abs(kernel).max()) <= 2 * math.sqrt(variance) / 0.8796 + 1e-6  # truncated at ±2σ
    out = embed.apply({"params": {"kernel": kernel}}, TOKENS)
    np.testing.assert_allclose(out, multiplier * kernel[TOKENS], rtol=1e-6)


@pytest.mark.parametrize("variance", [0.0, -1.0])
def test_a_non_positive_embedding_variance_is_refused_by_name(variance):
    with pytest.raises(ValueError, match=r"model\.embed_variance=.*> 0"):
        build_model("transformer", param="sp", num_classes=64, width=32, depth=1, embed_variance=variance)


def test_sinusoidal_positions_formula():
    table = sinusoidal_positions(5, 8)
    p, i = 3, 2  # features 4 and 5 use frequency 10000^(-4/8)
    assert table[p, 2 * i] == pytest.approx(math.sin(p / 10000 ** (2 * i / 8)), rel=1e-6)
    assert table[p, 2 * i + 1] == pytest.approx(math.cos(p / 10000 ** (2 * i / 8)), rel=1e-6)
    np.testing.assert_array_equal(table[0], [0, 1] * 4)


@pytest.mark.parametrize("param, scale", [("sp", 8**-0.5), ("mup", 8**-1.0)])
def test_attention_against_a_masked_softmax_reference(param, scale):
    """Block 0's attention output from its own q, k, v: softmax(q·k·scale, causal) v, then the output layer;
    scale is 1/√d_head in SP and 1/d_head in μP (d_head = 16/2)."""
    model, params = tiny(param=param)
    _, state = model.apply({"params": params}, TOKENS, capture_intermediates=True, mutable=["intermediates"])
    seen = state["intermediates"]["block0"]["attention"]
    q, k, v = (np.asarray(seen[n]["__call__"][0]).reshape(2, 12, 2, 8) for n in ("query", "key", "value"))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    logits = np.where(np.tril(np.ones((12, 12), bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    mixed = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, 12, 16)
    out = params["block0"]["attention"]["attn_out"]
    np.testing.assert_allclose(seen["attn_out"]["__call__"][0], mixed @ out["kernel"] + out["bias"],
                               rtol=1e-4, atol=1e-5)  # hidden n → n: the μP multiplier is 1


@pytest.mark.parametrize("name", losses.LOSSES)
def test_integer_targets_match_one_hot_and_average_over_positions(name):
    logits = jax.random.normal(jax.random.key(2), (3, 5, 7))
    targets = jax.random.randint(jax.random.key(3), (3, 5), 0, 7)
    fn = losses.get(name)
    by_index, by_one_hot = fn(logits, targets), fn(logits, jax.nn.one_hot(targets, 7))
    assert by_index.shape == (3,)
    np.testing.assert_allclose(by_index, by_one_hot, rtol=1e-6)
    if name == "xent":
        reference = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(targets)[..., None],
                                        -1)[..., 0].mean(1)
        np.testing.assert_allclose(by_index, reference, rtol=1e-6)
    hits = np.asarray(jnp.argmax(logits, -1) == targets).mean(1)
    np.testing.assert_allclose(losses.correct(logits, targets), hits)


LM_TINY = [o for o in TINY if not o.startswith("data.num_examples")] + [
    "model=transformer", "model.width=16", "model.depth=2", "model.heads=2", "data=wikitext2", "data.vocab_size=64",
    "data.context=8", "data.batch_size=8", "data.measure_examples=8"]


@pytest.fixture
def run_lm(text_root, tmp_path):
    """Train a tiny LM on the fixture's WikiText-layout corpus; returns (run_dir, summary)."""
    return runner([*LM_TINY, f"data.root={text_root}"], tmp_path)


@pytest.mark.slow  # ~30 s; the fast suite's LM run is tests/test_golden.py's, with the same checks
def test_language_model_run_records_loss_sharpness_and_perplexity(run_lm):
    run_dir, summary = run_lm("optimizer=adam", "schedule.lr_trgt=1e-2",
                              "schedule.warmup_steps=5", "sharpness.every=10", "train.steps=30")
    assert summary["status"] == "converged" and summary["steps_completed"] == 30
    assert summary["final_test_perplexity"] == pytest.approx(math.exp(summary["final_test_loss"]), rel=1e-6)
    metrics = records.read_metrics(run_dir)
    assert list(metrics.step) == list(range(31))
    assert math.log(64) < metrics.train_loss.iloc[0] < math.log(64) + 1  # SP: logits of variance ~1 at init
    assert metrics.train_loss.iloc[-1] < 0.7 * metrics.train_loss.iloc[0]
    measured = metrics[metrics.pre_sharpness.notna()]
    assert list(measured.step) == [0, 10, 20] and (measured.pre_sharpness > measured.sharpness).all()
    assert metrics.sharpness[0] == pytest.approx(summary["lambda0"], rel=1e-2)


@pytest.mark.slow
def test_language_model_full_batch_gd(run_lm, text_root):
    run_dir, summary = run_lm("data.batch_size=null", "schedule.lr_trgt_scale=1",
                           "sharpness.every=5", "train.steps=10")
    assert summary["status"] in ("converged", "failed") and summary["steps_completed"] == 10
    windows = (len(text.load("wikitext2", str(text_root), 64).train) - 1) // 8
    assert summary["measure_examples"] == windows  # full batch: λᴴ on every non-overlapping training window
    metrics = records.read_metrics(run_dir)
    assert metrics.train_loss.iloc[9] < metrics.train_loss.iloc[0]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, lr", [
    ("sgd", "schedule.lr_trgt_scale=1"), ("adam", "schedule.lr_trgt=1e-2"), ("gi_adam", "schedule.lr_trgt=1e-2"),
    ("ri_adam", "schedule.lr_trgt=1e-2"), ("radam", "schedule.lr_trgt=1e-2")])
def test_every_optimizer_trains_the_language_model_with_its_thresholds(run_lm, optimizer, lr):
    extra = ["optimizer.momentum=0.9"] if optimizer == "sgd" else []
    run_dir, summary = run_lm(f"optimizer={optimizer}", lr, *extra, "schedule.warmup_steps=4", "sharpness.every=4",
                              "train.steps=8")
    assert summary["status"] in ("converged", "failed") and summary["steps_completed"] == 8
    metrics = records.read_metrics(run_dir)
    assert np.isfinite(metrics.train_loss).all()
    measured = metrics[metrics.sharpness.notna()]
    assert list(measured.step) == [0, 4]
    np.testing.assert_allclose(measured.sharpness.iloc[0], summary["lambda0"], rtol=1e-2)
    if optimizer == "sgd":  # (2+2β)/η_t; no preconditioner
        np.testing.assert_allclose(measured.sharpness_threshold, 3.8 / measured.lr, rtol=1e-5)
        assert metrics.pre_sharpness.isna().all()
    else:  # Adam family: (2+2β₁)/((1−β₁)η_t) on λ^{P⁻¹H}
        np.testing.assert_allclose(measured.pre_sharpness_threshold, 38 / measured.lr, rtol=1e-5)
        assert (measured.pre_sharpness > 0).all() and np.isfinite(measured.pre_sharpness).all()


@pytest.mark.slow  # ~20 s on 2 cores: the fast suite stays near 7 minutes
def test_sgd_catapult_search_reports_no_catapult_on_a_transformer(run_lm):
    run_dir, summary = run_lm("schedule.init=catapult", "schedule.lr_trgt_scale=1000", "schedule.warmup_steps=16",
                              "train.steps=8", "train.eval_every=0")
    assert summary["catapult_check"] == "diverged" and summary["eta_c"] is None and not summary["eta_c_found"]
    assert summary["no_catapult_lr"] > 2 / summary["lambda0"]  # far beyond the quadratic edge 2/λ₀ᴴ
    assert summary["catapult_check_losses"][-1] > 1000 or not math.isfinite(summary["catapult_check_losses"][-1])
    lr = records.read_metrics(run_dir).lr.dropna().to_numpy()  # η_trgt = 1000/λ₀ᴴ diverges after a few steps
    np.testing.assert_allclose(lr, summary["lr_trgt"] * (np.arange(len(lr)) + 1) / 16, rtol=1e-6)  # from 0


@pytest.mark.parametrize("args, words", [
    (["model=transformer"], ["model=transformer", "pydoc", "wikitext2", "data=fashion_mnist"]),
    (["data=pydoc"], ["data=pydoc", "model=transformer"]),
    (["model=transformer", "data=pydoc", "model.norm=sandwich"], ["model.norm=sandwich", "pre_no_final"]),
    (["model=transformer", "data=pydoc", "data.context=0"], ["data.context=0", ">= 1"]),
])
def test_bad_language_model_input_is_one_line(args, words, tmp_path):
    result = cli(*args, "schedule.lr_trgt=0.1", f"hydra.run.dir={tmp_path / 'run'}", env={"HOME": str(tmp_path)})
    assert_one_line_error(result, words)


@pytest.mark.parametrize("exp", ["fig17", "fig17_cpu", "fig18", "fig18_cpu"])
def test_mechanism_experiments_compose(exp):
    cfg = compose_config([f"+exp={exp}"], with_hydra=True)
    assert cfg.model.name == "transformer" and cfg.loss.name == "xent"
    assert cfg.data.name == ("pydoc" if exp.endswith("_cpu") else "wikitext2")
    assert set(cfg.hydra.sweeper.params["model.norm"].split(",")) == {"pre", "pre_no_final"}
    config.validate(cfg)
