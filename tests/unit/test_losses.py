"""Losses, schedules, EMA and the optimiser helpers against hand-computed values.

Every expected number below is derived by hand from chosen inputs (logits built from logs of
simple probabilities), not by re-running the formula under test.
"""

import math

import pytest
import torch
from torch import nn

from mpltools.losses import flat_cosine, flat_dot, smoothed_cross_entropy, uda_consistency, uda_weight
from mpltools.methods.optim import (
    EMA,
    WD_KEY,
    apply_weight_decay_and_clip,
    build_sgd,
    ema_decay_at,
    learning_rate,
    norm_parameter_names,
)

LN = math.log


def t(x):
    return torch.tensor(x, dtype=torch.float64)


# ----------------------------------------------------------------------------- cross-entropy


def test_smoothed_ce_integer_labels():
    # row 0: p = [3/4, 1/4], label 0; row 1: p = [1/2, 1/2], label 1.
    logits = t([[LN(3), 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    assert smoothed_cross_entropy(logits, y).item() == pytest.approx((-LN(0.75) + LN(2)) / 2, abs=1e-12)
    # ls = 0.2, K = 2: target row 0 = [0.9, 0.1]; the uniform row is unaffected.
    expected = (-(0.9 * LN(0.75) + 0.1 * LN(0.25)) + LN(2)) / 2
    assert smoothed_cross_entropy(logits, y, 0.2).item() == pytest.approx(expected, abs=1e-12)


def test_smoothed_ce_four_classes():
    # p = [0.1, 0.2, 0.3, 0.4]; label 3, ls 0.4 -> target 0.6 * onehot + 0.1 = [.1, .1, .1, .7].
    logits = t([[LN(1), LN(2), LN(3), LN(4)]])
    expected = -(0.1 * LN(0.1) + 0.1 * LN(0.2) + 0.1 * LN(0.3) + 0.7 * LN(0.4))
    assert smoothed_cross_entropy(logits, torch.tensor([3]), 0.4).item() == pytest.approx(expected, abs=1e-12)


def test_smoothed_ce_probability_targets_and_their_gradient():
    logits = t([[LN(3), 0.0]])
    # A one-hot probability target equals the integer label.
    assert smoothed_cross_entropy(logits, t([[1.0, 0.0]]), 0.2).item() == pytest.approx(
        -(0.9 * LN(0.75) + 0.1 * LN(0.25)), abs=1e-12
    )
    # [0.25, 0.75] smoothed with 0.2 -> [0.3, 0.7].
    target = t([[0.25, 0.75]]).requires_grad_(True)
    loss = smoothed_cross_entropy(logits, target, 0.2)
    assert loss.item() == pytest.approx(-(0.3 * LN(0.75) + 0.7 * LN(0.25)), abs=1e-12)
    loss.backward()  # d loss / d target_k = -(1 - ls) * log p_k
    assert torch.allclose(target.grad, t([[-0.8 * LN(0.75), -0.8 * LN(0.25)]]), atol=1e-12)


# ----------------------------------------------------------------------------- UDA


def test_uda_mask_on_sharpened_distribution_and_denominator_counts_masked():
    # Row 0: weak logits [ln(3)/2, 0]; raw softmax max = sqrt3/(1+sqrt3) = 0.634 < 0.7, but
    # sharpened with T = 0.5 it is [3/4, 1/4], max 0.75 >= 0.7 -> kept. Row 1: uniform -> masked.
    weak = t([[LN(3) / 2, 0.0], [0.0, 0.0]]).requires_grad_(True)
    strong = t([[LN(3), 0.0], [5.0, -5.0]]).requires_grad_(True)
    loss, ratio = uda_consistency(weak, strong, temperature=0.5, threshold=0.7)
    # Kept row: CE(q=[.75,.25], p=[.75,.25]); divided by N = 2 (masked row counts).
    assert loss.item() == pytest.approx(-(0.75 * LN(0.75) + 0.25 * LN(0.25)) / 2, abs=1e-12)
    assert ratio.item() == 0.5
    loss.backward()
    assert weak.grad is None  # the target side is detached
    assert torch.count_nonzero(strong.grad[1]) == 0  # the masked row gets no gradient


def test_uda_weight_ramp():
    assert uda_weight(0, 8.0, 100) == 0.0
    assert uda_weight(25, 8.0, 100) == 2.0
    assert uda_weight(100, 8.0, 100) == 8.0
    assert uda_weight(1000, 8.0, 100) == 8.0
    assert uda_weight(0, 8.0, 0) == 8.0


def test_feedback_vector_helpers():
    assert flat_dot(t([1.0, 2.0]), t([3.0, 4.0])).item() == 11.0
    assert flat_cosine(t([1.0, 0.0]), t([0.0, 2.0])).item() == 0.0
    assert flat_cosine(t([3.0, 4.0]), t([-6.0, -8.0])).item() == pytest.approx(-1.0, abs=1e-15)
    assert flat_cosine(t([3.0, 4.0]), t([0.0, 0.0])).item() == 0.0  # no movement -> 0, not NaN


# ----------------------------------------------------------------------------- schedules


def test_learning_rate_warmup_then_cosine_to_zero():
    lr = lambda s: learning_rate(s, 1.0, warmup_steps=10, total_steps=110)  # noqa: E731
    assert lr(0) == pytest.approx(0.1)
    assert lr(4) == pytest.approx(0.5)
    assert lr(9) == pytest.approx(1.0)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.5)  # half-way through the 100 decay steps
    assert lr(35) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr(110) == pytest.approx(0.0, abs=1e-15)
    assert lr(500) == pytest.approx(0.0, abs=1e-15)


def test_learning_rate_wait_then_warmup_then_cosine():
    lr = lambda s: learning_rate(s, 0.4, warmup_steps=10, total_steps=115, wait_steps=5)  # noqa: E731
    assert lr(0) == 0.0 and lr(4) == 0.0
    assert lr(5) == pytest.approx(0.04)
    assert lr(14) == pytest.approx(0.4)
    assert lr(65) == pytest.approx(0.2)  # 50 of D = 115 - 10 - 5 = 100 decay steps
    assert lr(115) == pytest.approx(0.0, abs=1e-15)


def test_learning_rate_constant_and_linear():
    assert learning_rate(3, 1.0, 10, 110, schedule="constant") == pytest.approx(0.4)
    assert learning_rate(100, 1.0, 10, 110, schedule="constant") == 1.0
    assert learning_rate(60, 1.0, 10, 110, schedule="linear") == pytest.approx(0.5)
    assert learning_rate(85, 1.0, 10, 110, schedule="linear") == pytest.approx(0.25)
    assert learning_rate(0, 1.0, 0, 110, schedule="constant") == 1.0  # no warm-up
    with pytest.raises(ValueError):
        learning_rate(20, 1.0, 10, 110, schedule="step")


def test_ema_decay_warmup():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.999) == pytest.approx(0.91)
    assert ema_decay_at(10_000, 0.99) == 0.99
    assert ema_decay_at(5, 0.0) == 0.0


# ----------------------------------------------------------------------------- EMA


def _lin_bn():
    m = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        m[0].weight.fill_(1.0)
        m[1].running_mean.fill_(0.0)
    return m


def test_ema_averages_parameters_and_buffers():
    model = _lin_bn()
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[1].running_mean.fill_(1.0)
        model[1].num_batches_tracked.fill_(5)
    ema.update(model, step=0)  # decay min(0.5, 1/10) = 0.1
    assert ema.shadow["0.weight"].item() == pytest.approx(0.1 * 1.0 + 0.9 * 2.0)
    assert ema.shadow["1.running_mean"].item() == pytest.approx(0.9)
    assert ema.shadow["1.num_batches_tracked"].item() == 5
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    ema.update(model, step=90)  # decay min(0.5, 0.91) = 0.5
    assert ema.shadow["0.weight"].item() == pytest.approx(0.5 * 1.9 + 0.5 * 3.0)

    fresh = _lin_bn()
    ema.copy_to(fresh)
    assert fresh[0].weight.item() == pytest.approx(2.45)
    other = EMA(_lin_bn(), decay=0.5)
    other.load_state_dict({k: v.clone() for k, v in ema.state_dict().items()})
    assert other.shadow["0.weight"].item() == pytest.approx(2.45)
    with pytest.raises(KeyError):
        other.load_state_dict({"0.weight": torch.zeros(1, 1)})


def test_ema_with_zero_decay_tracks_raw_weights():
    model = _lin_bn()
    ema = EMA(model, decay=0.0)
    with torch.no_grad():
        model[0].weight.fill_(-7.0)
    ema.update(model, step=3)
    assert ema.shadow["0.weight"].item() == -7.0


# ----------------------------------------------------------------------------- weight decay + clip


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.bn(self.lin(x))


def _tiny_with_values():
    m = _Tiny()
    with torch.no_grad():
        m.lin.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.0]]))
        m.lin.bias.copy_(torch.tensor([0.0, 4.0]))
        m.bn.weight.copy_(torch.tensor([2.0, 2.0]))
        m.bn.bias.copy_(torch.tensor([1.0, 1.0]))
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    return m


