"""The MPL step in every precision the recipe accepts (bf16 and fp16 autocast on the CPU stand in
for the GPU default), fp16 loss scaling, and the autocast weight cache.

Each comparison runs one step from the same initial networks and batch in fp32 and inside the
trainer's precision region (`Runtime.autocast`). The student takes a Nesterov step; only the MPL
term trains the teacher (supervised and UDA weights 0, teacher lr 0, no baseline), so the
teacher's ``.grad`` after the step is its MPL gradient. Measured on the code before this fix
(bf16): taylor h exactly 0 without BN and 85-98% off with BN; dot/cosine 10-290% off, wrong sign
with soft labels; the soft meta-gradient's cosine with fp32 down to 0.91. Tolerance here: 5%
relative (measured after the fix: at most 1.3%).
"""

import copy

import pytest
import torch
from torch import nn

from mpltools.losses import flat_cosine
from mpltools.methods import Batch, MPLHyper, Networks, build_sgd, mpl_step
from mpltools.methods.precision import LossScaler
from mpltools.runtime import Runtime

PRECISIONS = ("bf16", "fp16")
LRS = (1e-3, 1e-2, 0.1, 0.3)
REL_TOL = 0.05


def _runtime(precision: str) -> Runtime:
    return Runtime(None, torch.device("cpu"), 0, 1, True, precision, None)


def _cnn(seed: int, bn: bool) -> nn.Module:
    torch.manual_seed(seed)
    norm = (lambda: [nn.BatchNorm2d(8)]) if bn else (lambda: [])
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        *norm(),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        *norm(),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def _batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        torch.randn(16, 1, 8, 8, generator=g),
        torch.randint(0, 4, (16,), generator=g),
        torch.randn(32, 1, 8, 8, generator=g),
        torch.randn(32, 1, 8, 8, generator=g),
    )


def _hp(lr: float, feedback: str, pseudo_labels: str, **kw) -> MPLHyper:
    base = dict(
        total_steps=10,
        teacher_lr=0.0,
        student_lr=lr,
        lr_schedule="constant",
        momentum=0.9,
        nesterov=True,
        teacher_weight_decay=0.0,
        student_weight_decay=0.0,
        uda_weight=0.0,
        teacher_supervised_weight=0.0,
        baseline=False,
        pseudo_labels=pseudo_labels,
        feedback=feedback,
        label_smoothing=0.1,
    )
    return MPLHyper(**{**base, **kw})


def _nets(hp: MPLHyper, bn: bool, precision: str, scale: float = 2.0**8) -> Networks:
    t, s = _cnn(1, bn), _cnn(2, bn)
    nets = Networks(
        t, s, build_sgd(t, hp.teacher_lr, hp.momentum, hp.nesterov), build_sgd(s, hp.student_lr, hp.momentum, hp.nesterov)
    )
    if precision == "fp16":
        nets.teacher_scaler, nets.student_scaler = LossScaler(scale), LossScaler(scale)
    return nets


def _one_step(precision: str, hp: MPLHyper, bn: bool) -> tuple[float, torch.Tensor]:
    nets = _nets(hp, bn, precision)
    with _runtime(precision).autocast():
        out = mpl_step(nets, _batch(), 0, hp)
    return float(out["feedback/h"]), torch.cat([p.grad.reshape(-1) for p in nets.teacher.parameters()])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_trainers_precision_region_sees_a_weight_updated_in_place(precision):
    """Autocast's weight cache would serve the pre-update copy inside one region (the bug behind h = 0)."""
    torch.manual_seed(0)
    model, x = nn.Linear(4, 3), torch.randn(5, 4)
    with _runtime(precision).autocast():
        before = model(x)
        with torch.no_grad():
            model.weight.add_(0.5)
        after = model(x)
        fresh = nn.functional.linear(x, model.weight, model.bias)
    assert before.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert not torch.equal(before, after)
    assert torch.equal(after, fresh)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("bn", [False, True], ids=["no_bn", "bn"])
