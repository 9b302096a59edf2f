"""The Meta Pseudo Labels step: the paper's Algorithm 1 with the authors' engineering.

`mpl_step` reads one `Batch`, updates the student then the teacher of `Networks` in place and
returns metrics as 0-dim tensors (no `.item()`). It runs in five phases, numbered the same in the
code; "Alg." is Appendix B's Algorithm 1 as summarised in `reference/mpl-algorithm.md` §1.8, and the
other references are to that file's §1.

1. **Teacher outputs** (what Alg. 2 and 5-7 evaluate). One train-mode forward of the *pre-update*
   teacher over ``[x_l; x_u_weak; x_u_strong]`` (§1.2) gives the logits the pseudo labels and the MPL
   term are drawn from, its supervised CE (label-smoothed) and its UDA consistency (§1.3); the graph
   is kept for the teacher's backward in phase 5. One forward, not three, so that BN sees the mixed
   batch as in the authors' code. With Reduced MPL the teacher reads stored predictions instead of
   the images (`Batch.for_teacher`).
2. **Pseudo labels** (Alg. 2) from the teacher's logits of `pseudo_label_view`: sampled (the paper;
   unbiased for REINFORCE), argmax, or the soft distribution itself.
3. **Student update with CE_old and CE_new** (Alg. 3). Student forward on ``x_u_strong`` (the
   paper; ``x_u_weak`` with `student_view` "weak", a study option), backward
   of the label-smoothed CE against the pseudo labels, cross-process gradient mean, g_u kept (for
   dot/cosine feedback), coupled weight decay, clipping, finiteness check; then CE_old, the
   optimiser step (+ EMA), CE_new. Both CEs are the student's *unsmoothed* labelled loss measured
   under identical conditions (`measurement_mode`: dropout off, BN with the batch statistics of
   x_l or with the running statistics, never updating them), so h is exactly 0 when the student
   does not move. The authors measure CE_old inside the mixed train-mode batch ``[u_strong; l]``
   and CE_new in another train-mode pass, and the most used PyTorch port does the same: their h
   carries |h| ~ 0.1 of BN/dropout noise even at lr 0 (DESIGN §5, reference §7 item 5,
   perf-anchors §5.3). When the student cannot move (its lr is 0 during the wait, or an fp16
   overflow skipped its update) h is 0 by definition and neither measurement runs. At lr 0 the
   optimiser step still runs (momentum accumulates, as in the authors' code) but moves nothing.
4. **Feedback h** (Alg. 4) with the paper's sign (§1.9), from globally reduced quantities so that
   every process sees the same h: "taylor" ``CE_old - CE_new``; "dot" ``eta * <grad L_l(theta'),
   g_u>`` (Appendix A eq. 12 with the duplicated eta fixed), where eta is the step size the update
   actually gave g_u (lr, x (1 + momentum) for Nesterov, x the clip factor); "cosine"
   ``cos(grad L_l(theta'), g_u)`` (Appendix C.3). The optional moving-average baseline starts at
   0 and is updated first, like the code: ``b <- b - (1 - decay)(b - h)``, ``h_c = h - b``. With
   soft pseudo labels the feedback is instead the exact one-step meta-gradient ``dL_l(theta')/dp``
   (`_soft_meta_gradient`); h and the baseline are then only logged. The factor h multiplies,
   ``CE(y_hat, T(x_u_view))``, is computed here too, so that its global mean travels in the same
   cross-process reduction as CE_old and CE_new (one collective, not two).
5. **Teacher update** (Alg. 5-8) on ``w_sup * CE_sup + w_uda * UDA + sign * mpl_weight * h_c *
   CE(y_hat, T(x_u_view))``: the REINFORCE surrogate whose gradient raises ``T(y_hat|x_u)`` when the
   student's step helped (h > 0); ``sign`` is +1 except in the flipped ablation, and with soft
   labels the MPL term is ``sum softmax(T(x_u_view)) * dL_l/dp``. Backward, cross-process mean,
   decay, clipping, finiteness check, optimiser step; only then is the new baseline committed, so a
   step that raises leaves it as it was.

Precision (see `precision.py`): the teacher's forward and the student's strong-view
forward/backward run in the caller's autocast dtype (bf16/fp16: the bulk of the FLOPs). CE_old,
CE_new, ``grad L_l(theta')`` and h (every dot product and cosine of it) run with autocast off, in
fp32, at the weights they name (before / after the update), because h is a small difference of
nearly equal numbers. Parameters, gradients and optimiser state are fp32. Under fp16 each
network's loss is scaled (`LossScaler`); an overflow skips that network's update, and a skipped
student update gives the teacher no feedback (h = 0, ``student/skipped`` = 1, baseline unchanged).

With ``diagnose=True`` (logging steps) the step also returns the teacher's gradient split by term
and pseudo-label health (`diagnostics.py`); this changes no weight, statistic or RNG state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpltools.losses import flat_cosine, flat_dot, smoothed_cross_entropy
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
from mpltools.methods.diagnostics import mpl_metrics, pseudo_label_health, teacher_gradient_split
from mpltools.methods.optim import apply_weight_decay_and_clip, clip_scale
from mpltools.methods.precision import LossScaler, apply_update, full_precision, scaled
from mpltools.methods.teacher import auxiliary_losses, begin_step, teacher_forward
from mpltools.reducer import LOCAL, Reducer


def mpl_step(
    nets: Networks,
    batch: Batch,
    step: int,
    hp: MPLHyper,
    reducer: Reducer = LOCAL,
    generator: torch.Generator | None = None,
    diagnose: bool = False,
) -> dict[str, Tensor]:
    """One MPL step: the student learns the teacher's pseudo labels, then the teacher learns from
    how that changed the student's labelled loss. The phases are the module docstring's 1-5.

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
        Metrics (0-dim tensors, global means), listed in `diagnostics.mpl_metrics`.

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
    t_lr, s_lr = begin_step(nets, step, hp)
    soft = hp.pseudo_labels == "soft"
    can_move = s_lr > 0.0  # known on the host: lr 0 (the wait) leaves every student weight as it is
    meta = soft and can_move  # the soft meta-gradient's double-backward graph is only needed then
    grad_feedback = hp.feedback in ("dot", "cosine") and can_move
    s_scale = s_scaler.scale if s_scaler is not None else 1.0  # read now: the student's update may change it

    # 1. Teacher outputs: one forward, its auxiliary losses (graph kept for the teacher's backward in 5).
    t_l, t_weak, t_strong = teacher_forward(teacher, batch.for_teacher(), hp.teacher_weak_no_grad)
    sup, uda, mask, w_uda = auxiliary_losses(t_l, t_weak, t_strong, batch.labeled_y, step, hp)
    t_view = t_strong if hp.pseudo_label_view == "strong" else t_weak

    # 2. Pseudo labels y_hat.
    target = draw_pseudo_labels(t_view, hp.pseudo_labels, generator)

    # 3. Student update on CE(y_hat, S(x_u of student_view)): backward, reduce, keep g_u, decay, clip, check;
    #    CE_old, step (+ EMA), CE_new (+ grad L_l(theta') for the meta-gradient and dot/cosine).
    s_loss, s_logits, g_u_graph, p_leaf = _student_backward(student, batch.unlabeled(hp.student_view), target, hp, s_scaler, meta)
    reduce_gradients(s_params, reducer, s_scaler)
    g_u = flatten(p.grad for p in s_params) if grad_feedback else None  # the pseudo-label gradient alone
    s_norm = apply_weight_decay_and_clip(nets.student_opt, hp.max_grad_norm)
    m = reducer.mean(torch.stack([sup.detach(), uda.detach(), mask, s_loss.detach()]))
    checks = {"teacher supervised loss": m[0], "teacher UDA loss": m[1], "student loss": m[3]}
    check_finite(step, checks if s_scaler is not None else {**checks, "student gradient norm": s_norm})
    zero = torch.zeros((), device=batch.labeled_x.device)
    ce_old = _labelled_loss(student, batch, hp.feedback_bn)[0] if can_move or diagnose else zero
    skipped = apply_update(nets.student_opt, s_scaler, s_norm)
    if nets.ema is not None and not skipped:
        nets.ema.update(student, step)
    moved = can_move and not skipped
    ce_new, g_new = ce_old, None
    if moved:
        grad_params = s_params if meta or grad_feedback else None
        ce_new, g_new = _labelled_loss(student, batch, hp.feedback_bn, grad_params, reducer)

    # 4. Feedback: the MPL factor (hard labels: CE(y_hat, T(x_u)); soft: the meta-gradient's surrogate),
    #    reduced with CE_old/CE_new; h from global values; the baseline (committed after the teacher's check).
    eta = _effective_step_size(nets.student_opt, s_norm, hp.max_grad_norm) if moved and (meta or grad_feedback) else 0.0
    if not soft:
        mpl_value = F.cross_entropy(t_view, target)  # REINFORCE surrogate CE, unsmoothed
    elif moved:
        dl_dp = _soft_meta_gradient(g_u_graph, g_new, p_leaf, eta / s_scale)
        mpl_value = (torch.softmax(t_view, dim=-1) * dl_dp.detach()).sum()
    else:
        mpl_value = zero  # the student did not move: no meta-gradient
    ce_old, ce_new, mpl_mean = reducer.mean(torch.stack([ce_old, ce_new.detach(), mpl_value.detach()]))
    h = _feedback(hp.feedback, ce_old, ce_new, g_new, g_u, eta) if moved else zero
    b = nets.baseline
    centred = hp.baseline and not skipped  # an update that did not happen leaves the baseline alone
    new_b = b - (1.0 - hp.baseline_decay) * (b - h) if centred else b.clone()
    h_c = (h - new_b if centred else h).detach()

    # 5. Teacher update (+ its gradient split by term on diagnose steps), then the baseline is committed.
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
    return mpl_metrics(
        nets, hp, losses=m, uda_weight=w_uda, mpl_mean=mpl_mean, ce=(ce_old, ce_new), h=(h, h_c),
        lrs=(t_lr, s_lr), grad_norms=(t_norm, s_norm), skipped=(t_skipped, skipped), diag=diag,
    )  # fmt: skip


