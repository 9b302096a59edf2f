"""Training steps: h is exactly 0 when the student does not move, measurement mode, the
released variant, reductions, the finiteness guard, pass structure, baselines, registry.

Tiny networks built here (one with BatchNorm and Dropout, one pure MLP); no dependency on
mpltools.models. The gradient proofs are in test_feedback_gradients.py.
"""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpltools.methods import (
    EMA,
    STEPS,
    Batch,
    MPLHyper,
    Networks,
    NonFiniteError,
    Reducer,
    build_sgd,
    measurement_mode,
    mpl_step,
    norm_parameter_names,
    pseudo_label_step,
    released_step,
    supervised_step,
    uda_step,
)


def bn_dropout_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def mlp(seed, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def make_batch(seed=0, n_l=8, n_u=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return Batch(
        torch.randn(n_l, 4, generator=g, dtype=dtype),
        torch.randint(0, 3, (n_l,), generator=g),
        torch.randn(n_u, 4, generator=g, dtype=dtype),
        torch.randn(n_u, 4, generator=g, dtype=dtype),
    )


def make_nets(teacher, student, hp, ema=None):
    t_opt = build_sgd(teacher, hp.teacher_lr, hp.momentum, hp.nesterov, hp.teacher_weight_decay, norm_parameter_names(teacher))
    s_opt = build_sgd(student, hp.student_lr, hp.momentum, hp.nesterov, hp.student_weight_decay, norm_parameter_names(student))
    return Networks(teacher, student, t_opt, s_opt, ema)


def hp_(**kw):
    base = dict(
        total_steps=100,
        teacher_lr=0.1,
        teacher_warmup=0,
        student_lr=0.1,
        student_warmup=0,
        student_wait=0,
        lr_schedule="constant",
        uda_ramp_steps=0,
        uda_weight=1.0,
        uda_threshold=0.4,
        pseudo_labels="argmax",
        ema_decay=0.0,
    )
    base.update(kw)
    return MPLHyper(**base)


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- h == 0 at lr 0


@pytest.mark.parametrize("feedback_bn", ["batch", "eval"])
@pytest.mark.parametrize(
    "feedback,pseudo_labels", [("taylor", "sample"), ("dot", "argmax"), ("cosine", "sample"), ("taylor", "soft")]
)
def test_h_is_exactly_zero_during_the_wait_with_bn_and_dropout(feedback_bn, feedback, pseudo_labels):
    hp = hp_(
        student_wait=5,
        momentum=0.9,
        nesterov=True,
        student_weight_decay=5e-4,
        feedback=feedback,
        pseudo_labels=pseudo_labels,
        feedback_bn=feedback_bn,
    )
    nets = make_nets(bn_dropout_net(0), bn_dropout_net(1), hp, ema=EMA(bn_dropout_net(1), 0.9))
    gen = torch.Generator().manual_seed(0)
    for step in range(3):  # several steps: momentum buffers fill up, BN statistics move
        batch = make_batch(seed=step)
        student_before = copy.deepcopy(nets.student)
        out = mpl_step(nets, batch, step, hp, generator=gen)
        assert out["lr/student"].item() == 0.0
        assert out["feedback/h"].item() == 0.0
        assert out["student/ce_old"].item() == out["student/ce_new"].item()
        assert same(params_of(nets.student), params_of(student_before))
        # Only the training forward on the strong view moved the running statistics.
        expected = copy.deepcopy(student_before).train()
        with torch.no_grad():
            expected(batch.unlabeled_strong)
        for name, buf in nets.student.named_buffers():
            assert torch.equal(buf, dict(expected.named_buffers())[name]), name


def test_measurement_mode_is_deterministic_restores_flags_and_never_touches_bn_buffers():
    model = bn_dropout_net(0).train()
    with torch.no_grad():
        model(torch.randn(32, 4))  # non-trivial running statistics
    x = torch.randn(8, 4)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    outputs = {}
    for mode in ("batch", "eval"):
        with torch.no_grad(), measurement_mode(model, mode):
            first, second = model(x), model(x)
        assert torch.equal(first, second)  # dropout off
        outputs[mode] = first
        assert all(m.training for m in model.modules())  # flags restored
        assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm1d))
        for n, b in model.named_buffers():
            assert torch.equal(b, buffers[n]), (mode, n)
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        assert torch.allclose(outputs["eval"], reference(x))  # running statistics
        reference[1].train()  # BN on the batch statistics of x, dropout still off
        assert torch.allclose(outputs["batch"], reference(x), atol=1e-6)
    assert not torch.allclose(outputs["batch"], outputs["eval"])
    with pytest.raises(ValueError):
        with measurement_mode(model, "train"):
            pass


