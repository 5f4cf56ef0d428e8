"""Per-example losses on one-hot (or mixup-soft) targets; the paper's conventions set the scale of λᴴ."""
import jax
import jax.numpy as jnp

LOSSES = ("mse", "xent")


def mse(logits, targets):
    """½·mean over classes of (f − y)²; averaged over the batch this is the paper's MSE."""
    return 0.5 * jnp.mean((logits - targets) ** 2, axis=-1)


def xent(logits, targets):
    """Softmax cross-entropy against (possibly soft) targets."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)


def correct(logits, targets):
    return (jnp.argmax(logits, -1) == jnp.argmax(targets, -1)).astype(logits.dtype)


def get(name: str):
    """The per-example loss called `name`."""
    if name not in LOSSES:
        raise ValueError(f"loss={name}: unknown loss; allowed: {', '.join(LOSSES)}")
    return {"mse": mse, "xent": xent}[name]
