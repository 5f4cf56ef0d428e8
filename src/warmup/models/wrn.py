"""Wide ResNet WRN-d-k with LayerNorm (paper §4; WRN-16-4 by default, width 1 gives a CPU-sized net).

Layout (all convs 3×3 unless noted, LN = LayerNorm over channels, learned scale and bias):
    stem: conv 16 ch → LN → ReLU
    stage s = 1, 2, 3: (d − 4)/6 blocks of 16k·2^(s−1) channels; the first block of stages 2 and 3 has
        stride 2 in its first conv and shortcut
    global mean over space → readout
Post-activation block:
    out = ReLU(LN(conv(ReLU(LN(conv_stride(x))))) + shortcut(x))
    shortcut(x) = x, or a 1×1 conv (with bias, no LN) with the block's stride where the shape changes.
"""

import flax.linen as nn
import jax

from warmup.models.parameterization import Conv, Dense

STEM_CHANNELS = 16


def blocks_per_stage(depth: int) -> int:
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"model.depth={depth}: a WRN needs 6n + 4 with n >= 1 (10, 16, 22, …)")
    return (depth - 4) // 6


class Block(nn.Module):
    features: int
    strides: int
    parameterization: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def conv(name, **kwargs):
            return Conv(self.features, self.parameterization, name=name, **kwargs)

        y = nn.relu(nn.LayerNorm(name="norm1")(conv("conv1", strides=self.strides)(x)))
        y = nn.LayerNorm(name="norm2")(conv("conv2")(y))
        if x.shape[-1] != self.features or self.strides != 1:
            x = conv("shortcut", kernel_size=1, strides=self.strides)(x)
        return nn.relu(y + x)


class WRN(nn.Module):
    parameterization: str
    num_classes: int
    width: int = 4
    depth: int = 16

    def __post_init__(self):
        blocks_per_stage(self.depth)  # fail at construction, not at init
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Conv(STEM_CHANNELS, self.parameterization, name="stem")(x)
        x = nn.relu(nn.LayerNorm(name="stem_norm")(x))
        for stage in range(3):
            for i in range(blocks_per_stage(self.depth)):
                strides = 2 if stage > 0 and i == 0 else 1
                features = STEM_CHANNELS * self.width * 2**stage
                x = Block(features, strides, self.parameterization, name=f"stage{stage + 1}_block{i}")(x)
        return Dense(self.num_classes, self.parameterization, name="readout")(x.mean(axis=(1, 2)))
