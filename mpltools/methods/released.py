"""The authors' released MPL step (`MPL.step_fn` in google-research `meta_pseudo_labels/
training_utils.py`), reproduced for comparison. Not Meta Pseudo Labels: read on.

Reads one `Batch`, updates `Networks` in place, returns metrics. References are to
`reference/mpl-algorithm.md` §1.2-§1.7.

What it computes, line by line like the code:

* teacher: one train-mode forward on ``[x_l; x_u_weak; x_u_strong]``; supervised CE (smoothed)
  and UDA (§1.3). The code never runs the teacher's BN update ops (§1.6), so the teacher's
  running statistics are frozen here too;
* student: one train-mode forward on ``[x_u_strong; x_l]`` (``x_u_weak`` with `student_view` "weak"); loss = CE against the teacher's
  *soft* strong-view prediction, label-smoothed (§1.4); CE_old = unsmoothed CE of the labelled
  rows of that same mixed batch (BN statistics over strong + labelled, the update's dropout
  mask);
* student update (coupled weight decay, clipping, momentum), EMA;
* CE_new from a second train-mode forward on x_l alone (dropout on, batch statistics of x_l;
  this pass's BN update ops are not run by the code, so running statistics stay frozen);
* ``d = CE_new - CE_old`` (the code's sign, the opposite of the paper's, §1.9); baseline
  ``b <- b - (1 - decay) * (b - d)`` updated first; ``d_c = stop_grad(d - b)``. The baseline
  starts at 0 here; TF's default initialiser drew it from U(-sqrt 3, sqrt 3) (§1.5);
* teacher loss ``CE_sup + w_uda * UDA + d_c * CE(stop_grad(softmax(t_strong)), t_strong)``.

The last factor's gradient with respect to t_strong is ``softmax - stop_grad(softmax) = 0``:
the "feedback" term contributes exactly zero gradient (up to rounding) whatever d_c is (§1.7).
As released, a step is a UDA-trained teacher plus a student distilled from its soft strong-view
predictions; ``d`` is logged but inert. Because CE_old and CE_new are measured under
different BN batches and dropout masks, d is non-zero noise even when the student does not
move.

Hyper-parameters read: the schedules, optimiser settings, label_smoothing, the UDA settings,
baseline_decay, teacher_supervised_weight and mpl_weight (both 1 in the code), and student_view (the
student's images; "strong" in the code, "weak" a study option that keeps the teacher's strong-view targets). Ignored:
pseudo_labels, pseudo_label_view, feedback, feedback_bn, baseline (always on) and
teacher_weak_no_grad.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mpltools.losses import smoothed_cross_entropy
from mpltools.methods.common import (
    Batch,
    MPLHyper,
    Networks,
    check_finite,
    finish_gradients,
    frozen_bn_stats,
    trainable,
)
from mpltools.methods.diagnostics import pseudo_label_health
from mpltools.methods.precision import apply_update, scaled
from mpltools.methods.teacher import auxiliary_losses, begin_step, teacher_forward
from mpltools.reducer import LOCAL, Reducer


def released_step(
    nets: Networks,
    batch: Batch,
    step: int,
    hp: MPLHyper,
    reducer: Reducer = LOCAL,
    generator: torch.Generator | None = None,
    diagnose: bool = False,
) -> dict[str, Tensor]:
    """One step of the authors' released code; same signature and metrics as `mpl_step`.

    `feedback/h` is the code's ``d = CE_new - CE_old`` and `feedback/h_centered` is ``d - b``.
    `generator` is unused (soft labels need no sampling). On `diagnose` steps the pseudo labels' health is
    added (`diagnostics.pseudo_label_health` of the argmax of the soft targets, as for MPL's soft labels:
    with hidden labels ``diag/pl_accuracy``, the curve to set against MPL's); it changes nothing trained. The code ran in
    bf16 on TPUs: CE_old and CE_new are both measured in the step's (autocast) precision here too,
    at the weights they name (the trainer's autocast region caches no weights). Under fp16 an
    overflowing update is skipped and d is then 0.
    """
    del generator
    t_scaler, s_scaler = nets.teacher_scaler, nets.student_scaler
    teacher, student = nets.teacher, nets.student
    t_params, s_params = trainable(teacher), trainable(student)
    t_lr, s_lr = begin_step(nets, step, hp)
    x_l, y_l, x_s = batch.labeled_x, batch.labeled_y, batch.unlabeled(hp.student_view)

    with frozen_bn_stats(teacher):
        t_l, t_weak, t_strong = teacher_forward(teacher, batch, weak_no_grad=False)
    sup, uda, mask, w_uda = auxiliary_losses(t_l, t_weak, t_strong, y_l, step, hp)
    p_teacher = torch.softmax(t_strong.detach(), dim=-1)

    s_strong, s_l_old = student(torch.cat([x_s, x_l])).split([x_s.shape[0], x_l.shape[0]])
    s_loss = smoothed_cross_entropy(s_strong, p_teacher, hp.label_smoothing)
    ce_old = F.cross_entropy(s_l_old.detach(), y_l)
    scaled(s_loss, s_scaler).backward()
    s_norm = finish_gradients(nets.student_opt, s_params, reducer, hp.max_grad_norm, s_scaler)
    m = reducer.mean(torch.stack([sup.detach(), uda.detach(), mask, s_loss.detach()]))
    checks = {"teacher supervised loss": m[0], "teacher UDA loss": m[1], "student loss": m[3]}
    check_finite(step, checks if s_scaler else {**checks, "student gradient norm": s_norm})
    skipped = apply_update(nets.student_opt, s_scaler, s_norm)
    if nets.ema is not None and not skipped:
        nets.ema.update(student, step)

    with torch.no_grad(), frozen_bn_stats(student):
        ce_new = F.cross_entropy(student(x_l), y_l)
    # The "MPL" cross-entropy: its target is the teacher's own detached prediction (zero grad).
    mpl_ce = smoothed_cross_entropy(t_strong, p_teacher)
    ce_old, ce_new, mpl_mean = reducer.mean(torch.stack([ce_old, ce_new, mpl_ce.detach()]))

    d = ce_new - ce_old if not skipped else torch.zeros_like(ce_new)
    b = nets.baseline
    new_b = b - (1.0 - hp.baseline_decay) * (b - d)
    d_c = (d - new_b).detach()

    t_loss = hp.teacher_supervised_weight * sup + w_uda * uda + hp.mpl_weight * d_c * mpl_ce
    scaled(t_loss, t_scaler).backward()
    t_norm = finish_gradients(nets.teacher_opt, t_params, reducer, hp.max_grad_norm, t_scaler)
    checks = {"student CE_old": ce_old, "student CE_new": ce_new, "h": d, "teacher MPL term": mpl_mean}
    check_finite(step, checks if t_scaler else {**checks, "teacher gradient norm": t_norm})
    apply_update(nets.teacher_opt, t_scaler, t_norm)
    b.copy_(new_b)

    diag = {}
    if diagnose:
        diag = pseudo_label_health(p_teacher.argmax(dim=-1), s_strong, p_teacher.shape[-1], reducer, batch.unlabeled_y)
    return {
        **diag,
        "teacher/sup": m[0],
        "teacher/uda": m[1],
        "teacher/uda_weight": torch.tensor(w_uda),
        "teacher/uda_mask": m[2],
        "teacher/mpl": mpl_mean,
        "teacher/loss": hp.teacher_supervised_weight * m[0] + w_uda * m[1] + hp.mpl_weight * d_c * mpl_mean,
        "student/loss": m[3],
        "student/ce_old": ce_old,
        "student/ce_new": ce_new,
        "feedback/h": d,
        "feedback/baseline": b.detach().clone(),
        "feedback/h_centered": d_c,
        "lr/teacher": torch.tensor(t_lr),
        "lr/student": torch.tensor(s_lr),
        "grad_norm/teacher": t_norm,
        "grad_norm/student": s_norm,
        "student/skipped": torch.tensor(float(skipped)),
    }
