"""Baselines that run through the same trainer as MPL, so a user can check whether MPL helps.

Each step reads one `Batch`, updates `nets.student` (the only trained network) in place and
returns metrics as 0-dim tensors. They share MPL's optimiser, weight decay, clipping, EMA and
finiteness guard, and use the *student's* lr and warm-up without the wait (the wait exists to
let MPL's teacher learn first). References are to `reference/mpl-algorithm.md`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mpltools.losses import smoothed_cross_entropy
from mpltools.methods.common import (
    Batch,
    MPLHyper,
    Networks,
    check_finite,
    draw_pseudo_labels,
    finish_gradients,
    trainable,
)
from mpltools.methods.optim import learning_rate, set_lr
from mpltools.methods.precision import apply_update, scaled
from mpltools.methods.teacher import auxiliary_losses, teacher_forward
from mpltools.reducer import LOCAL, Reducer


def _begin(nets: Networks, step: int, hp: MPLHyper) -> float:
    lr = learning_rate(step, hp.student_lr, hp.student_warmup, hp.total_steps, 0, hp.lr_schedule)
    set_lr(nets.student_opt, lr)
    nets.student_opt.zero_grad(set_to_none=True)
    nets.student.train()
    return lr


def _update(
    nets: Networks, loss: Tensor, extra: dict[str, Tensor], step: int, hp: MPLHyper, reducer: Reducer
) -> tuple[Tensor, Tensor]:
    """Backward, reduce, (fp16: unscale,) decay, clip, check, step, EMA.

    Under fp16 a non-finite gradient is an overflow: the update (and the EMA's) is skipped and the
    loss scale halved, instead of a `NonFiniteError`.

    Returns:
        (global means of [loss, *extra values], gradient norm).
    """
    params, scaler = trainable(nets.student), nets.student_scaler
    scaled(loss, scaler).backward()
    norm = finish_gradients(nets.student_opt, params, reducer, hp.max_grad_norm, scaler)
    values = reducer.mean(torch.stack([loss.detach(), *(v.detach() for v in extra.values())]))
    check_finite(step, {"student loss": values[0]} if scaler else {"student loss": values[0], "student gradient norm": norm})
    if not apply_update(nets.student_opt, scaler, norm) and nets.ema is not None:
        nets.ema.update(nets.student, step)
    return values, norm


def supervised_step(
    nets: Networks,
    batch: Batch,
    step: int,
    hp: MPLHyper,
    reducer: Reducer = LOCAL,
    generator: torch.Generator | None = None,
    diagnose: bool = False,
) -> dict[str, Tensor]:
    """Supervised learning on the labelled batch only: label-smoothed CE."""
    del generator, diagnose
    lr = _begin(nets, step, hp)
    loss = smoothed_cross_entropy(nets.student(batch.labeled_x), batch.labeled_y, hp.label_smoothing)
    values, norm = _update(nets, loss, {}, step, hp, reducer)
    return {"student/loss": values[0], "lr/student": torch.tensor(lr), "grad_norm/student": norm}


def uda_step(
    nets: Networks,
    batch: Batch,
    step: int,
    hp: MPLHyper,
    reducer: Reducer = LOCAL,
    generator: torch.Generator | None = None,
    diagnose: bool = False,
) -> dict[str, Tensor]:
    """UDA: the network trained exactly like MPL's teacher without the feedback term.

    ``teacher_supervised_weight * CE_sup + w_uda(step) * UDA`` from one forward over
    ``[x_l; x_u_weak; x_u_strong]`` (reference §1.3), honouring `teacher_weak_no_grad`.
    """
    del generator, diagnose
    lr = _begin(nets, step, hp)
    t_l, t_weak, t_strong = teacher_forward(nets.student, batch, hp.teacher_weak_no_grad)
    sup, uda, mask, w_uda = auxiliary_losses(t_l, t_weak, t_strong, batch.labeled_y, step, hp)
    loss = hp.teacher_supervised_weight * sup + w_uda * uda
    values, norm = _update(nets, loss, {"sup": sup, "uda": uda, "mask": mask}, step, hp, reducer)
    return {
        "student/loss": values[0],
        "student/sup": values[1],
        "student/uda": values[2],
        "student/uda_mask": values[3],
        "student/uda_weight": torch.tensor(w_uda),
        "lr/student": torch.tensor(lr),
        "grad_norm/student": norm,
    }


def pseudo_label_step(
    nets: Networks,
    batch: Batch,
    step: int,
    hp: MPLHyper,
    reducer: Reducer = LOCAL,
    generator: torch.Generator | None = None,
    diagnose: bool = False,
) -> dict[str, Tensor]:
    """Pseudo Labels with a FIXED teacher (paper eq. 1): the student never sees labels.

    The teacher predicts in eval mode without gradient on `pseudo_label_view` and is never
    updated (its running statistics included); the student learns its sampled, argmax or soft
    labels on the strong view with label smoothing.
    """
    del diagnose
    lr = _begin(nets, step, hp)
    teacher = nets.teacher
    teacher.eval()
    view = batch.unlabeled_strong if hp.pseudo_label_view == "strong" else batch.unlabeled_weak
    with torch.no_grad():
        logits = teacher(view)
    target = draw_pseudo_labels(logits, hp.pseudo_labels, generator)
    loss = smoothed_cross_entropy(nets.student(batch.unlabeled_strong), target, hp.label_smoothing)
    confidence = torch.softmax(logits, dim=-1).max(dim=-1).values.mean()
    values, norm = _update(nets, loss, {"confidence": confidence}, step, hp, reducer)
    return {
        "student/loss": values[0],
        "teacher/confidence": values[1],
        "lr/student": torch.tensor(lr),
        "grad_norm/student": norm,
    }
