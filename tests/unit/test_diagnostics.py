"""Step-side diagnostics: the teacher's gradient split by term, pseudo-label health, and the promise
that diagnosing (on logging steps) changes nothing that training computes."""

import math

import pytest
import torch
from torch import nn

from mpltools.methods import EMA, Batch, MPLHyper, Networks, build_sgd, mpl_step, norm_parameter_names
from mpltools.methods.diagnostics import pseudo_label_health, teacher_gradient_split
from mpltools.reducer import LOCAL


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def _batch(seed, hidden=False):
    g = torch.Generator().manual_seed(seed)
    b = Batch(
        torch.randn(8, 4, generator=g),
        torch.randint(0, 3, (8,), generator=g),
        torch.randn(16, 4, generator=g),
        torch.randn(16, 4, generator=g),
    )
    if hidden:
        b.unlabeled_y = torch.randint(0, 3, (16,), generator=g)
    return b


def _nets(hp):
    t, s = _net(1), _net(2)
    return Networks(
        t,
        s,
        build_sgd(t, hp.teacher_lr, hp.momentum, hp.nesterov, hp.teacher_weight_decay, norm_parameter_names(t)),
        build_sgd(s, hp.student_lr, hp.momentum, hp.nesterov, hp.student_weight_decay, norm_parameter_names(s)),
        EMA(s, hp.ema_decay),
    )


def _hp(**kw):
    base = dict(
        total_steps=50,
        teacher_lr=0.1,
        student_lr=0.1,
        student_wait=2,
        lr_schedule="constant",
        uda_weight=1.0,
        uda_threshold=0.3,
        uda_ramp_steps=0,
        label_smoothing=0.1,
        ema_decay=0.9,
    )
    return MPLHyper(**{**base, **kw})


def test_gradient_split_adds_up_to_the_teachers_gradient_and_its_cosines_are_right():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    params = list(model.parameters())
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    out = model(x)
    terms = {"sup": 0.7 * nn.functional.cross_entropy(out, y), "uda": 2.0 * out.pow(2).mean(), "mpl": -0.3 * out[:, 0].sum()}
    split = teacher_gradient_split(terms, params, LOCAL)
    total = torch.autograd.grad(sum(terms.values()), params, retain_graph=True)
    parts = {k: torch.cat([g.reshape(-1) for g in torch.autograd.grad(v, params, retain_graph=True)]) for k, v in terms.items()}
    assert torch.allclose(parts["sup"] + parts["uda"] + parts["mpl"], torch.cat([g.reshape(-1) for g in total]), atol=1e-6)
    for k in ("sup", "uda", "mpl"):
        assert float(split[f"diag/t_grad_norm_{k}"]) == pytest.approx(float(parts[k].norm()), rel=1e-6)
    aux = parts["sup"] + parts["uda"]
    assert float(split["diag/t_grad_norm_aux"]) == pytest.approx(float(aux.norm()), rel=1e-6)
    assert float(split["diag/cos_mpl_aux"]) == pytest.approx(
        float(parts["mpl"] @ aux / (parts["mpl"].norm() * aux.norm())), rel=1e-5
    )
    assert float(split["diag/cos_mpl_sup"]) == pytest.approx(
        float(parts["mpl"] @ parts["sup"] / (parts["mpl"].norm() * parts["sup"].norm())), rel=1e-5
    )
    # A term without a graph (e.g. MPL during the wait) contributes a zero gradient, cosine 0.
    zero = teacher_gradient_split({**terms, "mpl": torch.zeros(())}, params, LOCAL)
    assert float(zero["diag/t_grad_norm_mpl"]) == 0.0 and float(zero["diag/cos_mpl_aux"]) == 0.0
    # fp16: the terms are scaled before differentiating and the gradients unscaled after.
    scaled = teacher_gradient_split(terms, params, LOCAL, scale=1024.0)
    assert float(scaled["diag/t_grad_norm_sup"]) == pytest.approx(float(split["diag/t_grad_norm_sup"]), rel=1e-6)


def test_pseudo_label_health_on_hand_built_labels():
    k = 4
    balanced = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    logits = nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 1, 1, 1, 1]), k).float()
    out = pseudo_label_health(balanced, logits, k, LOCAL, hidden_labels=torch.tensor([0, 1, 2, 3, 3, 3, 3, 3]))
    assert out["hist/pseudo_labels"].tolist() == [2.0, 2.0, 2.0, 2.0]
    assert float(out["diag/pl_entropy"]) == pytest.approx(math.log(4))
    assert float(out["diag/pl_entropy_norm"]) == pytest.approx(1.0)
    assert float(out["diag/pl_max_class_fraction"]) == pytest.approx(0.25)
    assert float(out["diag/pl_agreement"]) == pytest.approx(5 / 8)  # rows 0-3 and the 1 of row 5
    assert float(out["diag/pl_accuracy"]) == pytest.approx(5 / 8)  # rows 0-3 and the 3 of row 7
    collapsed = pseudo_label_health(torch.full((8,), 2), logits, k, LOCAL)
    assert collapsed["hist/pseudo_labels"].tolist() == [0.0, 0.0, 8.0, 0.0]
    assert float(collapsed["diag/pl_entropy"]) == 0.0 and float(collapsed["diag/pl_max_class_fraction"]) == 1.0
    assert "diag/pl_accuracy" not in collapsed


