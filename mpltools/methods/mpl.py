"""The Meta Pseudo Labels step: the paper's Algorithm 1 with the authors' engineering.

Reads one `Batch`, updates the student then the teacher of `Networks` in place, returns
metrics as 0-dim tensors (no `.item()`). References are to `reference/mpl-algorithm.md`.

One step (reference §1.10):

1. Teacher forward (train mode) once on ``[x_l; x_u_weak; x_u_strong]`` -> supervised CE
   (smoothed) and UDA consistency (§1.3).
2. Pseudo labels from the teacher's logits of `pseudo_label_view`: sampled (paper), argmax, or
   the soft distribution; the student learns them on the strong view with label smoothing.
3. Student forward (train mode) on ``x_u_strong``, backward, cross-process gradient mean,
   g_u kept (dot/cosine), coupled weight decay, clipping, finiteness check.
4. CE_old, student step (+ EMA), CE_new. Both CEs are the student's *unsmoothed* labelled loss
   measured under identical conditions by `measurement_mode`: dropout off and BN either with
   the batch statistics of x_l or with the running statistics, never updating them. So h is
   exactly 0 when the student does not move. The authors measure CE_old inside the mixed
   train-mode batch ``[u_strong; l]`` and CE_new in another train-mode pass, and the most used
   PyTorch port does the same: their h carries |h| ~ 0.1 of BN/dropout noise even at lr 0
   (DESIGN §5, reference §7 item 5, perf-anchors §5.3). When the student cannot move (its lr is 0
   during the wait, or an fp16 overflow skipped its update) h is 0 by definition and neither
   measurement runs.
5. Feedback h with the paper's sign (§1.9), from globally reduced quantities so every process
   sees the same h: "taylor" ``CE_old - CE_new``; "dot" ``eta * <grad L_l(theta'), g_u>``
   (Appendix A eq. 12 with the duplicated eta fixed), where g_u is the student's pseudo-label
   gradient and eta the step size the update actually gave it (lr, x (1 + momentum) for
   Nesterov, x the clip factor); "cosine" ``cos(grad L_l(theta'), g_u)`` (Appendix C.3).
   Optional moving-average baseline, updated first (like the code), started at 0.
6. Teacher loss ``w_sup * CE_sup + w_uda * UDA + sign * mpl_weight * h_c * CE(y_hat, T(x_u_view))``:
   the REINFORCE surrogate whose gradient raises ``T(y_hat|x_u)`` when the student's step
   helped (h > 0); ``sign`` is +1 except in the flipped ablation. With soft pseudo labels the
   MPL term is instead the exact one-step meta-gradient (see `_soft_meta_gradient`).

Precision (see `precision.py`): the teacher's forward and the student's strong-view
forward/backward run in the caller's autocast dtype (bf16/fp16: the bulk of the FLOPs). CE_old,
CE_new, ``grad L_l(theta')`` and h (every dot product and cosine of it) run with autocast off, in
fp32, at the weights they name (before / after the update). Parameters, gradients and optimiser
state are fp32. Under fp16 each network's loss is scaled (`LossScaler`); an overflow skips that
network's update, and a skipped student update gives the teacher no feedback (h = 0,
``student/skipped`` = 1, baseline unchanged).

With ``diagnose=True`` (logging steps) the step also returns the teacher's gradient split by term
and pseudo-label health (`diagnostics.py`); this changes no weight, statistic or RNG state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpltools.losses import flat_cosine, flat_dot, smoothed_cross_entropy, uda_consistency, uda_weight
from mpltools.methods.common import (
    Batch,
    MPLHyper,
    Networks,
    check_finite,
    draw_pseudo_labels,
    finish_gradients,
    flatten,
    measurement_mode,
    reduce_gradients,
    trainable,
)
from mpltools.methods.diagnostics import pseudo_label_health, teacher_gradient_split
from mpltools.methods.optim import apply_weight_decay_and_clip, clip_scale, learning_rate, set_lr
from mpltools.methods.precision import apply_update, full_precision, scaled
from mpltools.reducer import LOCAL, Reducer


def teacher_forward(model: nn.Module, batch: Batch, weak_no_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Logits on (labelled, weak, strong) from ONE forward over their concatenation.

    BN statistics are those of the mixed batch, as in the authors' code (§1.2). With
    `weak_no_grad` the weak view runs in a separate no-grad forward: about 22% less work, but
    its BN statistics (and therefore the UDA target and weak-view pseudo labels) come from the
    weak batch alone, and the strong/labelled rows see statistics without it.
    """
    x_l, x_w, x_s = batch.labeled_x, batch.unlabeled_weak, batch.unlabeled_strong
    n_l, n_u = x_l.shape[0], x_s.shape[0]
    if weak_no_grad:
        with torch.no_grad():
            t_weak = model(x_w)
        t_l, t_strong = model(torch.cat([x_l, x_s])).split([n_l, n_u])
        return t_l, t_weak, t_strong
    t_l, t_weak, t_strong = model(torch.cat([x_l, x_w, x_s])).split([n_l, n_u, n_u])
    return t_l, t_weak, t_strong


