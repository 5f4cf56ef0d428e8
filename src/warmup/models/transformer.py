"""GPT-2-style decoder language model LM-d-n (paper §4; LM-4-128 by default): `apply` maps int tokens (B, T) to
next-token logits (B, T, vocabulary).

    x = embed(tokens) + sinusoidal positions
    d blocks, `norm` = "pre" (default) or "pre_no_final":  x ← x + attn(LN(x));  x ← x + mlp(LN(x))
                      `norm` = "post":                      x ← LN(x + attn(x));  x ← LN(x + mlp(x))
    final LN (pre only; "pre_no_final" drops it: ~100× sharper at initialisation, paper Figs. 17–18) → readout

- Causal multi-head self-attention, `heads` heads of n/heads dimensions, with biases on the query, key, value and
  output projections; logits scaled by 1/√d_head in SP and 1/d_head in μP.
- MLP n → 4n → n with GELU (tanh approximation, as GPT-2). No dropout.
- Sinusoidal positions (no parameters; any length): PE[p, 2i] = sin(p/10000^(2i/n)), PE[p, 2i+1] = cos(…).
- Untied readout: its own Dense layer, so the input and readout layers follow their own SP/μP rules (a tied matrix
  cannot have both the input-layer and the readout initialisation and multiplier).
- Every weight layer takes its SP/μP rule from its kind (`parameterization.py`): the embedding is the input layer,
  query/key/value/attn_out/mlp_in/mlp_out are hidden layers, readout the readout; LayerNorms are "norm".
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from warmup.models.parameterization import Dense, Embed

NORMS = ("pre", "post", "pre_no_final")
MLP_RATIO = 4


def sinusoidal_positions(length: int, width: int) -> np.ndarray:
    """(length, width) float32: sin at even and cos at odd features, wavelengths 2π … 2π·10000."""
    position = np.arange(length)[:, None]
    frequency = 10000.0 ** (-np.arange(0, width, 2) / width)
    table = np.zeros((length, width), np.float32)
    table[:, 0::2] = np.sin(position * frequency)
    table[:, 1::2] = np.cos(position * frequency[:width // 2])
    return table


class CausalSelfAttention(nn.Module):
    heads: int
    parameterization: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, width = x.shape
        head_dim = width // self.heads
        split = lambda name: Dense(width, self.parameterization, name=name)(x).reshape(
            batch, length, self.heads, head_dim)
        q, k, v = split("query"), split("key"), split("value")
        scale = head_dim ** -1.0 if self.parameterization == "mup" else head_dim ** -0.5
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
        causal = jnp.tril(jnp.ones((length, length), bool))  # query position q sees keys k <= q
        logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
        mixed = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
        return Dense(width, self.parameterization, name="attn_out")(mixed.reshape(batch, length, width))


class Block(nn.Module):
    heads: int
    parameterization: str
    norm: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        attention = CausalSelfAttention(self.heads, self.parameterization, name="attention")

        def mlp(h):
            h = nn.gelu(Dense(MLP_RATIO * width, self.parameterization, name="mlp_in")(h))
            return Dense(width, self.parameterization, name="mlp_out")(h)

        if self.norm == "post":
            x = nn.LayerNorm(name="norm1")(x + attention(x))
            return nn.LayerNorm(name="norm2")(x + mlp(x))
        x = x + attention(nn.LayerNorm(name="norm1")(x))
        return x + mlp(nn.LayerNorm(name="norm2")(x))


class Transformer(nn.Module):
    """LM-`depth`-`width`; `num_classes` is the vocabulary size."""

    parameterization: str
    num_classes: int
    width: int = 128
    depth: int = 4
    heads: int = 4
    norm: str = "pre"
    embed_variance: float | None = None  # Var of the embedding in place of the SP/μP rule (`Embed`)

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError(f"model.depth={self.depth}: must be >= 1")
        if self.heads < 1 or self.width % self.heads or self.width % 2:
            raise ValueError(f"model.heads={self.heads}: must divide model.width={self.width} (an even number)")
        if self.norm not in NORMS:
            raise ValueError(f"model.norm={self.norm}: unknown; allowed: {', '.join(NORMS)}")
        if self.embed_variance is not None and not self.embed_variance > 0:
            raise ValueError(f"model.embed_variance={self.embed_variance}: must be > 0, or null for the SP/μP rule")
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = Embed(self.num_classes, self.width, self.parameterization, variance=self.embed_variance,
                  name="embed")(tokens)
        x = x + sinusoidal_positions(tokens.shape[-1], self.width)
        for i in range(self.depth):
            x = Block(self.heads, self.parameterization, self.norm, name=f"block{i}")(x)
        if self.norm == "pre":
            x = nn.LayerNorm(name="final_norm")(x)
        return Dense(self.num_classes, self.parameterization, name="readout")(x)
