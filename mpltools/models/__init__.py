"""Model registry and architectures: pure torch, no I/O.

``build_model(name, num_classes, input_shape, **kwargs)`` is the one way the rest of mpltools
creates a network; the name and kwargs (JSON values) are what checkpoints store to rebuild it.

Every model returns logits ``(N, num_classes)`` from float32 NCHW images (already normalised)
or ``(N, D)`` vectors, names its final dense layer ``fc``, and has no dtype- or
memory-format-specific code (channels_last and bf16 autocast work).
"""

from .efficientnet import EFFICIENTNET_PARAMS, EfficientNetParams
from .registry import (
    MODEL_NAMES,
    build_model,
    count_parameters,
    model_kwargs,
    norm_parameter_names,
    validate_model_args,
)

__all__ = [
    "EFFICIENTNET_PARAMS",
    "EfficientNetParams",
    "MODEL_NAMES",
    "build_model",
    "count_parameters",
    "model_kwargs",
    "norm_parameter_names",
    "validate_model_args",
]