def auxiliary_losses(
    t_l: Tensor, t_weak: Tensor, t_strong: Tensor, y_l: Tensor, step: int, hp: MPLHyper
) -> tuple[Tensor, Tensor, Tensor, float]:
    """(supervised CE, UDA loss, UDA mask ratio, UDA weight) of the teacher (§1.3); local means."""
    sup = smoothed_cross_entropy(t_l, y_l, hp.label_smoothing)
    uda, mask = uda_consistency(t_weak, t_strong, hp.uda_temperature, hp.uda_threshold)
    return sup, uda, mask, uda_weight(step, hp.uda_weight, hp.uda_ramp_steps)


def learning_rates(step: int, hp: MPLHyper) -> tuple[float, float]:
    """(teacher lr, student lr); the student waits, the teacher does not (§1.11)."""
    t_lr = learning_rate(step, hp.teacher_lr, hp.teacher_warmup, hp.total_steps, 0, hp.lr_schedule)
    s_lr = learning_rate(step, hp.student_lr, hp.student_warmup, hp.total_steps, hp.student_wait, hp.lr_schedule)
    return t_lr, s_lr


def _grads_or_zeros(loss: Tensor, params: list[Tensor], **kwargs) -> list[Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True, **kwargs)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _soft_student_backward(
    student: nn.Module, x_s: Tensor, probs: Tensor, smoothing: float, scale: float
) -> tuple[Tensor, Tensor, list[Tensor], Tensor]:
    """Student loss on soft targets, keeping a differentiable graph from p to g_u.

    The forward runs through `functional_call` on detached *copies* of the parameters, so the
    optimiser's in-place update cannot invalidate the graph needed later for the
    double-backward; the values (and the dropout mask) are those of the real update. Fills
    ``.grad`` of the real parameters with ``scale * g_u`` (fp16 loss scale; 1 otherwise).

    Returns:
        (loss, logits, scale * g_u with graph to the leaf p, the leaf p).
    """
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in named}
    p_leaf = probs.detach().requires_grad_(True)
    logits = torch.func.functional_call(student, theta, (x_s,))
    loss = smoothed_cross_entropy(logits, p_leaf, smoothing)
    g_u = _grads_or_zeros(loss * scale if scale != 1.0 else loss, list(theta.values()), create_graph=True)
    for (_, p), g in zip(named, g_u):
        p.grad = g.detach().clone()
    return loss, logits, g_u, p_leaf