@pytest.mark.parametrize("pseudo_labels", ["argmax", "soft"])
@pytest.mark.parametrize("feedback", ["taylor", "dot", "cosine"])
def test_feedback_and_teacher_gradient_match_fp32(precision, bn, pseudo_labels, feedback):
    for lr in LRS:
        hp = _hp(lr, feedback, pseudo_labels)
        h32, g32 = _one_step("no", hp, bn)
        h, g = _one_step(precision, hp, bn)
        assert abs(h32) > 1e-7, (lr, h32)  # a real signal to compare against
        assert (h > 0) == (h32 > 0), (lr, h, h32)
        assert abs(h - h32) <= REL_TOL * abs(h32), (lr, h, h32)
        assert float(flat_cosine(g, g32)) >= 0.99, lr


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("pseudo_labels", ["argmax", "soft"])
def test_student_view_weak_feedback_and_teacher_gradient_match_fp32(precision, pseudo_labels):
    for lr in LRS:
        hp = _hp(lr, "taylor", pseudo_labels, student_view="weak")
        h32, g32 = _one_step("no", hp, True)
        h, g = _one_step(precision, hp, True)
        assert abs(h32) > 1e-7, (lr, h32)
        assert (h > 0) == (h32 > 0), (lr, h, h32)
        assert abs(h - h32) <= REL_TOL * abs(h32), (lr, h, h32)
        assert float(flat_cosine(g, g32)) >= 0.99, lr
        assert h32 != _one_step("no", _hp(lr, "taylor", pseudo_labels), True)[0]  # the student's view changes h


def test_measurements_run_in_fp32_inside_a_low_precision_region(monkeypatch):
    """CE_old and CE_new are measured with autocast off: the labelled forward sees fp32 activations."""
    seen = []
    hp = _hp(0.1, "taylor", "argmax")
    nets = _nets(hp, bn=True, precision="bf16")
    final = nets.student[-1]
    final.register_forward_hook(lambda m, args, out: seen.append((args[0].shape[0], out.dtype)))
    with _runtime("bf16").autocast():
        mpl_step(nets, _batch(), 0, hp)
    assert seen == [(32, torch.bfloat16), (16, torch.float32), (16, torch.float32)]


def test_fp16_overflow_skips_the_student_gives_no_feedback_and_the_run_continues():
    """A student backward that overflows fp16 skips the student's update, gives the teacher h = 0 (its
    auxiliary losses still train it), leaves the baseline alone and halves the scale; later steps recover."""
    hp = _hp(0.1, "taylor", "sample", teacher_lr=0.1, teacher_supervised_weight=1.0, uda_weight=1.0, baseline=True)
    nets = _nets(hp, bn=True, precision="fp16")
    nets.student_scaler = LossScaler(2.0**30)  # certain to overflow: gradients of ~0.1 become ~1e8 > 65504
    reference = copy.deepcopy(nets)  # the same step with no feedback at all: mpl_weight = 0
    reference.student_scaler = LossScaler(2.0**8)
    no_feedback = MPLHyper(**{**hp.__dict__, "mpl_weight": 0.0})
    student_before = copy.deepcopy(nets.student.state_dict())
    nets.baseline.fill_(0.25)
    reference.baseline.fill_(0.25)
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    rt = _runtime("fp16")
    torch.manual_seed(5)
    with rt.autocast():
        out = mpl_step(nets, _batch(), 0, hp, generator=gen_a)
    torch.manual_seed(5)
    with rt.autocast():
        mpl_step(reference, _batch(), 0, no_feedback, generator=gen_b)

    assert float(out["student/skipped"]) == 1.0 and float(out["feedback/h"]) == 0.0
    assert float(out["feedback/h_centered"]) == 0.0 and float(nets.baseline) == 0.25
    assert nets.student_scaler.scale == 2.0**29
    params = {k: v for k, v in nets.student.named_parameters()}
    assert all(torch.equal(params[k], student_before[k]) for k in params)  # weights untouched
    for a, b in zip(nets.teacher.parameters(), reference.teacher.parameters()):
        assert torch.equal(a, b)  # the teacher learnt from its supervised and UDA losses only
    assert not all(torch.equal(a, b) for a, b in zip(nets.teacher.parameters(), _cnn(1, True).parameters()))

    skipped = []
    for step in range(1, 40):  # the scale falls until the backward fits in fp16, then training goes on
        with rt.autocast():
            out = mpl_step(nets, _batch(step), step, hp, generator=gen_a)
        skipped.append(float(out["student/skipped"]))
        if not skipped[-1]:
            break
    assert skipped[-1] == 0.0 and float(out["feedback/h"]) != 0.0
    assert nets.student_scaler.scale < 2.0**29


def test_loss_scaler_schedule_and_state():
    s = LossScaler(init_scale=8.0, growth_interval=3)
    s.update(overflow=True)
    assert s.scale == 4.0 and s.clean_steps == 0
    for _ in range(3):
        s.update(overflow=False)
    assert s.scale == 8.0 and s.clean_steps == 0
    s.update(overflow=False)
    t = LossScaler()
    t.load_state_dict(s.state_dict())
    assert (
        t.state_dict()
        == s.state_dict()
        == {"scale": 8.0, "clean_steps": 1, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3}
    )
    with pytest.raises(ValueError):
        LossScaler(backoff_factor=1.5)
