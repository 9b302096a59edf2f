"""In-place activations change no number: every MPL feedback path through a network whose
activations overwrite their BN's output gives bitwise the same update as the same network run out of
place, including the double-backward of soft pseudo labels (the teacher's meta-gradient
differentiates through the student's gradient, so autograd needs what the forward saved twice).

If an in-place op overwrote a tensor autograd saved, autograd would raise (version counter) or, were
the check bypassed, the gradients would differ: either way these tests fail.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mpltools.methods import Batch, MPLHyper, Networks, build_sgd, mpl_step
from mpltools.models import build_model

SHAPE = (3, 8, 8)
TINY = {"wide_resnet": {"depth": 10, "widen": 1, "dropout": 0.0}, "small_cnn": {"width": 4}}


def _activations(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.LeakyReLU, nn.ReLU))]


def _out_of_place(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    for m in _activations(twin):
        m.inplace = False
    return twin


def _nets(teacher: nn.Module, student: nn.Module, hp: MPLHyper) -> Networks:
    return Networks(
        teacher,
        student,
        build_sgd(teacher, hp.teacher_lr, hp.momentum, hp.nesterov),
        build_sgd(student, hp.student_lr, hp.momentum, hp.nesterov),
    )


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("pseudo_labels,feedback", [("soft", "taylor"), ("sample", "dot"), ("argmax", "taylor")])
def test_in_place_activations_give_bitwise_the_same_mpl_step(name, pseudo_labels, feedback):
    torch.manual_seed(0)
    teacher = build_model(name, 3, SHAPE, **TINY[name]).double()
    student = build_model(name, 3, SHAPE, **TINY[name]).double()
    assert _activations(teacher) and all(m.inplace for m in _activations(teacher))
    g = torch.Generator().manual_seed(1)
    batch = Batch(
        torch.randn(4, *SHAPE, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (4,), generator=g),
        torch.randn(8, *SHAPE, generator=g, dtype=torch.float64),
        torch.randn(8, *SHAPE, generator=g, dtype=torch.float64),
    )
    # Nesterov momentum and a real student lr: the soft meta-gradient's step size is not trivial.
    hp = MPLHyper(
        total_steps=10,
        teacher_lr=0.1,
        student_lr=0.2,
        teacher_warmup=0,
        student_warmup=0,
        student_wait=0,
        lr_schedule="constant",
        momentum=0.9,
        nesterov=True,
        label_smoothing=0.1,
        uda_weight=1.0,
        uda_ramp_steps=1,
        uda_threshold=0.0,
        baseline=False,
        pseudo_labels=pseudo_labels,
        feedback=feedback,
    )
    runs = []
    for t, s in ((teacher, student), (_out_of_place(teacher), _out_of_place(student))):
        nets = _nets(t, s, hp)
        metrics = [mpl_step(nets, batch, step, hp, generator=torch.Generator().manual_seed(7)) for step in range(2)]
        runs.append((nets, metrics))
    (a, ma), (b, mb) = runs
    for x, y in ((a.teacher, b.teacher), (a.student, b.student)):
        for (n, p), (_, q) in zip(x.named_parameters(), y.named_parameters()):
            assert torch.equal(p, q), n
            assert torch.equal(p.grad, q.grad), n
    assert all(torch.equal(ma[-1][k], mb[-1][k]) for k in ma[-1])
    assert float(a.teacher_opt.param_groups[0]["lr"]) > 0 and float(ma[-1]["teacher/mpl"]) != 0.0  # the MPL term is live
