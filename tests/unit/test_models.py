"""Model registry: every model builds, runs forward/backward, and matches published sizes.

Fast by construction: tiny inputs, tiny widths for the big EfficientNets, and parameter
counts of the large models taken on the meta device (no weights allocated).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpltools.models import (
    EFFICIENTNET_PARAMS,
    MODEL_NAMES,
    build_model,
    count_parameters,
    model_kwargs,
    norm_parameter_names,
    validate_model_args,
)


def _tiny_config(name: str) -> tuple[tuple[int, ...], dict]:
    """A small input shape and kwargs for which ``name`` runs in well under a second."""
    kwargs = {"dropout": 0.0} if "dropout" in model_kwargs(name) else {}
    if "drop_connect_rate" in model_kwargs(name):
        kwargs["drop_connect_rate"] = 0.0
    if name == "mlp":
        return (2,), kwargs
    if name == "reduced_teacher":
        return (5,), kwargs  # it reads a 5-class logit vector
    if name == "wide_resnet":
        return (1, 8, 8), {**kwargs, "depth": 10, "widen": 1}
    if name == "wrn28_8":
        return (3, 8, 8), kwargs
    if name == "efficientnet_b0":
        return (3, 32, 32), kwargs  # the real B0; the others keep their depth, not their width
    if name.startswith("efficientnet_"):
        return (3, 16, 16), {**kwargs, "width_coefficient": 0.1}
    return (3, 16, 16), kwargs


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_trains_every_parameter(name):
    torch.manual_seed(0)
    shape, kwargs = _tiny_config(name)
    model = build_model(name, 5, shape, **kwargs).train()
    x = torch.randn(4, *shape)
    logits = model(x)
    assert logits.shape == (4, 5)
    assert logits.dtype == torch.float32
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad[:5]}"
    # Every model exposes its classifier under the same name.
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 5


def _meta_count(name: str, num_classes: int, **kwargs) -> int:
    with torch.device("meta"):
        return count_parameters(build_model(name, num_classes, (3, 224, 224), **kwargs))


def test_parameter_counts_match_published_sizes():
    # WRN-28-2: the paper says 1.45M; the standard WRN (stem 16) has 1,467,610 (+1.2%), the
    # authors' released code (stem 16k = 32) 1,472,170 (+1.5%). Neither is within 1% of 1.45M,
    # so pin the exact counts and keep the paper's figure at 1.5%.
    wrn = _meta_count("wrn28_2", 10)
    assert wrn == 1_467_610
    assert _meta_count("wrn28_2", 10, stem_width=32) == 1_472_170
    assert wrn == pytest.approx(1.45e6, rel=0.015)
    assert _meta_count("wrn28_8", 100) == 23_401_012  # 23.4M, as the PyTorch MPL port reports
    # ResNets: torchvision's counts exactly (dropout and BN settings add no parameters).
    assert _meta_count("resnet50", 1000) == 25_557_032
    assert _meta_count("resnet34", 1000) == 21_797_672
    assert _meta_count("resnet18", 1000) == 11_689_512
    # EfficientNets: the reference implementation's counts.
    assert _meta_count("efficientnet_b0", 1000) == 5_288_548
    assert _meta_count("efficientnet_b7", 1000) == 66_347_960
    assert _meta_count("efficientnet_l2", 1000) == pytest.approx(480e6, rel=0.02)
    # B6-Wide = (width 5.0, depth 2.6) as in the authors' code ("efficientnet-b6-mpl") has
    # 316.6M parameters; the paper's table says 390M. Pinned so a change is noticed.
    assert _meta_count("efficientnet_b6_wide", 1000) == 316_649_180


def test_efficientnet_table_and_defaults():
    assert EFFICIENTNET_PARAMS["b0"].resolution == 224
    assert EFFICIENTNET_PARAMS["b6_wide"].width == 5.0
    assert EFFICIENTNET_PARAMS["b6_wide"].depth == EFFICIENTNET_PARAMS["b6"].depth
    assert {f"efficientnet_{v}" for v in EFFICIENTNET_PARAMS} <= set(MODEL_NAMES)
    model = build_model("efficientnet_b3", 10, (3, 16, 16), width_coefficient=0.1)
    assert model.dropout.p == EFFICIENTNET_PARAMS["b3"].dropout
    rates = [m.p for m in model.modules() if type(m).__name__ == "StochasticDepth"]
    assert rates == sorted(rates) and 0.0 <= rates[0] and rates[-1] < 0.2


def test_mlp_matches_the_twomoon_network():
    model = build_model("mlp", 2, (2,))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 8), (8, 8), (8, 2)]
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 2
    for name, p in model.named_parameters():
        assert p.abs().max() <= 0.1, name
    default_init = build_model("mlp", 2, (2,), init_range=0, hidden=[64])
    assert default_init.fc.weight.abs().max() > 0.1  # PyTorch's bound 1/sqrt(64) = 0.125


def test_wide_resnet_follows_the_authors_code():
    model = build_model("wrn28_2", 10, (3, 32, 32))
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts and all(m.negative_slope == 0.2 for m in acts)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.momentum == 0.01 and m.eps == 1e-3 for m in bns)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is None for m in convs)
    # Dropout only before the final dense layer.
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops == [model.dropout] and model.dropout.p == 0.2
    assert model.fc.weight.abs().max() <= 1 / math.sqrt(10)
    assert torch.all(model.fc.bias == 0)
    # Conv init: std sqrt(2 / fan_out) on the widest layer (big enough to measure).
    conv = convs[-1]
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)


def test_norm_parameter_names_are_exactly_the_bn_parameters():
    model = build_model("wrn28_2", 10, (3, 32, 32))
    expected = {
        f"{mod_name}.{p}"
        for mod_name, mod in model.named_modules()
        if isinstance(mod, nn.BatchNorm2d)
        for p in ("weight", "bias")
    }
    names = norm_parameter_names(model)
    assert names == expected
    assert names <= dict(model.named_parameters()).keys()
    assert "fc.bias" not in names and "head_bn.weight" in names
    # Also under a wrapper that prefixes names, and for LayerNorm / GroupNorm.
    wrapped = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 4), nn.GroupNorm(2, 4))
    assert norm_parameter_names(wrapped) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert norm_parameter_names(build_model("mlp", 2, (2,))) == set()


def test_unknown_model_name_suggests_the_nearest():
    with pytest.raises(ValueError, match="Did you mean 'wrn28_2'") as err:
        build_model("wrn-28-2", 10, (3, 32, 32))
    assert "efficientnet_b0" in str(err.value)  # lists the valid names
    with pytest.raises(ValueError, match="Did you mean 'resnet50'"):
        build_model("resnet_50", 10, (3, 32, 32))


def test_bad_kwargs_are_named():
    with pytest.raises(ValueError, match="'dropuot'.*Did you mean 'dropout'") as err:
        build_model("wrn28_2", 10, (3, 32, 32), dropuot=0.1)
    assert "leaky_slope" in str(err.value)
    with pytest.raises(ValueError, match="fixes depth=28 .*wide_resnet"):
        validate_model_args("wrn28_2", {"depth": 16})
    with pytest.raises(ValueError, match="JSON"):
        build_model("small_cnn", 10, (3, 8, 8), width=torch.tensor(8))
    with pytest.raises(ValueError, match="'dropout' must be a number in \\[0, 1\\)"):
        build_model("resnet18", 10, (3, 32, 32), dropout=1.5)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        build_model("wide_resnet", 10, (3, 32, 32), depth=27)
    with pytest.raises(ValueError, match="activation"):
        build_model("mlp", 2, (2,), activation="gelu")
    with pytest.raises(ValueError, match="image input"):
        build_model("wrn28_2", 10, (2,))


def test_rebuild_from_json_metadata_gives_identical_weights():
    kwargs = {"hidden": [16, 4], "activation": "tanh"}
    torch.manual_seed(3)
    first = build_model("mlp", 3, (5,), **kwargs)
    restored = json.loads(json.dumps({"arch": "mlp", "kwargs": kwargs}))
    torch.manual_seed(3)
    second = build_model(restored["arch"], 3, (5,), **restored["kwargs"])
    for (n1, p1), (n2, p2) in zip(first.state_dict().items(), second.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    for name in MODEL_NAMES:
        json.dumps(model_kwargs(name))  # defaults are JSON too


@pytest.mark.parametrize("training", [False, True])
def test_channels_last_matches_contiguous(training):
    torch.manual_seed(0)
    model = build_model("wide_resnet", 10, (3, 16, 16), depth=10, widen=2, dropout=0.0)
    model.train(training)
    x = torch.randn(4, 3, 16, 16)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    got = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["small_cnn", "wide_resnet", "resnet18", "efficientnet_b1"])
def test_bf16_autocast_forward(name):
    shape, kwargs = _tiny_config(name)
    model = build_model(name, 5, shape, **kwargs).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(2, *shape))
    assert logits.shape == (2, 5) and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 4, 4), (5, 7, 9), (3, 1, 1)])
def test_small_cnn_takes_any_image_size(shape):
    model = build_model("small_cnn", 10, shape, width=8).eval()
    assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_stochastic_depth_only_in_training():
    torch.manual_seed(0)
    model = build_model("efficientnet_b0", 4, (3, 16, 16), width_coefficient=0.1, drop_connect_rate=0.5, dropout=0.0)
    x = torch.randn(3, 3, 16, 16)
    model.eval()
    torch.testing.assert_close(model(x), model(x))  # deterministic at evaluation
    model.train()
    assert model(x).shape == (3, 4)