def _effective_step_size(opt: torch.optim.Optimizer, norm: Tensor, max_grad_norm: float | None):
    """d theta' / d g of the student's update, treating state that does not depend on g as fixed.

    Plain SGD and heavy-ball momentum (dampening 0): ``lr``; Nesterov: ``lr * (1 + momentum)``
    (``theta' = theta - lr * ((1 + m) g + m^2 buf)``). Weight decay adds ``wd * theta``, which
    does not depend on the pseudo labels, so all of these are exact. Clipping multiplies by the
    clip factor actually applied; its own dependence on g is ignored (an approximation, exact
    whenever the norm is below the bound).
    """
    group = opt.param_groups[0]
    if any(g["lr"] != group["lr"] or g["momentum"] != group["momentum"] for g in opt.param_groups):
        raise ValueError("soft pseudo labels and dot/cosine feedback need one lr and momentum for all student param groups")
    if group.get("dampening", 0.0):
        raise ValueError("soft pseudo labels and dot/cosine feedback need an SGD student optimiser with dampening 0")
    eta = group["lr"] * (1.0 + group["momentum"]) if group["nesterov"] else group["lr"]
    return eta * clip_scale(norm, max_grad_norm)


def _soft_meta_gradient(g_u: list[Tensor], g_new: Tensor, p_leaf: Tensor, eta: Tensor | float) -> Tensor:
    """dL_l(theta')/dp for theta' = theta - eta * g_u(p) (the paper's eq. 3 with soft labels).

    ``= -eta * d/dp <g_l', g_u(p)>`` with ``g_l' = grad L_l(theta')`` held fixed (first-order in
    the update, exact for one SGD step; the paper's footnote 2 ignores theta_S's dependence on
    theta_T from earlier steps). Label smoothing is inside g_u(p) because the student's target
    was built from the same leaf p. Under several processes g_new is the global gradient and
    g_u the local one; the teacher's gradient mean then supplies the 1/world_size of the
    averaged update. `eta` also divides out an fp16 loss scale carried by g_u.
    """
    inner = sum((g * gn.view_as(g)).sum() for g, gn in zip(g_u, g_new.split([g.numel() for g in g_u])))
    (d_inner,) = torch.autograd.grad(inner, p_leaf, allow_unused=True)
    if d_inner is None:
        return torch.zeros_like(p_leaf)
    return -eta * d_inner