def test_pass_structure_one_teacher_forward_three_student_forwards():
    for weak_no_grad, teacher_calls in ((False, [(40, True)]), (True, [(16, True), (24, True)])):
        hp = hp_(teacher_weak_no_grad=weak_no_grad)
        nets = make_nets(mlp(0), mlp(1), hp)
        seen = {"t": [], "s": []}
        nets.teacher.register_forward_hook(lambda m, i, o: seen["t"].append((i[0].shape[0], m.training)))
        nets.student.register_forward_hook(lambda m, i, o: seen["s"].append((i[0].shape[0], m.training)))
        mpl_step(nets, make_batch(), 0, hp)
        assert seen["t"] == teacher_calls
        # strong view in train mode, then CE_old and CE_new on x_l in measurement (eval) mode
        assert seen["s"] == [(16, True), (8, False), (8, False)]


def test_student_ema_is_updated_after_the_student_step():
    hp = hp_()
    nets = make_nets(mlp(0), mlp(1), hp)
    nets.ema = EMA(nets.student, decay=0.5)
    before = params_of(nets.student)
    mpl_step(nets, make_batch(), 0, hp)  # decay min(0.5, 1/10) = 0.1
    for (name, p), old in zip(nets.student.named_parameters(), before):
        assert torch.allclose(nets.ema.shadow[name], 0.1 * old + 0.9 * p.detach(), atol=1e-7)


# ----------------------------------------------------------------------------- released variant


def test_released_feedback_term_has_zero_gradient_and_new_minus_old_sign():
    hp = hp_(teacher_lr=0.0, student_lr=1.0, baseline_decay=0.99, label_smoothing=0.1)
    teacher, student = bn_dropout_net(0), mlp(1)
    batch = make_batch()
    grads = {}
    for w in (1.0, 0.0):
        nets = make_nets(copy.deepcopy(teacher), copy.deepcopy(student), hp)
        torch.manual_seed(5)  # identical dropout masks in both runs
        out = released_step(nets, batch, 0, MPLHyper(**{**hp.__dict__, "mpl_weight": w}))
        grads[w] = [p.grad.clone() for p in nets.teacher.parameters()]
        if w == 1.0:
            metrics, after, teacher_bufs = out, nets, {n: b.clone() for n, b in nets.teacher.named_buffers()}
    assert abs(metrics["feedback/h_centered"].item()) > 1e-3  # a real multiplier...
    for g1, g0 in zip(grads[1.0], grads[0.0]):
        assert torch.allclose(g1, g0, rtol=0, atol=1e-7)  # ...of a zero gradient
    # d = CE_new - CE_old, computed independently on the plain-MLP student.
    with torch.no_grad():
        ce_old = F.cross_entropy(student(batch.labeled_x), batch.labeled_y)
        ce_new = F.cross_entropy(after.student(batch.labeled_x), batch.labeled_y)
    d = metrics["feedback/h"].item()
    assert d == pytest.approx((ce_new - ce_old).item(), abs=1e-6) and d != 0
    assert metrics["feedback/baseline"].item() == pytest.approx(0.01 * d, rel=1e-5)
    assert metrics["feedback/h_centered"].item() == pytest.approx(0.99 * d, rel=1e-5)
    # The code never runs the teacher's BN update ops.
    assert all(torch.equal(b, dict(teacher.named_buffers())[n]) for n, b in teacher_bufs.items())


# ----------------------------------------------------------------------------- reductions


class RecordingReducer(Reducer):
    """Records calls; scales what it returns, as if other processes held other values."""

    def __init__(self, mean_scale=1.0, grad_scale=1.0):
        self.mean_scale, self.grad_scale, self.grad_calls = mean_scale, grad_scale, []

    def mean(self, t):
        return t.detach() * self.mean_scale

    def mean_grads(self, params):
        params = list(params)
        self.grad_calls.append({id(p) for p in params})
        for p in params:
            p.grad.mul_(self.grad_scale)


def _two_runs(hp, reducer):
    batch = make_batch(dtype=torch.float64)
    runs = []
    for r in (Reducer(), reducer):
        nets = make_nets(mlp(0, torch.float64), mlp(1, torch.float64), hp)
        out = mpl_step(nets, batch, 0, hp, reducer=r)
        runs.append((out, nets))
    return runs, batch


