"""The model registry: short, stable names -> builder functions, and the checks around them.

A checkpoint stores only ``arch`` (a registry name) and ``arch_kwargs`` (JSON), and every
downstream command rebuilds the network from those two values alone. So this module is strict:
names and keyword arguments are validated before anything is built, errors list the valid
choices, and kwargs must be plain JSON values.

Reads nothing, writes nothing; importing it only defines things.
"""

from __future__ import annotations

import difflib
import inspect
import numbers
from collections.abc import Callable
from typing import Any

from torch import nn

from . import efficientnet, mlp, reduced_teacher, resnet, small_cnn, wide_resnet

# name -> (builder, arguments fixed by the name). A builder is called as
# ``builder(num_classes, input_shape, **kwargs)``; its keyword-only parameters (minus the fixed
# ones) are exactly the kwargs a user may pass, with the signature's defaults.
# A literal table rather than decorators, so one screen shows every name a recipe may use.
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {
    "mlp": (mlp.build_mlp, {}),
    "reduced_teacher": (reduced_teacher.build_reduced_teacher, {}),  # Reduced MPL: input = stored logits
    "small_cnn": (small_cnn.build_small_cnn, {}),
    "wide_resnet": (wide_resnet.build_wide_resnet, {}),
    "wrn28_2": (wide_resnet.build_wide_resnet, {"depth": 28, "widen": 2}),
    "wrn28_8": (wide_resnet.build_wide_resnet, {"depth": 28, "widen": 8}),
    "resnet18": (resnet.build_resnet, {"depth": 18}),
    "resnet34": (resnet.build_resnet, {"depth": 34}),
    "resnet50": (resnet.build_resnet, {"depth": 50}),
    **{
        f"efficientnet_{variant}": (efficientnet.build_efficientnet, {"variant": variant})
        for variant in efficientnet.EFFICIENTNET_PARAMS
    },
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)

# Values that survive a JSON round trip unchanged (tuples come back as lists; builders accept both).
_JSON_SCALARS = (bool, int, float, str, type(None))


def _lookup(name: str) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), MODEL_NAMES, n=1, cutoff=0.4)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown model {name!r}.{hint} Valid names: {', '.join(MODEL_NAMES)}.")
    return _REGISTRY[name]


def model_kwargs(name: str) -> dict[str, Any]:
    """Return the keyword arguments model ``name`` accepts, mapped to their defaults.

    ``None`` as a default means "derived from the name" (e.g. an EfficientNet's dropout comes
    from :data:`EFFICIENTNET_PARAMS`).

    Raises:
        ValueError: ``name`` is not a registered model.
    """
    builder, fixed = _lookup(name)
    return {
        p.name: p.default
        for p in inspect.signature(builder).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in fixed
    }


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # v == v: not NaN


_COUNT_MAX = 1 << 16  # layers, channels, units: far above any network here, far below what would overflow torch


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= _COUNT_MAX


# Ranges shared by every model that takes the argument, so a bad recipe value fails at parse
# time with the key's name. Model-specific rules (WRN depth = 6n + 4, ...) live in the builders.
_VALUE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **dict.fromkeys(
        ("dropout", "drop_connect_rate"),
        (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ),
    "bn_momentum": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "bn_eps": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "leaky_slope": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "init_range": (lambda v: v is None or (_is_number(v) and v >= 0), "a number >= 0 or null"),
    **dict.fromkeys(
        ("width_coefficient", "depth_coefficient"),
        (lambda v: v is None or (_is_number(v) and v > 0), "a number > 0 or null"),
    ),
    **dict.fromkeys(
        ("depth", "widen", "width", "stem_width"),
        (lambda v: _is_count(v), f"a positive integer up to {_COUNT_MAX}"),
    ),
    "hidden": (
        lambda v: isinstance(v, (list, tuple)) and all(_is_count(h) for h in v),
        f"a list of positive integers up to {_COUNT_MAX}",
    ),
    "zero_init_residual": (lambda v: isinstance(v, bool), "true or false"),
}


def _is_json_value(value: Any) -> bool:
    if isinstance(value, _JSON_SCALARS):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json_value(v) for v in value)
    return False


def validate_model_args(name: str, kwargs: dict[str, Any]) -> None:
    """Check a model name and its kwargs without building anything (cheap even for L2).

    Raises:
        ValueError: unknown name (with the nearest valid one), unknown kwarg (with the valid
            ones), a value out of its range, or a value that would not survive the JSON round
            trip through a checkpoint.
    """
    valid = model_kwargs(name)
    fixed = _REGISTRY[name][1]
    for key, value in kwargs.items():
        if key in fixed:
            builder = _REGISTRY[name][0]
            related = [n for n, (b, _) in _REGISTRY.items() if b is builder and n != name]
            raise ValueError(
                f"Model {name!r} fixes {key}={fixed[key]!r} by its name; pick another name to "
                f"change it (same family: {', '.join(related)})."
            )
        if key not in valid:
            close = difflib.get_close_matches(key, list(valid), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Model {name!r} got an unknown argument {key!r}.{hint} Valid arguments: {', '.join(valid) or '(none)'}."
            )
        if not _is_json_value(value):
            raise ValueError(
                f"Model {name!r} argument {key!r} must be a JSON scalar or list (it is stored in "
                f"checkpoint metadata), got {type(value).__name__}."
            )
        rule = _VALUE_RULES.get(key)
        if rule is not None and not rule[0](value):
            raise ValueError(f"Model {name!r} argument {key!r} must be {rule[1]}, got {value!r}.")


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...], **kwargs: Any) -> nn.Module:
    """Build a freshly initialised model from its registry name.

    Works under ``with torch.device("meta"):`` (all initialisation goes through ``nn.init``),
    which is how very large members are sized without allocating their weights.

    Args:
        name: one of :data:`MODEL_NAMES`.
        num_classes: size of the logits.
        input_shape: shape of one sample without the batch dimension: ``(C, H, W)`` for
            images, ``(D,)`` for vectors.
        **kwargs: architecture options, JSON values only (see :func:`model_kwargs`).

    Returns:
        A module whose ``forward(x)`` returns logits of shape ``(N, num_classes)``.

    Raises:
        ValueError: unknown name or kwarg, a bad value, or an input shape the model cannot take.
    """
    builder, fixed = _lookup(name)
    validate_model_args(name, kwargs)
    if not _is_positive_int(num_classes):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    # Shapes arrive as JSON lists or numpy ints from manifests; normalise to a tuple of ints.
    shape = tuple(input_shape)
    if not shape or not all(_is_positive_int(d) for d in shape):
        raise ValueError(f"input_shape must be positive integers, got {input_shape!r}.")
    return builder(int(num_classes), tuple(int(d) for d in shape), **fixed, **kwargs)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once); works on the meta device."""
    return sum(p.numel() for p in model.parameters())


# _NormBase covers BatchNorm1d/2d/3d, SyncBatchNorm, the lazy variants and InstanceNorm*.
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def norm_parameter_names(model: nn.Module) -> set[str]:
    """Full names (as in ``model.named_parameters()``) of normalisation-layer parameters.

    Weight decay skips exactly these, as the authors' code skips its BN variables; conv and
    dense biases are decayed. Call it on the same object whose ``named_parameters()`` the
    optimiser groups are built from (a wrapper adds prefixes such as ``module.``).
    """
    names: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            prefix = f"{module_name}." if module_name else ""
            names.update(prefix + p for p, _ in module.named_parameters(recurse=False))
    return names
