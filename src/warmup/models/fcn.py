"""FCN-d-n (paper §4): flatten, d − 1 ReLU Dense layers of width n, Dense readout."""

import flax.linen as nn
import jax

from warmup.models.parameterization import Dense


class FCN(nn.Module):
    """Layers are named input, hidden1, …, hidden{d−2}, readout; depth d counts all d Dense layers."""

    parameterization: str
    num_classes: int
    width: int = 512
    depth: int = 4

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError(f"model.depth={self.depth}: must be >= 1")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for i in range(self.depth - 1):
            x = nn.relu(Dense(self.width, self.parameterization, name="input" if i == 0 else f"hidden{i}")(x))
        return Dense(self.num_classes, self.parameterization, name="readout")(x)