@pytest.mark.parametrize("pseudo_labels", ["sample", "soft"])
@pytest.mark.parametrize("feedback", ["taylor", "cosine"])
def test_diagnosing_changes_no_weight_statistic_or_rng(pseudo_labels, feedback):
    """Weights after 6 steps (2 waiting) are bitwise identical whether every step or none is diagnosed, with
    BN, dropout, EMA and sampled labels; hidden labels in the batch change nothing either."""
    hp = _hp(pseudo_labels=pseudo_labels, feedback=feedback)
    runs = []
    for diagnose, hidden in ((False, False), (True, True)):
        nets = _nets(hp)
        gen = torch.Generator().manual_seed(4)
        torch.manual_seed(11)
        outs = [mpl_step(nets, _batch(s, hidden), s, hp, generator=gen, diagnose=diagnose) for s in range(6)]
        runs.append((nets, outs))
    (a, out_a), (b, out_b) = runs
    for x, y in ((a.teacher, b.teacher), (a.student, b.student)):
        sx, sy = x.state_dict(), y.state_dict()
        assert all(torch.equal(sx[k], sy[k]) for k in sx)
    assert all(torch.equal(a.ema.shadow[k], b.ema.shadow[k]) for k in a.ema.shadow)
    assert [float(o["feedback/h"]) for o in out_a] == [float(o["feedback/h"]) for o in out_b]
    diag = out_b[-1]
    for key in (
        "diag/t_grad_norm_sup",
        "diag/t_grad_norm_uda",
        "diag/t_grad_norm_mpl",
        "diag/cos_mpl_aux",
        "diag/pl_entropy",
        "diag/pl_agreement",
        "diag/pl_accuracy",
    ):
        assert key in diag and math.isfinite(float(diag[key])), key
    assert float(diag["diag/t_grad_norm_mpl"]) > 0  # the student moved: the feedback reaches the teacher
    assert diag["hist/pseudo_labels"].shape == (3,) and float(diag["hist/pseudo_labels"].sum()) == 16
    waiting = out_b[0]  # lr 0: the labelled loss is still measured on diagnose steps, h is 0
    assert float(waiting["feedback/h"]) == 0.0 and float(waiting["student/ce_old"]) > 0
    assert float(waiting["student/ce_old"]) == float(waiting["student/ce_new"])
    assert float(waiting["diag/t_grad_norm_mpl"]) == 0.0
    assert "diag/pl_entropy" not in out_a[-1]


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_released_diagnoses_its_pseudo_labels_without_changing_what_it_trains(bf16):
    """`released` on diagnose steps: the health of its soft targets' argmax (the curve set against MPL's), by hand;
    the weights, statistics and metrics are bitwise those of an undiagnosed run, also under bf16 autocast (the
    recipes' "auto" precision on a GPU; CPU autocast runs the same code)."""
    import contextlib

    from mpltools.methods import released_step

    hp = _hp()
    runs = []
    for diagnose, hidden in ((False, False), (True, True)):
        nets = _nets(hp)
        torch.manual_seed(11)
        region = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with region:
            outs = [released_step(nets, _batch(s, hidden), s, hp, diagnose=diagnose) for s in range(4)]
        runs.append((nets, outs))
    assert all(math.isfinite(float(runs[1][1][-1][k])) for k in ("diag/pl_accuracy", "diag/pl_agreement", "diag/pl_entropy"))
    (a, out_a), (b, out_b) = runs
    for x, y in ((a.teacher, b.teacher), (a.student, b.student)):
        sx, sy = x.state_dict(), y.state_dict()
        assert all(torch.equal(sx[k], sy[k]) for k in sx)
    for plain, diagnosed in zip(out_a, out_b):
        assert all(torch.equal(plain[k], diagnosed[k]) for k in plain)
        assert not any(k.startswith(("diag/", "hist/")) for k in plain)
    # By hand, at the last step: the teacher's strong-view argmax before its update, against the hidden labels.
    nets = _nets(hp)
    torch.manual_seed(11)
    for s in range(3):
        released_step(nets, _batch(s, True), s, hp)
    batch = _batch(3, True)
    with torch.no_grad():
        nets.teacher.train()
        rng = torch.get_rng_state()
        teacher_strong = nets.teacher(torch.cat([batch.labeled_x, batch.unlabeled_weak, batch.unlabeled_strong]))[-16:]
        torch.set_rng_state(rng)
    out = released_step(nets, batch, 3, hp, diagnose=True)
    pseudo = teacher_strong.argmax(dim=-1)
    assert float(out["diag/pl_accuracy"]) == pytest.approx(float((pseudo == batch.unlabeled_y).float().mean()))
    assert float(out["hist/pseudo_labels"].sum()) == 16
    assert out["hist/pseudo_labels"].tolist() == torch.bincount(pseudo, minlength=3).float().tolist()