# ----------------------------------------------------------------------------- 3. student update


def _student_backward(
    student: nn.Module, x_s: Tensor, target: Tensor, hp: MPLHyper, scaler: LossScaler | None, meta: bool
) -> tuple[Tensor, Tensor, list[Tensor] | None, Tensor | None]:
    """The student's label-smoothed CE on the pseudo labels, backward into ``.grad`` (x the fp16 scale).

    Returns:
        (loss, logits, and with `meta` the graph-carrying g_u and the leaf p of `_soft_student_backward`,
        else None, None).
    """
    if meta:
        return _soft_student_backward(student, x_s, target, hp.label_smoothing, scaler.scale if scaler is not None else 1.0)
    logits = student(x_s)
    loss = smoothed_cross_entropy(logits, target, hp.label_smoothing)
    scaled(loss, scaler).backward()
    return loss, logits, None, None


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


def _labelled_loss(
    student: nn.Module, batch: Batch, feedback_bn: str, grad_params: list[Tensor] | None = None, reducer: Reducer = LOCAL
) -> tuple[Tensor, Tensor | None]:
    """CE_old or CE_new: the student's unsmoothed labelled loss at its current weights.

    In fp32 (autocast off) and in `measurement_mode`, so that the two measurements differ only by
    the update. With `grad_params` also ``grad L_l`` with respect to them, flat and globally
    averaged, kept out of the optimiser's ``.grad``.

    Returns:
        (local CE, global flat gradient or None).
    """
    x_l, y_l = batch.labeled_x, batch.labeled_y
    grad = None
    with full_precision(x_l.device.type), torch.set_grad_enabled(grad_params is not None), measurement_mode(student, feedback_bn):
        ce = F.cross_entropy(student(x_l), y_l)
        if grad_params is not None:
            grad = reducer.mean(flatten(_grads_or_zeros(ce, grad_params)))
    return ce, grad


def _grads_or_zeros(loss: Tensor, params: list[Tensor], **kwargs) -> list[Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True, **kwargs)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


# ----------------------------------------------------------------------------- 4. feedback


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


def _feedback(kind: str, ce_old: Tensor, ce_new: Tensor, g_new: Tensor | None, g_u: Tensor | None, eta) -> Tensor:
    """h of a student that moved, with the paper's sign: ``CE_old - CE_new`` ("taylor"),
    ``eta * <grad L_l(theta'), g_u>`` ("dot") or their cosine ("cosine"); global values in, global h out."""
    if kind == "taylor":
        return ce_old - ce_new
    if kind == "dot":
        return eta * flat_dot(g_new, g_u)
    return flat_cosine(g_new, g_u)
