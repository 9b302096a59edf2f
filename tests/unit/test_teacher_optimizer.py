"""`[teacher] optimizer`: "sgd" (default, the paper's) or "adam" (a study option for feedback-only MPL)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpltools.config import load_recipe
from mpltools.errors import MplError
from mpltools.methods.optim import WD_KEY, build_adam, build_sgd


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)


def test_default_is_sgd_and_adam_is_teacher_only():
    assert load_recipe(None).teacher.optimizer == "sgd"
    assert load_recipe(None).student.optimizer == "sgd"
    assert load_recipe(None, ['teacher.optimizer="adam"']).teacher.optimizer == "adam"
    with pytest.raises(MplError, match="student.optimizer"):
        load_recipe(None, ['student.optimizer="adam"'])
    with pytest.raises(MplError):
        load_recipe(None, ['teacher.optimizer="rmsprop"'])


def test_adam_and_sgd_share_the_decay_groups():
    net = _Net()
    no_decay = {"bn.weight", "bn.bias"}
    sgd, adam = build_sgd(net, 0.1, 0.9, True, 5e-4, no_decay), build_adam(net, 1e-3, 5e-4, no_decay)
    assert type(sgd) is torch.optim.SGD and type(adam) is torch.optim.Adam
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 0.0
    assert adam.defaults["weight_decay"] == 0.0 and adam.defaults["lr"] == 1e-3
    for opt in (sgd, adam):
        assert [g[WD_KEY] for g in opt.param_groups] == [5e-4, 0.0]
        assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
        assert opt.param_groups[0]["params"][0] is net.fc.weight


def test_adam_step_is_scale_free():
    """The reason for the option: a gradient 1e5 times smaller moves Adam's weights (almost) as far."""
    moves = []
    for scale in (1.0, 1e-5):
        torch.manual_seed(0)
        net = nn.Linear(4, 1)
        before = net.weight.detach().clone()
        opt = build_adam(net, 1e-2)
        net.weight.grad, net.bias.grad = torch.ones_like(net.weight) * scale, torch.ones_like(net.bias) * scale
        opt.step()
        moves.append((net.weight.detach() - before).abs().max().item())
    assert moves[0] == pytest.approx(1e-2, rel=1e-3) and moves[1] == pytest.approx(1e-2, rel=1e-2)
