"""Models of the paper (§4) under SP or μP (§3): `build_model(name, param=…, …)`."""

import flax.linen as nn

from warmup.models.cnn import CNN
from warmup.models.fcn import FCN
from warmup.models.parameterization import (
    PARAMETERIZATIONS,
    Embed,
    adam_lr_multipliers,
    check_parameterization,
    layer_kinds,
)
from warmup.models.transformer import Transformer
from warmup.models.wrn import WRN

MODELS = ("fcn", "cnn", "wrn", "transformer")
_CLASSES = {"fcn": FCN, "cnn": CNN, "wrn": WRN, "transformer": Transformer}


def build_model(name: str, *, param: str, num_classes: int, width: int, depth: int, **options) -> nn.Module:
    """The model `name`; `apply({'params': p}, x)` maps NHWC images x to logits (batch, num_classes), or, for the
    transformer, int tokens (batch, T) to next-token logits (batch, T, num_classes = vocabulary size).
    `options` are the model's other fields (transformer: `heads`, `norm`)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    check_parameterization(param)
    fields = set(_CLASSES[name].__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"model.{unknown[0]}: not an option of model={name}; allowed: "
                         f"{', '.join(sorted(fields - {'parameterization', 'num_classes'}))}")
    return _CLASSES[name](parameterization=param, num_classes=num_classes, width=width, depth=depth, **options)


__all__ = ["Embed", "MODELS", "Transformer", "PARAMETERIZATIONS", "adam_lr_multipliers", "build_model", "layer_kinds"]
