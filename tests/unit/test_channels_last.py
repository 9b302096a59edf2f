"""Channels-last by default for convolutional networks, and one layout change from loader bytes to
model input."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mpltools.config import load_recipe
from mpltools.data.codecs import InputSpec
from mpltools.data.loaders import to_model_input
from mpltools.errors import UsageError
from mpltools.models import build_model
from mpltools.networks import use_channels_last
from mpltools.train_data import DataSetup

NORM = ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


class _FullCopies(TorchDispatchMode):
    """Counts the ops that write a new tensor of the whole batch's size (copies, layout changes)."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.names = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inplace = func._schema.name.endswith("_") or any(a.is_write for a in func._schema.arguments if a.alias_info)
        if isinstance(out, torch.Tensor) and out.numel() == self.numel and not inplace and not func.is_view:
            self.names.append(func.__name__)
        return out


@pytest.mark.parametrize("channels", [3, 1])
def test_to_model_input_makes_one_copy_and_the_same_values_in_either_layout(channels):
    x = torch.randint(0, 256, (5, 6, 7, channels), dtype=torch.uint8)
    results = {}
    for channels_last in (False, True):
        with _FullCopies(x.numel()) as mode:
            y = to_model_input(x, (NORM[0][:channels], NORM[1][:channels]), "cpu", channels_last)
        assert mode.names == ["_to_copy.default"], mode.names  # the float conversion is the only copy
        assert y.shape == (5, channels, 6, 7) and y.dtype == torch.float32
        assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        results[channels_last] = y
    assert torch.equal(results[True], results[False])
    expected = (
        x.permute(0, 3, 1, 2).double() / 255 - torch.tensor(NORM[0][:channels]).double().view(1, -1, 1, 1)
    ) / torch.tensor(NORM[1][:channels]).double().view(1, -1, 1, 1)
    torch.testing.assert_close(results[True].double(), expected, rtol=1e-6, atol=1e-6)


def _data(kind: str) -> DataSetup:
    spec = InputSpec(kind, "png" if kind == "image" else "npy", (8, 8, 3) if kind == "image" else (2,))
    return DataSetup(None, None, None, ["a", "b"], spec, (3, 8, 8), None, {}, True)


def test_auto_means_convolutional_networks_over_images():
    cnn, mlp = build_model("small_cnn", 2, (3, 8, 8), width=4), build_model("mlp", 2, (2,))
    image, vector = _data("image"), _data("vector")
    assert use_channels_last("auto", image, cnn) and use_channels_last("auto", image, mlp, cnn)
    assert not use_channels_last("auto", image, mlp) and not use_channels_last("auto", vector, mlp)
    assert use_channels_last(True, image, mlp) and not use_channels_last(True, vector, mlp)
    assert not use_channels_last(False, image, cnn)


def test_channels_last_recipe_key_takes_auto_true_false_and_nothing_else():
    assert load_recipe(None).runtime.channels_last == "auto"
    for value in ("true", "false", '"auto"'):
        assert load_recipe(None, [f"runtime.channels_last={value}"]).runtime.channels_last == {"true": True, "false": False}.get(
            value, "auto"
        )
    for value in ("1", "yes", "0"):
        with pytest.raises(UsageError, match=r"runtime.channels_last .* choose one of 'auto', true, false"):
            load_recipe(None, [f"runtime.channels_last={value}"])
