"""The teacher's MPL gradient against independent autograd computations (DESIGN §5).

Tiny float64 MLPs; the student takes one plain SGD step (momentum 0, no decay, no clipping),
so theta' = theta - eta * g_u exactly. Only the MPL term is active in the teacher's loss
(supervised weight 0, UDA weight 0, no baseline, mpl_weight 1) and the teacher's lr is 0, so
its ``.grad`` after the step is the MPL gradient. References: reference/mpl-algorithm.md §1.8,
§1.9 and the paper's eq. (3) and Appendix A eq. (12).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from mpltools.losses import smoothed_cross_entropy
from mpltools.methods import Batch, MPLHyper, Networks, build_sgd, mpl_step

LS = 0.1  # label smoothing on the student's pseudo-label loss, exercised throughout


def _mlp(seed, d_in=3, hidden=6, k=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, k)).double()


def _batch(seed=0, n_l=6, n_u=8):
    g = torch.Generator().manual_seed(seed)
    return Batch(
        torch.randn(n_l, 3, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (n_l,), generator=g),
        torch.randn(n_u, 3, generator=g, dtype=torch.float64),
        torch.randn(n_u, 3, generator=g, dtype=torch.float64),
    )


def _hp(**kw):
    base = dict(
        total_steps=10,
        teacher_lr=0.0,
        teacher_warmup=0,
        student_lr=0.1,
        student_warmup=0,
        student_wait=0,
        lr_schedule="constant",
        momentum=0.0,
        nesterov=False,
        teacher_weight_decay=0.0,
        student_weight_decay=0.0,
        label_smoothing=LS,
        uda_weight=0.0,
        teacher_supervised_weight=0.0,
        baseline=False,
        mpl_weight=1.0,
        pseudo_labels="argmax",
        feedback="dot",
    )
    base.update(kw)
    return MPLHyper(**base)


def _run(hp, batch, generator=None, steps=1, teacher_seed=1, student_seed=2):
    teacher, student = _mlp(teacher_seed), _mlp(student_seed, hidden=5)
    nets = Networks(
        teacher,
        student,
        build_sgd(teacher, hp.teacher_lr, hp.momentum, hp.nesterov, hp.teacher_weight_decay),
        build_sgd(student, hp.student_lr, hp.momentum, hp.nesterov, hp.student_weight_decay),
    )
    before = (copy.deepcopy(teacher), copy.deepcopy(student))
    out = None
    for s in range(steps):
        if s == steps - 1:
            before = (copy.deepcopy(teacher), copy.deepcopy(student))
            state = copy.deepcopy(nets.student_opt.state_dict())
        out = mpl_step(nets, batch, s, hp, generator=generator)
    return out, nets, before, state


def _params(m):
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def _teacher_strong_logits(teacher, phi, batch):
    # The same single forward over [x_l; weak; strong] as the step (rows are independent here).
    x = torch.cat([batch.labeled_x, batch.unlabeled_weak, batch.unlabeled_strong])
    return functional_call(teacher, phi, (x,))[-batch.unlabeled_strong.shape[0] :]


def _independent_quantities(teacher, student, batch, y_hat, eta, student_view="strong"):
    """g_u, theta', g_l' = grad L_l(theta') and the CE at theta and theta', by torch.func."""
    theta = _params(student)
    x_l, y_l = batch.labeled_x, batch.labeled_y
    x_s = batch.unlabeled_strong if student_view == "strong" else batch.unlabeled_weak

    def l_u(p):
        return smoothed_cross_entropy(functional_call(student, p, (x_s,)), y_hat, LS)

    def l_l(p):
        return F.cross_entropy(functional_call(student, p, (x_l,)), y_l)

    g_u = grad(l_u)(theta)
    theta_new = {n: theta[n] - eta * g_u[n] for n in theta}
    g_l_new = grad(l_l)(theta_new)
    return g_u, g_l_new, l_l(theta).item(), l_l(theta_new).item()


def _dot(a, b):
    return sum((a[n] * b[n]).sum() for n in a)


def _reinforce_grad(teacher, batch, y_hat):
    phi = _params(teacher)
    return grad(lambda p: F.cross_entropy(_teacher_strong_logits(teacher, p, batch), y_hat))(phi)


def _assert_teacher_grad(teacher, expected, rtol=1e-9, atol=1e-12):
    total = 0.0
    for n, p in teacher.named_parameters():
        assert torch.allclose(p.grad, expected[n], rtol=rtol, atol=atol), n
        total += float(expected[n].norm())
    assert total > 1e-6  # the MPL gradient is really there


@pytest.mark.parametrize("pseudo_labels", ["sample", "argmax"])
def test_dot_feedback_gradient_equals_eta_grad_product_times_reinforce(pseudo_labels):
    batch, eta = _batch(), 0.1
    gen = torch.Generator().manual_seed(123)
    replay = torch.Generator().set_state(gen.get_state())
    out, nets, (teacher0, student0), _ = _run(_hp(pseudo_labels=pseudo_labels), batch, gen)

    probs = torch.softmax(_teacher_strong_logits(teacher0, _params(teacher0), batch), -1)
    if pseudo_labels == "sample":
        y_hat = torch.multinomial(probs, 1, generator=replay).squeeze(1)
    else:
        y_hat = probs.argmax(-1)
    g_u, g_l_new, _, _ = _independent_quantities(teacher0, student0, batch, y_hat, eta)
    h_exact = eta * _dot(g_l_new, g_u)  # Appendix A eq. (12), one eta

    assert out["feedback/h"].item() == pytest.approx(h_exact.item(), rel=1e-10)
    expected = {n: h_exact * g for n, g in _reinforce_grad(teacher0, batch, y_hat).items()}
    _assert_teacher_grad(nets.teacher, expected)


def test_taylor_feedback_is_the_exact_loss_difference_and_first_order_equals_dot():
    batch = _batch(seed=3)
    rel_errors = []
    for eta in (0.1, 0.01, 0.001):
        out, nets, (teacher0, student0), _ = _run(_hp(feedback="taylor", student_lr=eta), batch)
        y_hat = _teacher_strong_logits(teacher0, _params(teacher0), batch).argmax(-1)
        g_u, g_l_new, ce_old, ce_new = _independent_quantities(teacher0, student0, batch, y_hat, eta)
        h = out["feedback/h"].item()
        assert h == pytest.approx(ce_old - ce_new, rel=1e-9, abs=1e-15)
        expected = {n: h * g for n, g in _reinforce_grad(teacher0, batch, y_hat).items()}
        _assert_teacher_grad(nets.teacher, expected)
        h_dot = _run(_hp(feedback="dot", student_lr=eta), batch)[0]["feedback/h"].item()
        assert h_dot == pytest.approx(eta * _dot(g_l_new, g_u).item(), rel=1e-9)
        rel_errors.append(abs(h - h_dot) / abs(h_dot))
    # Second-order remainder: the relative gap shrinks ~linearly with eta (10x per decade).
    assert rel_errors[1] < rel_errors[0] / 5 and rel_errors[2] < rel_errors[1] / 5
    assert rel_errors[2] < 1e-2


def test_cosine_feedback_matches_independent_cosine_similarity():
    batch, eta = _batch(seed=4), 0.1
    out, nets, (teacher0, student0), _ = _run(_hp(feedback="cosine"), batch)
    y_hat = _teacher_strong_logits(teacher0, _params(teacher0), batch).argmax(-1)
    g_u, g_l_new, _, _ = _independent_quantities(teacher0, student0, batch, y_hat, eta)
    a = torch.cat([g_l_new[n].reshape(-1) for n in g_u])
    b = torch.cat([g_u[n].reshape(-1) for n in g_u])
    cos = (a @ b / (a.norm() * b.norm())).item()  # theta - theta' = eta * g_u: same direction
    assert out["feedback/h"].item() == pytest.approx(cos, rel=1e-10)
    expected = {n: cos * g for n, g in _reinforce_grad(teacher0, batch, y_hat).items()}
    _assert_teacher_grad(nets.teacher, expected)


def _exact_soft_meta_gradient(teacher, student, batch, update, student_view="strong"):
    """d/dphi L_l(theta'(phi)) through a functional one-step update of the student.

    `update(theta, g_u)` returns theta'; the pseudo labels are softmax(T(x_u_strong; phi)),
    label-smoothed like the student's target; the student reads the unlabelled images of `student_view`.
    """
    theta, phi = _params(student), _params(teacher)
    x_u = batch.unlabeled_strong if student_view == "strong" else batch.unlabeled_weak

    def meta(phi_):
        p = torch.softmax(_teacher_strong_logits(teacher, phi_, batch), -1)
        g_u = grad(lambda th: smoothed_cross_entropy(functional_call(student, th, (x_u,)), p, LS))(theta)
        theta_new = update(theta, g_u)
        return F.cross_entropy(functional_call(student, theta_new, (batch.labeled_x,)), batch.labeled_y)

    return grad(meta)(phi)


def test_soft_labels_teacher_gradient_is_the_exact_meta_gradient_plain_sgd():
    batch, eta = _batch(seed=5), 0.3
    _, nets, (teacher0, student0), _ = _run(_hp(pseudo_labels="soft", student_lr=eta), batch)
    expected = _exact_soft_meta_gradient(teacher0, student0, batch, lambda th, g: {n: th[n] - eta * g[n] for n in th})
    _assert_teacher_grad(nets.teacher, expected, rtol=1e-8)


def test_student_view_weak_soft_meta_gradient_is_exact_through_the_weak_images():
    # The teacher still labels the strong view; the student learns those labels on the weak view of the same images.
    batch, eta = _batch(seed=7), 0.3
    _, nets, (teacher0, student0), _ = _run(_hp(pseudo_labels="soft", student_lr=eta, student_view="weak"), batch)

    def sgd(th, g):
        return {n: th[n] - eta * g[n] for n in th}

    expected = _exact_soft_meta_gradient(teacher0, student0, batch, sgd, student_view="weak")
    _assert_teacher_grad(nets.teacher, expected, rtol=1e-8)
    on_strong = _exact_soft_meta_gradient(teacher0, student0, batch, sgd)
    assert max(float((expected[n] - on_strong[n]).abs().max()) for n in expected) > 1e-4  # the view matters


@pytest.mark.parametrize("feedback", ["dot", "taylor"])
def test_student_view_weak_feedback_and_student_update_use_the_weak_images(feedback):
    batch, eta = _batch(seed=8), 0.1
    out, nets, (teacher0, student0), _ = _run(_hp(feedback=feedback, student_view="weak"), batch)
    y_hat = _teacher_strong_logits(teacher0, _params(teacher0), batch).argmax(-1)  # labels from the strong view
    g_u, g_l_new, ce_old, ce_new = _independent_quantities(teacher0, student0, batch, y_hat, eta, student_view="weak")
    theta = _params(student0)
    for n, p in nets.student.named_parameters():  # plain SGD: the student moved by -eta * g_u of the weak images
        assert torch.allclose(p.detach(), theta[n] - eta * g_u[n], rtol=1e-10, atol=1e-12), n
    h = eta * _dot(g_l_new, g_u).item() if feedback == "dot" else ce_old - ce_new
    assert out["feedback/h"].item() == pytest.approx(h, rel=1e-9)
    expected = {n: out["feedback/h"] * g for n, g in _reinforce_grad(teacher0, batch, y_hat).items()}
    _assert_teacher_grad(nets.teacher, expected)
    strong_h = _independent_quantities(teacher0, student0, batch, y_hat, eta)
    assert abs((eta * _dot(strong_h[1], strong_h[0]).item() if feedback == "dot" else strong_h[2] - strong_h[3]) - h) > 1e-6


def test_soft_labels_exact_with_nesterov_momentum_and_weight_decay():
    # Second step, so the momentum buffer is non-zero. torch/TF Nesterov with decay:
    # g = g_u + wd*theta; buf' = m*buf + g; theta' = theta - lr*(g + m*buf')
    #   = theta - lr*((1+m)*(g_u + wd*theta) + m^2*buf): affine in g_u with slope lr*(1+m).
    batch, lr, m, wd = _batch(seed=6), 0.2, 0.9, 0.01
    hp = _hp(pseudo_labels="soft", student_lr=lr, momentum=m, nesterov=True, student_weight_decay=wd)
    _, nets, (teacher0, student0), opt_state = _run(hp, batch, steps=2)
    names = [n for n, _ in student0.named_parameters()]
    buf = {n: opt_state["state"][i]["momentum_buffer"] for i, n in enumerate(names)}

    def nesterov(th, g):
        return {n: th[n] - lr * ((1 + m) * (g[n] + wd * th[n]) + m * m * buf[n]) for n in th}

    expected = _exact_soft_meta_gradient(teacher0, student0, batch, nesterov)
    _assert_teacher_grad(nets.teacher, expected, rtol=1e-8)


@pytest.mark.parametrize("feedback", ["taylor", "dot"])
def test_sign_teacher_reinforces_pseudo_labels_that_help_and_suppresses_those_that_hurt(feedback):
    # x_l = x_u. If y_l = y_hat the student's step on y_hat lowers its labelled loss (h > 0)
    # and the teacher must make y_hat MORE likely; if y_l != y_hat, h < 0 and LESS likely.
    base = _batch(seed=7)
    x = base.unlabeled_strong
    teacher = _mlp(1)
    with torch.no_grad():
        y_hat = teacher(x).argmax(-1)
    for y_l, sign in ((y_hat, 1.0), ((y_hat + 1) % 3, -1.0)):
        batch = Batch(x, y_l, base.unlabeled_weak, x)
        hp = _hp(feedback=feedback, teacher_lr=0.5, student_lr=0.5)
        out, nets, (teacher0, _), _ = _run(hp, batch)
        with torch.no_grad():
            lp_before = torch.log_softmax(teacher0(x), -1).gather(1, y_hat[:, None]).mean()
            lp_after = torch.log_softmax(nets.teacher(x), -1).gather(1, y_hat[:, None]).mean()
        assert sign * out["feedback/h"].item() > 0
        assert sign * (lp_after - lp_before).item() > 0


@pytest.mark.parametrize("feedback", ["dot", "cosine"])
def test_dot_and_cosine_use_the_pseudo_label_gradient_under_nesterov_momentum_and_weight_decay(feedback):
    """Second step (momentum buffer non-zero), coupled weight decay: `dot` is eq. (12) with the step size the
    update gives g_u, ``lr (1 + m) <grad L_l(theta'), g_u>``, and `cosine` is Appendix C.3's
    ``cos(grad L_l(theta'), g_u)`` -- not the displacement theta - theta', which also carries the
    momentum buffer and the decay (about 3.7x off at step 1 in the issue that reported it)."""
    batch, lr, m, wd = _batch(seed=8), 0.2, 0.9, 0.01
    hp = _hp(feedback=feedback, pseudo_labels="argmax", student_lr=lr, momentum=m, nesterov=True, student_weight_decay=wd)
    out, nets, (teacher0, student0), opt_state = _run(hp, batch, steps=2)
    names = [n for n, _ in student0.named_parameters()]
    buf = {n: opt_state["state"][i]["momentum_buffer"] for i, n in enumerate(names)}
    theta = _params(student0)
    y_hat = _teacher_strong_logits(teacher0, _params(teacher0), batch).argmax(-1)
    g_u = grad(lambda th: smoothed_cross_entropy(functional_call(student0, th, (batch.unlabeled_strong,)), y_hat, LS))(theta)
    theta_new = {n: theta[n] - lr * ((1 + m) * (g_u[n] + wd * theta[n]) + m * m * buf[n]) for n in theta}
    g_l_new = grad(lambda th: F.cross_entropy(functional_call(student0, th, (batch.labeled_x,)), batch.labeled_y))(theta_new)
    for n, p in nets.student.named_parameters():  # the step really is that Nesterov update
        assert torch.allclose(p.detach(), theta_new[n], rtol=1e-12, atol=1e-14), n
    a = torch.cat([g_l_new[n].reshape(-1) for n in names])
    b = torch.cat([g_u[n].reshape(-1) for n in names])
    exact = lr * (1 + m) * (a @ b) if feedback == "dot" else (a @ b) / (a.norm() * b.norm())
    displacement = torch.cat([(theta[n] - theta_new[n]).reshape(-1) for n in names])
    old_variant = a @ displacement if feedback == "dot" else (a @ displacement) / (a.norm() * displacement.norm())
    assert out["feedback/h"].item() == pytest.approx(exact.item(), rel=1e-10)
    assert abs(old_variant.item() - exact.item()) > 1e-3 * abs(exact.item())  # the two definitions really differ here
    expected = {n: exact * g for n, g in _reinforce_grad(teacher0, batch, y_hat).items()}
    _assert_teacher_grad(nets.teacher, expected)


@pytest.mark.parametrize("pseudo_labels", ["argmax", "soft"])
def test_flipped_sign_ablation_negates_the_teachers_mpl_gradient(pseudo_labels):
    batch = _batch(seed=9)
    _, paper, _, _ = _run(_hp(pseudo_labels=pseudo_labels), batch)
    _, flipped, _, _ = _run(_hp(pseudo_labels=pseudo_labels, feedback_sign=-1.0), batch)
    for a, b in zip(paper.teacher.parameters(), flipped.teacher.parameters()):
        assert torch.allclose(b.grad, -a.grad, rtol=1e-12, atol=1e-15)
    assert sum(float(p.grad.norm()) for p in paper.teacher.parameters()) > 1e-6
