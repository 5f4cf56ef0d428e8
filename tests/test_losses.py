"""The loss conventions set the scale of λᴴ (paper §2): MSE = ½·mean over batch AND classes of (f − y)², one-hot
targets; cross-entropy = mean softmax CE. Values below are computed by hand."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from warmup import losses

# Two examples, three classes: targets class 0 and class 2.
LOGITS = jnp.array([[2.0, 0.0, 1.0], [0.0, 1.0, 3.0]])
ONE_HOT = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
LABELS = jnp.array([0, 2])


def test_mse_by_hand():
    # f − y = (1, 0, 1) and (0, 1, 2): squares sum to 2 and 5; ½·mean over the classes: 1/3 and 5/6;
    # ½·mean over batch and classes: ½·7/6 = 7/12.
    mse = losses.get("mse")
    np.testing.assert_allclose(mse(LOGITS, ONE_HOT), [1 / 3, 5 / 6], rtol=1e-6)
    assert float(jnp.mean(mse(LOGITS, ONE_HOT))) == pytest.approx(7 / 12, rel=1e-6)
    np.testing.assert_allclose(mse(LOGITS, LABELS), [1 / 3, 5 / 6], rtol=1e-6)  # class indices: the same loss


def test_mse_hessian_in_the_logits_is_identity_over_batch_times_classes():
    """The scale λᴴ inherits: ∂²/∂f² of the batch-mean MSE is I/(B·K) (a sum, or no ½, would change it)."""
    hessian = jax.hessian(lambda f: jnp.mean(losses.get("mse")(f, ONE_HOT)))(LOGITS)
    np.testing.assert_allclose(np.asarray(hessian).reshape(6, 6), np.eye(6) / 6, atol=1e-7)


def test_cross_entropy_by_hand():
    # Row 1: uniform logits, −log(1/3) = log 3. Row 2: softmax(0, log 2, 0) = (1/4, 1/2, 1/4), target 1: log 2.
    logits = jnp.array([[0.0, 0.0, 0.0], [0.0, math.log(2), 0.0]])
    xent = losses.get("xent")
    for targets in (jnp.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), jnp.array([2, 1])):
        np.testing.assert_allclose(xent(logits, targets), [math.log(3), math.log(2)], rtol=1e-6)