def test_norm_parameter_names_finds_norm_layers_only():
    assert norm_parameter_names(_Tiny()) == {"bn.weight", "bn.bias"}


def test_weight_decay_skips_no_decay_names_and_decays_biases():
    m = _tiny_with_values()
    opt = build_sgd(m, lr=0.1, weight_decay=0.1, no_decay_names=norm_parameter_names(m))
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)  # torch's own decay is off
    assert sorted(g[WD_KEY] for g in opt.param_groups) == [0.0, 0.1]
    norm = apply_weight_decay_and_clip(opt, None)
    assert torch.equal(m.lin.weight.grad, torch.tensor([[0.3, 0.0], [0.0, 0.0]]))
    assert torch.allclose(m.lin.bias.grad, torch.tensor([0.0, 0.4]))
    assert torch.count_nonzero(m.bn.weight.grad) == 0 and torch.count_nonzero(m.bn.bias.grad) == 0
    assert norm.item() == pytest.approx(0.5)


def test_weight_decay_is_added_before_clipping():
    # Gradients 0, decay 1: decayed gradient = theta of the linear layer, norm 5. Clip at 1 ->
    # theta / 5. Clipping first (norm 0, nothing to clip) would leave a gradient of norm 5.
    m = _tiny_with_values()
    opt = build_sgd(m, lr=0.1, weight_decay=1.0, no_decay_names={"bn.weight", "bn.bias"})
    norm = apply_weight_decay_and_clip(opt, max_grad_norm=1.0)
    assert norm.item() == pytest.approx(5.0)
    assert torch.allclose(m.lin.weight.grad, torch.tensor([[0.6, 0.0], [0.0, 0.0]]))
    assert torch.allclose(m.lin.bias.grad, torch.tensor([0.0, 0.8]))


def test_clipping_leaves_small_gradients_untouched():
    m = _tiny_with_values()
    opt = build_sgd(m, lr=0.1, weight_decay=0.1, no_decay_names=set())
    apply_weight_decay_and_clip(opt, max_grad_norm=100.0)
    assert torch.equal(m.lin.weight.grad, torch.tensor([[3.0, 0.0], [0.0, 0.0]]) * 0.1)


def test_build_sgd_rejects_unknown_no_decay_names():
    with pytest.raises(ValueError, match="bn.gamma"):
        build_sgd(_Tiny(), lr=0.1, no_decay_names={"bn.gamma"})