def mpl_step(
    nets: Networks,
    batch: Batch,
    step: int,
    hp: MPLHyper,
    reducer: Reducer = LOCAL,
    generator: torch.Generator | None = None,
    diagnose: bool = False,
) -> dict[str, Tensor]:
    """One MPL step: student update from the teacher's pseudo labels, then teacher update.

    Args:
        nets: teacher, student, their optimisers (`build_sgd`), optional student EMA, baseline,
            and (fp16) loss scalers.
        batch: local labelled and unlabelled (weak and strong views) batch.
        step: global step (0-based), drives every schedule and the UDA ramp.
        hp: hyper-parameters.
        reducer: cross-process means; `LOCAL` for one process.
        generator: RNG for sampled pseudo labels (on the logits' device; seed it per process).
        diagnose: also return ``diag/*`` and ``hist/pseudo_labels`` (logging steps only).

    Returns:
        Metrics (0-dim tensors, global means): teacher/{sup,uda,uda_weight,uda_mask,mpl,loss},
        student/{loss,ce_old,ce_new,skipped}, feedback/{h,baseline,h_centered}, lr/{teacher,student},
        grad_norm/{teacher,student}; under fp16 also amp/{teacher,student}_scale and
        teacher/skipped. teacher/mpl is CE(y_hat, T(x_u)) for hard labels and the value of the soft
        surrogate ``sum p * dL/dp`` for soft labels. student/ce_old and ce_new are only measured when
        the student moves or on diagnose steps (else 0).

    Raises:
        NonFiniteError: before the student update (nothing updated; BN running statistics may
            have moved) or before the teacher update (the student is already updated). Under fp16
            a non-finite gradient is an overflow instead: that update is skipped.

    The step leaves the processed gradients (reduced, decayed, clipped) in ``.grad`` of both
    networks; they are cleared at the start of the next step.
    """
    teacher, student = nets.teacher, nets.student
    t_params, s_params = trainable(teacher), trainable(student)
    t_scaler, s_scaler = nets.teacher_scaler, nets.student_scaler
    t_lr, s_lr = learning_rates(step, hp)
    set_lr(nets.teacher_opt, t_lr)
    set_lr(nets.student_opt, s_lr)
    nets.teacher_opt.zero_grad(set_to_none=True)
    nets.student_opt.zero_grad(set_to_none=True)
    teacher.train()
    student.train()
    x_l, y_l, x_s = batch.labeled_x, batch.labeled_y, batch.unlabeled_strong
    device_type = x_l.device.type
    soft = hp.pseudo_labels == "soft"
    can_move = s_lr > 0.0  # known on the host: lr 0 (the wait) leaves every student weight as it is
    meta = soft and can_move  # the soft meta-gradient's double-backward graph is only needed then
    grad_feedback = hp.feedback in ("dot", "cosine") and can_move
    s_scale = s_scaler.scale if s_scaler is not None else 1.0

    # 1-2. Teacher: one forward, auxiliary losses (graph kept for the teacher's backward).
    # (Reduced MPL: the teacher reads stored predictions instead of the images, `Batch.for_teacher`.)
    t_l, t_weak, t_strong = teacher_forward(teacher, batch.for_teacher(), hp.teacher_weak_no_grad)
    sup, uda, mask, w_uda = auxiliary_losses(t_l, t_weak, t_strong, y_l, step, hp)
    t_view = t_strong if hp.pseudo_label_view == "strong" else t_weak

    # 3-4. Pseudo labels; student forward on the strong view, backward, reduce, keep g_u, decay, clip.
    target = draw_pseudo_labels(t_view, hp.pseudo_labels, generator)
    if meta:
        s_loss, s_logits, g_u_graph, p_leaf = _soft_student_backward(student, x_s, target, hp.label_smoothing, s_scale)
    else:
        s_logits = student(x_s)
        s_loss = smoothed_cross_entropy(s_logits, target, hp.label_smoothing)
        scaled(s_loss, s_scaler).backward()
    reduce_gradients(s_params, reducer, s_scaler)
    g_u = flatten(p.grad for p in s_params) if grad_feedback else None  # the pseudo-label gradient alone
    s_norm = apply_weight_decay_and_clip(nets.student_opt, hp.max_grad_norm)
    m = reducer.mean(torch.stack([sup.detach(), uda.detach(), mask, s_loss.detach()]))
    checks = {"teacher supervised loss": m[0], "teacher UDA loss": m[1], "student loss": m[3]}
    check_finite(step, checks if s_scaler is not None else {**checks, "student gradient norm": s_norm})

    # 5. CE_old, update (+ EMA), CE_new: fp32, at the weights they name, under identical conditions.
    # At lr 0 the update still runs (momentum accumulates, as in the authors' code) but moves nothing.
    zero = torch.zeros((), device=x_l.device)
    ce_old = zero
    if can_move or diagnose:
        with full_precision(device_type), torch.no_grad(), measurement_mode(student, hp.feedback_bn):
            ce_old = F.cross_entropy(student(x_l), y_l)
    skipped = apply_update(nets.student_opt, s_scaler, s_norm)
    if nets.ema is not None and not skipped:
        nets.ema.update(student, step)
    moved = can_move and not skipped
    ce_new = ce_old
    if moved:
        need_grad_new = meta or grad_feedback
        with full_precision(device_type), torch.set_grad_enabled(need_grad_new), measurement_mode(student, hp.feedback_bn):
            ce_new = F.cross_entropy(student(x_l), y_l)
            if need_grad_new:  # g_l' = grad L_l(theta'), global, kept out of the optimiser's .grad
                g_new = reducer.mean(flatten(_grads_or_zeros(ce_new, s_params)))
    eta = _effective_step_size(nets.student_opt, s_norm, hp.max_grad_norm) if moved and (meta or grad_feedback) else 0.0
    if not soft:
        mpl_value = F.cross_entropy(t_view, target)  # REINFORCE surrogate CE, unsmoothed
    elif moved:
        dl_dp = _soft_meta_gradient(g_u_graph, g_new, p_leaf, eta / s_scale)
        mpl_value = (torch.softmax(t_view, dim=-1) * dl_dp.detach()).sum()
    else:
        mpl_value = zero  # the student did not move: no meta-gradient
    ce_old, ce_new, mpl_mean = reducer.mean(torch.stack([ce_old, ce_new.detach(), mpl_value.detach()]))

    # 6. Feedback with the paper's sign; baseline updated first, committed after the teacher's check.
    # An update that did not happen (fp16 overflow) gives no feedback and leaves the baseline alone.
    # (Soft labels: h and the baseline are only logged; the teacher gets the meta-gradient.)
    if not moved:
        h = zero
    elif hp.feedback == "taylor":
        h = ce_old - ce_new
    elif hp.feedback == "dot":
        h = eta * flat_dot(g_new, g_u)
    else:
        h = flat_cosine(g_new, g_u)
    b = nets.baseline
    centred = hp.baseline and not skipped
    new_b = b - (1.0 - hp.baseline_decay) * (b - h) if centred else b.clone()
    h_c = (h - new_b if centred else h).detach()

    # 7-8. Teacher loss (+ its split by term on diagnose steps), backward, reduce, decay, clip, check, step.
    mpl_term = hp.feedback_sign * (mpl_value if soft else h_c * mpl_value)
    terms = {"sup": hp.teacher_supervised_weight * sup, "uda": w_uda * uda, "mpl": hp.mpl_weight * mpl_term}
    diag = teacher_gradient_split(terms, t_params, reducer, t_scaler.scale if t_scaler else 1.0) if diagnose else {}
    scaled(terms["sup"] + terms["uda"] + terms["mpl"], t_scaler).backward()
    t_norm = finish_gradients(nets.teacher_opt, t_params, reducer, hp.max_grad_norm, t_scaler)
    checks = {"student CE_old": ce_old, "student CE_new": ce_new, "h": h, "teacher MPL term": mpl_mean}
    check_finite(step, checks if t_scaler is not None else {**checks, "teacher gradient norm": t_norm})
    t_skipped = apply_update(nets.teacher_opt, t_scaler, t_norm)
    b.copy_(new_b)

    if diagnose:
        classes = target.argmax(dim=-1) if target.is_floating_point() else target
        diag.update(pseudo_label_health(classes, s_logits, t_view.shape[-1], reducer, batch.unlabeled_y))
    mpl_global = mpl_mean if soft else h_c * mpl_mean
    out = {
        "teacher/sup": m[0],
        "teacher/uda": m[1],
        "teacher/uda_weight": torch.tensor(w_uda),
        "teacher/uda_mask": m[2],
        "teacher/mpl": mpl_mean,
        "teacher/loss": hp.teacher_supervised_weight * m[0] + w_uda * m[1] + hp.feedback_sign * hp.mpl_weight * mpl_global,
        "student/loss": m[3],
        "student/ce_old": ce_old,
        "student/ce_new": ce_new,
        "student/skipped": torch.tensor(float(skipped)),
        "feedback/h": h.detach(),
        "feedback/baseline": b.detach().clone(),
        "feedback/h_centered": h_c,
        "lr/teacher": torch.tensor(t_lr),
        "lr/student": torch.tensor(s_lr),
        "grad_norm/teacher": t_norm,
        "grad_norm/student": s_norm,
        **diag,
    }
    if s_scaler is not None:
        out.update(
            {
                "amp/student_scale": torch.tensor(s_scaler.scale),
                "amp/teacher_scale": torch.tensor(t_scaler.scale),
                "teacher/skipped": torch.tensor(float(t_skipped)),
            }
        )
    return out
