"""Per-example losses; the paper's conventions set the scale of λᴴ.

Targets are one-hot (or mixup-soft) float vectors, or integer class indices (a language model's next tokens:
far cheaper than one-hot over a 4096-token vocabulary). Logits may carry positions between the example and the
class axis — (batch, T, classes) for a language model — and an example's loss (and accuracy) is then the mean over
its positions, so the batch mean is the mean over all tokens.
"""
import jax
import jax.numpy as jnp

LOSSES = ("mse", "xent")


def _is_index(targets) -> bool:
    return jnp.issubdtype(targets.dtype, jnp.integer)


def _per_example(values):
    """Mean over every axis after the first (the positions of a sequence); (batch,) stays as it is."""
    return jnp.mean(values, axis=tuple(range(1, values.ndim))) if values.ndim > 1 else values


def mse(logits, targets):
    """½·mean over classes of (f − y)²; averaged over the batch this is the paper's MSE."""
    if _is_index(targets):
        targets = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    return _per_example(0.5 * jnp.mean((logits - targets) ** 2, axis=-1))


def xent(logits, targets):
    """Softmax cross-entropy against (possibly soft) targets or class indices."""
    log_probs = jax.nn.log_softmax(logits)
    if _is_index(targets):
        return _per_example(-jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0])
    return _per_example(-jnp.sum(targets * log_probs, axis=-1))


def correct(logits, targets):
    """1 where the top logit is the target class (for sequences: the share of positions where it is)."""
    labels = targets if _is_index(targets) else jnp.argmax(targets, -1)
    return _per_example((jnp.argmax(logits, -1) == labels).astype(logits.dtype))


def get(name: str):
    """The per-example loss called `name`."""
    if name not in LOSSES:
        raise ValueError(f"loss={name}: unknown loss; allowed: {', '.join(LOSSES)}")
    return {"mse": mse, "xent": xent}[name]
