"""Models of the paper (§4) under SP or μP (§3): `build_model(name, param=…, …)`."""

import flax.linen as nn

from warmup.models.cnn import CNN
from warmup.models.fcn import FCN
from warmup.models.parameterization import (
    PARAMETERIZATIONS,
    adam_lr_multipliers,
    check_parameterization,
    layer_kinds,
)
from warmup.models.wrn import WRN

MODELS = ("fcn", "cnn", "wrn")
_CLASSES = {"fcn": FCN, "cnn": CNN, "wrn": WRN}


def build_model(name: str, *, param: str, num_classes: int, width: int, depth: int) -> nn.Module:
    """The model `name`; `apply({'params': p}, x)` maps NHWC images x to logits (batch, num_classes)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    check_parameterization(param)
    return _CLASSES[name](parameterization=param, num_classes=num_classes, width=width, depth=depth)


__all__ = ["MODELS", "PARAMETERIZATIONS", "adam_lr_multipliers", "build_model", "layer_kinds"]
