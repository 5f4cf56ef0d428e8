"""Myrtle-style CNN (paper §4; Myrtle-5 is depth 5).

Layout for `depth` = D conv layers, all 3×3, `width` channels, ReLU after each:
    stem conv → stage1 → 2×2 avg pool → stage2 → 2×2 avg pool → stage3 → global mean → readout
The D − 1 non-stem convs are split over the three stages as evenly as possible, extra ones first:
D = 5 → (2, 1, 1) (Myrtle-5), D = 7 → (2, 2, 2), D = 10 → (3, 3, 3).
"""

import flax.linen as nn
import jax

from warmup.models.parameterization import Conv, Dense


def convs_per_stage(depth: int) -> tuple[int, int, int]:
    if depth < 4:
        raise ValueError(f"model.depth={depth}: a CNN needs >= 4 conv layers")
    base, extra = divmod(depth - 1, 3)
    return tuple(base + (stage < extra) for stage in range(3))


class CNN(nn.Module):
    parameterization: str
    num_classes: int
    width: int = 64
    depth: int = 5

    def __post_init__(self):
        convs_per_stage(self.depth)  # fail at construction, not at init
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(Conv(self.width, self.parameterization, name="stem")(x))
        for stage, num_convs in enumerate(convs_per_stage(self.depth), start=1):
            if stage > 1:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            for i in range(num_convs):
                x = nn.relu(Conv(self.width, self.parameterization, name=f"stage{stage}_conv{i}")(x))
        return Dense(self.num_classes, self.parameterization, name="readout")(x.mean(axis=(1, 2)))