@pytest.mark.parametrize("feedback", ["taylor", "dot"])
def test_h_and_the_teacher_gradient_use_the_reduced_values(feedback):
    hp = hp_(
        feedback=feedback,
        momentum=0.0,
        nesterov=False,
        teacher_lr=0.0,
        baseline=False,
        teacher_supervised_weight=0.0,
        uda_weight=0.0,
        student_weight_decay=0.0,
        teacher_weight_decay=0.0,
    )
    rec = RecordingReducer(mean_scale=2.0)
    ((local, n_local), (reduced, n_red)), _ = _two_runs(hp, rec)
    assert same(params_of(n_local.student), params_of(n_red.student))
    for key in ("student/ce_old", "student/ce_new", "feedback/h", "teacher/sup"):
        assert reduced[key].item() == pytest.approx(2 * local[key].item(), rel=1e-12), key
    for p_local, p_red in zip(n_local.teacher.parameters(), n_red.teacher.parameters()):
        assert torch.allclose(p_red.grad, 2 * p_local.grad, rtol=1e-12, atol=1e-15)
    assert rec.grad_calls == [{id(p) for p in n_red.student.parameters()}, {id(p) for p in n_red.teacher.parameters()}]


def test_gradients_go_through_the_reducer_before_the_update():
    hp = hp_(
        momentum=0.0,
        nesterov=False,
        student_weight_decay=0.0,
        teacher_weight_decay=0.0,
        mpl_weight=0.0,
        uda_weight=0.0,
        teacher_lr=0.0,
    )
    ((_, n_local), (_, n_red)), _ = _two_runs(hp, RecordingReducer(grad_scale=2.0))
    start = params_of(mlp(1, torch.float64))
    for p0, p_local, p_red in zip(start, n_local.student.parameters(), n_red.student.parameters()):
        assert torch.allclose(p_red - p0, 2 * (p_local - p0), rtol=1e-10, atol=1e-15)
    for p_local, p_red in zip(n_local.teacher.parameters(), n_red.teacher.parameters()):
        assert torch.allclose(p_red.grad, 2 * p_local.grad, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- finiteness guard


@pytest.mark.parametrize("step_fn", [mpl_step, released_step])
@pytest.mark.parametrize("where,term", [("unlabeled_strong", "teacher UDA loss"), ("labeled_x", "teacher supervised loss")])
def test_nan_input_raises_before_any_parameter_changes(step_fn, where, term):
    hp = hp_(momentum=0.9)
    nets = make_nets(mlp(0), mlp(1), hp)
    batch = make_batch()
    getattr(batch, where)[0, 0] = float("nan")
    t_before, s_before = params_of(nets.teacher), params_of(nets.student)
    with pytest.raises(NonFiniteError) as info:
        step_fn(nets, batch, 7, hp)
    assert (info.value.step, info.value.term) == (7, term)
    assert "step 7" in str(info.value) and term in str(info.value)
    assert same(params_of(nets.teacher), t_before) and same(params_of(nets.student), s_before)
    assert not nets.student_opt.state and not nets.teacher_opt.state  # no momentum either
    assert nets.baseline.item() == 0.0


def test_non_finite_feedback_stops_the_teacher_update_and_the_baseline():
    class NaNOnSecondMean(Reducer):
        calls = 0

        def mean(self, t):
            self.calls += 1
            return t.detach() * float("nan") if self.calls == 2 else t.detach()

    hp = hp_()
    nets = make_nets(mlp(0), mlp(1), hp)
    t_before = params_of(nets.teacher)
    with pytest.raises(NonFiniteError) as info:
        mpl_step(nets, make_batch(), 3, hp, reducer=NaNOnSecondMean())
    assert (info.value.step, info.value.term) == (3, "student CE_old")
    assert same(params_of(nets.teacher), t_before)
    assert nets.baseline.item() == 0.0


def test_supervised_step_nan_raises_without_update():
    hp = hp_()
    student = mlp(1)
    nets = Networks(None, student, None, build_sgd(student, 0.1))
    batch = make_batch()
    batch.labeled_x[3, 1] = float("nan")
    before = params_of(nets.student)
    with pytest.raises(NonFiniteError, match="student loss"):
        supervised_step(nets, batch, 0, hp)
    assert same(params_of(nets.student), before)


# ----------------------------------------------------------------------------- baselines


def separable(seed, n=32):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 4, generator=g) * 0.5
    x[:, 0] += 4.0 * y - 2.0
    return x, y


def separable_batch(seed):
    x_l, y_l = separable(seed)
    x_u, _ = separable(seed + 1000, 64)
    return Batch(x_l, y_l, x_u + 0.1 * torch.randn(x_u.shape), x_u + 0.3 * torch.randn(x_u.shape))


def eval_ce(model):
    x, y = separable(99, 256)
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(x)[:, :2], y).item()


@pytest.mark.parametrize("step_fn", [supervised_step, uda_step])
def test_single_network_baselines_learn(step_fn):
    hp = hp_(student_lr=0.05, label_smoothing=0.1)
    student = mlp(3)
    nets = Networks(None, student, None, build_sgd(student, hp.student_lr))
    before = eval_ce(student)
    for step in range(50):
        out = step_fn(nets, separable_batch(step), step, hp)
    assert eval_ce(student) < 0.3 * before
    assert out["lr/student"].item() == pytest.approx(0.05)


@pytest.mark.parametrize("pseudo_labels", ["argmax", "soft"])
def test_pseudo_label_student_learns_from_a_fixed_teacher_without_labels(pseudo_labels):
    teacher = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))  # a correct, fixed classifier
    with torch.no_grad():
        teacher[0].weight.zero_()
        teacher[0].bias.zero_()
        teacher[0].weight[0, 0], teacher[0].weight[1, 0], teacher[0].bias[2] = -3.0, 3.0, -20.0
    teacher_state = copy.deepcopy(teacher.state_dict())
    student = mlp(4)
    hp = hp_(student_lr=0.05, pseudo_labels=pseudo_labels, label_smoothing=0.1)
    nets = Networks(teacher, student, None, build_sgd(student, hp.student_lr))
    before = eval_ce(student)
    for step in range(50):
        batch = separable_batch(step)
        batch.labeled_y = torch.zeros_like(batch.labeled_y)  # wrong labels: must not matter
        pseudo_label_step(nets, batch, step, hp)
    assert eval_ce(student) < 0.3 * before
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k]), k
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training


@pytest.mark.parametrize("method", ["released", "pseudo-label"])
def test_student_view_weak_trains_the_student_on_the_weak_images_against_strong_view_targets(method):
    # Plain SGD, no decay: the student's one update is -lr * grad of its label-smoothed CE on the chosen view,
    # against the teacher's soft strong-view prediction (rows independent: MLPs, no BN or dropout).
    from mpltools.losses import smoothed_cross_entropy

    lr, batch = 0.5, make_batch(seed=3)
    teacher, student = mlp(0), mlp(1)
    hp = dict(student_lr=lr, teacher_lr=0.0, momentum=0.0, student_weight_decay=0.0, teacher_weight_decay=0.0)
    hp.update(label_smoothing=0.1, pseudo_labels="soft")
    with torch.no_grad():
        target = torch.softmax(teacher(batch.unlabeled_strong), dim=-1)

    def after_sgd(x):
        s = copy.deepcopy(student)
        loss = smoothed_cross_entropy(s(x), target, 0.1)
        grads = torch.autograd.grad(loss, list(s.parameters()))
        return [(p - lr * g).detach() for p, g in zip(s.parameters(), grads)]

    results = {}
    for view in ("weak", "strong"):
        nets = make_nets(copy.deepcopy(teacher), copy.deepcopy(student), hp_(**hp))
        if method == "released":
            released_step(nets, batch, 0, hp_(**hp, student_view=view))
        else:
            nets.teacher_opt = None
            pseudo_label_step(nets, batch, 0, hp_(**hp, student_view=view))
        results[view] = params_of(nets.student)
    for view, x in (("weak", batch.unlabeled_weak), ("strong", batch.unlabeled_strong)):
        for got, want in zip(results[view], after_sgd(x)):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), view
    assert not same(results["weak"], results["strong"])


# ----------------------------------------------------------------------------- registry, hyper


def test_registry_and_hyper_validation():
    """The step's hyper-parameters are checked once, where the recipe is loaded, naming the recipe key."""
    from mpltools.errors import UsageError
    from mpltools.preflight import load_and_check

    assert set(STEPS) == {"mpl", "released", "supervised", "uda", "pseudo-label", "fixmatch"}
    assert STEPS["mpl"] is mpl_step
    for overrides, key in (
        (["method.feedback=cos"], "method.feedback"),
        (["method.teacher_weak_no_grad=true", "method.pseudo_label_view=weak"], "method.teacher_weak_no_grad"),
        (["student.lr=-1.0"], "student.lr must be >= 0, not -1."),
        (["student.wait_steps=-1"], "student.wait_steps"),
        (["teacher.warmup_steps=-1"], "teacher.warmup_steps"),
        (["method.uda_temperature=0"], "method.uda_temperature"),
    ):
        with pytest.raises(UsageError, match=re.escape(key)):
            load_and_check(None, overrides)
    load_and_check(None, ["method.teacher_weak_no_grad=true", "method.pseudo_label_view=weak", "method.mpl_weight=0.0"])


def test_a_step_built_from_python_and_one_built_from_a_recipe_share_their_defaults():
    """One source of truth: MPLHyper's defaults are the recipe's (label smoothing once differed: 0.15 vs 0)."""
    from mpltools.config import load_recipe
    from mpltools.methods.common import hyper_from

    assert hyper_from(load_recipe(None)) == MPLHyper()
    assert MPLHyper().label_smoothing == load_recipe(None).method.label_smoothing
